"""The kernel's caches of names and attributes, kept under the MDT's locks (issue 20).

With `-o locks` (the default) the mount keeps attributes and names under the locks the
client holds (client/md_locks.py) and lets the kernel keep them too, for as long as the lock
is held: an entry or attributes handed out under a lock get a long timeout, anything else
the mount's `entry_timeout` / `attr_timeout` (0 by default: asked again every time). When a
lock goes (called back, given up by the LRU, or dropped because the import reconnected), the
kernel is told to forget what it covered before the lock's cancel leaves: the inode's
attributes at once, the names through pyfuse3's notifier thread (an entry's invalidation
waits for the directory's lock, which a request of this very mount may hold while it waits
for the change that called the lock back).
"""

from __future__ import annotations

from typing import Any

import pyfuse3

from shoal.client.md_locks import MetadataLocks
from shoal.mount.options import MountOptions

LOCKED_TIMEOUT = 3600.0  # seconds the kernel keeps what a lock covers (the lock decides)


class KernelCache:
    def __init__(self, md: MetadataLocks | None, opts: MountOptions) -> None:
        self.md = md
        self.opts = opts
        if md is not None:
            md.on_drop.append(self._dropped)

    def timeouts(self, ino: int, parent: int | None = None,
                 name: str = "") -> tuple[float, float]:
        """(entry_timeout, attr_timeout) for an entry of `ino` handed to the kernel."""
        md = self.md
        if md is None:
            return self.opts.entry_timeout, self.opts.attr_timeout
        attr = LOCKED_TIMEOUT if md.attrs(ino) is not None else self.opts.attr_timeout
        entry = (LOCKED_TIMEOUT if parent is not None and md.child(parent, name) == ino
                 else self.opts.entry_timeout)
        return entry, attr

    def _dropped(self, ino: int, kept: dict[str, Any]) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError:
            pass  # the kernel does not know it (any more)
        for name in kept.get("names", {}):
            pyfuse3.invalidate_entry_async(ino, name.encode(), ignore_enoent=True)
