"""The kernel's caches of names and attributes, kept under the MDT's locks (issue 20).

With `-o locks` (the default) the mount keeps attributes and names under the locks the
client holds (client/md_locks.py) and lets the kernel keep them too, for as long as the lock
is held: an entry or attributes handed out under a lock get a long timeout, anything else
the mount's `entry_timeout` / `attr_timeout` (0 by default: asked again every time).

When a lock goes (called back, given up by the LRU, or dropped because the import
reconnected), the kernel is told to forget what it covered, and a cancel leaves only once it
has (or after SETTLE_WAIT): another client's change is acknowledged only after this mount's
kernel has stopped serving what the change made stale.

- Attributes: invalidated at once (this takes no lock in the kernel).
- Listings: the kernel opens directories itself (the mount's opendir answers ENOSYS, with
  pyfuse3 patched to hand readdir the directory's inode: packaging/) and then keeps what
  readdir answered in the directory's pages (FOPEN_CACHE_DIR), until it sees the directory
  change (its own changes, or a new mtime in attributes it asks for again) or the pages are
  dropped: done here, with the directory's attributes, when its UPDATE lock goes.
- Names: *expired*, not invalidated (FUSE_NOTIFY_INVAL_ENTRY with FUSE_EXPIRE_ONLY, Linux
  6.2): the next path walk through the name asks this mount again, and the kernel drops the
  entry only if the answer differs. A plain invalidation unhashes the dentry at once, and
  a directory that is some process's cwd then leaves the tree (getcwd fails with ENOENT,
  relative paths break) although nothing about it changed. libfuse 3.14 cannot send the
  flag (fuse_lowlevel_notify_expire_entry came with 3.16), so the notification is written
  to the session's /dev/fuse descriptor directly; a kernel older than 6.2 ignores the flag
  and invalidates. The write takes the directory's inode lock, which a request of this very
  mount may hold while it waits for the change that called the lock back: so it runs on a
  worker thread, and the cancel waits for it at most SETTLE_WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyfuse3

from shoal.client.md_locks import MetadataLocks
from shoal.mount.options import MountOptions

log = logging.getLogger(__name__)

LOCKED_TIMEOUT = 3600.0  # seconds the kernel keeps what a lock covers (the lock decides)
SETTLE_WAIT = 0.5  # seconds a cancel waits for the kernel to forget what the lock covered
OWN_WAIT = 0.05  # the same, for locks called back for this mount's own change
EXPIRE_THREADS = 4
LISTING_LATE = 0.05  # seconds after a readdir overtaken by a drop that its pages go again

# include/uapi/linux/fuse.h
FUSE_NOTIFY_INVAL_ENTRY = 3
FUSE_EXPIRE_ONLY = 1 << 0
_OUT_HEADER = struct.Struct("=IiQ")  # fuse_out_header: len, error (the notify code), unique
_INVAL_ENTRY = struct.Struct("=QII")  # fuse_notify_inval_entry_out: parent, namelen, flags


def expire_entry_message(parent: int, name: bytes) -> bytes:
    """The notification that expires the kernel's entry `name` in directory `parent`."""
    body = _INVAL_ENTRY.pack(parent, len(name), FUSE_EXPIRE_ONLY) + name + b"\0"
    return _OUT_HEADER.pack(_OUT_HEADER.size + len(body), FUSE_NOTIFY_INVAL_ENTRY, 0) + body


def forget_attr(ino: int) -> None:
    """The kernel asks for `ino`'s attributes again (its size went back)."""
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError:
        pass  # the kernel does not know it (any more)


def store_pages(ino: int, data: memoryview) -> bool:
    """Put the whole of a file's bytes into the kernel's pages (FUSE_NOTIFY_STORE), so that
    its reads need no request; False if the kernel took none or some of them. Called in
    the event loop: it waits for no page lock only where the kernel cannot be reading
    the file through this mount (the caller's open is the file's only handle, and not
    answered yet), as a read would hold its pages locked until the loop answered it."""
    try:
        pyfuse3.notify_store(ino, 0, data)
    except OSError:
        return False  # the kernel does not know the inode (any more), or no such notify
    return True


def _drop_pages(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=False)
    except OSError:
        pass  # the kernel does not know it (any more)


def fuse_session_fd(proc_fd: str = "/proc/self/fd") -> int | None:
    """The descriptor of this process's FUSE session (pyfuse3 opens one and does not say
    which; psutil lists regular files only)."""
    for name in os.listdir(proc_fd):
        try:
            if os.readlink(os.path.join(proc_fd, name)) == "/dev/fuse":
                return int(name)
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return None


class KernelCache:
    def __init__(self, md: MetadataLocks | None, opts: MountOptions) -> None:
        self.md = md
        self.opts = opts
        self._fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}  # lock handle: its expiry
        # listings: page drops run apart from expiries (which may wait for an inode lock)
        self._pages: ThreadPoolExecutor | None = None
        self._reading: dict[int, int] = {}  # directory: readdirs being answered
        self._overtaken: set[int] = set()  # directories dropped while one was answered
        self._answered: set[int] = set()  # answered within LISTING_LATE
        self._closed = False
        # forgettings not done when their lock's cancel left (SETTLE_WAIT passed): the
        # kernel may have served what the lock covered after the change it was for
        self.late = 0
        if md is not None:
            md.on_drop.append(self._dropped)
            # held over a failover: the kernel asks again, and is answered once the locks
            # are replayed (from the client's cache, where they were granted again)
            md.on_suspend.append(self._dropped)
            md.before_cancel.append(self.settle)
            md.on_unspared.append(self._unspared)

    def timeouts(self, ino: int, parent: int | None = None,
                 name: str = "") -> tuple[float, float]:
        """(entry_timeout, attr_timeout) for an entry of `ino` handed to the kernel."""
        md = self.md
        if md is None:
            return self.opts.entry_timeout, self.opts.attr_timeout
        kept = md.attrs(ino)
        # a file written elsewhere: its size is asked for every time (NamespaceOps.sized)
        attr = (LOCKED_TIMEOUT if kept is not None and not kept.get("writers")
                else self.opts.attr_timeout)
        entry = (LOCKED_TIMEOUT if parent is not None and md.child(parent, name) == ino
                 else self.opts.entry_timeout)
        return entry, attr

    def absent_timeout(self, parent: int, name: str) -> float | None:
        """How long the kernel may keep `name`'s absence from `parent` (None: not at all)."""
        if (self.md is not None and self.md.absent(parent, name)
                and self.md.keep_absent(parent, name)):  # forgotten when the lock goes
            return LOCKED_TIMEOUT
        return None

    async def settle(self, handles: list[int], own: Sequence[int] = ()) -> None:
        """Wait (at most SETTLE_WAIT) until the kernel has forgotten what the dropped locks
        `handles` covered. Only theirs: another expiry may wait for a directory that a
        request of this mount holds while the server waits for these very cancels. Where
        all of them were called back for this mount's own change (`own`), OWN_WAIT at
        most: that change may hold the directory itself, and its reply waits for them;
        an expiry nothing holds up takes a millisecond. (Not at all, it once was: another
        client's change queued behind the own one went on before the kernel forgot.)"""
        waits = {f for h in handles if (f := self._pending.get(h)) is not None}
        if waits:
            mine = len(own) == len(handles)
            _done, late = await asyncio.wait(waits, timeout=OWN_WAIT if mine else SETTLE_WAIT)
            self.late += len(late)

    async def drop_pages(self, ino: int) -> None:
        """Drop the kernel's pages (and attributes) of inode `ino`, waiting at most
        SETTLE_WAIT: a read of this very mount may hold one of the pages locked while it
        waits for the lock whose callback asks for this. The pages go once it is done."""
        fut = asyncio.get_running_loop().run_in_executor(self._threads(), _drop_pages, ino)
        _done, late = await asyncio.wait({fut}, timeout=SETTLE_WAIT)
        self.late += len(late)

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(EXPIRE_THREADS, thread_name_prefix="expire")
        return self._pool

    def _drop_listing(self, ino: int) -> asyncio.Future[None] | None:
        if self._closed:  # unmounting: a late drop has nothing left to drop
            return None
        if self._pages is None:
            self._pages = ThreadPoolExecutor(1, thread_name_prefix="listings")
        return asyncio.get_running_loop().run_in_executor(self._pages, _drop_pages, ino)

    @contextlib.contextmanager
    def listing(self, ino: int) -> Iterator[None]:
        """Around a readdir of directory `ino`. Its reply reaches the kernel's pages after
        the handler returns: if the directory's lock went meanwhile, or goes just after,
        the pages it filled are dropped again a moment later (LISTING_LATE)."""
        self._reading[ino] = self._reading.get(ino, 0) + 1
        try:
            yield
        finally:
            left = self._reading[ino] - 1
            if left:
                self._reading[ino] = left
            else:
                del self._reading[ino]
            loop = asyncio.get_running_loop()
            if ino in self._overtaken and not left:
                self._overtaken.discard(ino)
                loop.call_later(LISTING_LATE, self._drop_listing, ino)
            self._answered.add(ino)  # its reply is on its way to the kernel's pages
            loop.call_later(LISTING_LATE, self._answered.discard, ino)

    def close(self) -> None:
        self._closed = True
        for pool in (self._pool, self._pages):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _dropped(self, ino: int, kept: dict[str, Any], handle: int) -> None:
        waits: list[asyncio.Future[Any]] = []
        if "attr" in kept:  # an UPDATE lock (a LOOKUP lock keeps only names: "bound")
            forget_attr(ino)
            # a directory's listing, which the kernel keeps in the directory's pages
            if kept.get("listing") is not None or (kept.get("attr") or {}).get("type") == "d":
                if (drop := self._drop_listing(ino)) is not None:
                    waits.append(drop)
                if ino in self._reading:
                    self._overtaken.add(ino)
                elif ino in self._answered:
                    asyncio.get_running_loop().call_later(LISTING_LATE, self._drop_listing,
                                                          ino)
        # the names in directory `ino` (its own lock) but those a child's LOOKUP lock still
        # covers (its names going call that one back), and the names of `ino` (the child's)
        md = self.md
        spared = md.spared if md is not None else frozenset()
        names = kept.get("names", {})
        entries = [(ino, n.encode()) for n, child in names.items()
                   if (ino, n) not in spared and (md is None or md.named(ino, n) != child)]
        entries += [(ino, n.encode()) for n in kept.get("absent", ()) if (ino, n) not in spared]
        entries += [(parent, n.encode()) for parent, n in kept.get("bound", ())
                    if (parent, n) not in spared]
        if entries and (expiry := self._expire_entries(entries)) is not None:
            waits.append(expiry)
        if waits:
            fut = asyncio.gather(*waits)
            self._pending[handle] = fut
            fut.add_done_callback(lambda _f: self._pending.pop(handle, None))

    def _unspared(self, names: list[tuple[int, str]]) -> None:
        """An own change that failed: the names it would have set, forgotten after all."""
        self._expire_entries([(parent, n.encode()) for parent, n in names])

    def _expire_entries(self, entries: list[tuple[int, bytes]]) -> asyncio.Future[None] | None:
        """Expire the kernel's entries (directory, name) on a worker thread (the future), or
        invalidate them at once when not mounted through pyfuse3's session."""
        if self._fd is None:
            self._fd = fuse_session_fd()
        if self._fd is None:
            for parent, name in entries:
                pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
            return None
        if self._closed:
            return None
        return asyncio.get_running_loop().run_in_executor(self._threads(), self._expire,
                                                          self._fd, entries)

    @staticmethod
    def _expire(fd: int, entries: list[tuple[int, bytes]]) -> None:
        for parent, name in entries:
            try:
                os.write(fd, expire_entry_message(parent, name))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # not in the kernel's cache
                    log.debug("entry %d/%r not expired: %s", parent, name, exc)
