"""A small file's first read, sent with its open (diff, imports, git: open, read, close).

A read-only open of a file whose attributes this mount keeps under the MDT's lock (its
layout and size known) goes to the MDT, and the kernel's first read then goes to an OST:
two round trips, one after the other. Here the read of the whole file (at most one
read-ahead chunk, at most SMALL bytes) leaves with the open, asking for its PR lock with
it as any read does, and is handed to the file's read-ahead once the open is answered, as
if the read-ahead had fetched it: the kernel's read then finds it there. Where the open is
the file's only handle, the bytes also go into the kernel's pages before the open is
answered, and the kernel's reads ask the mount nothing.

It is handed over only where nothing it was read under changed meanwhile: each OST served
it under a PR lock of this mount's (granted with it, or held before) that is still held
when it is handed over, that very lock and not one that came after it (one that went,
called back or not, drops what it covered, but the read-ahead this covers does not exist
until the open is answered); the open's attributes are those it was sent with (inode
version, ctime, size); and nothing was written through this mount.
Otherwise it is dropped and the read goes out after the open as before. None is sent
where the kernel still has the file's pages, and the open's answer waits for it at most
WAIT seconds, and only where it would be used, so an OST that does not answer costs an
open no more than that.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass

from shoal.client.client import Client
from shoal.client.fileio import File
from shoal.client.layout import Layout, osts_touched
from shoal.client.namespace import Attr
from shoal.mount.cache import _chunks, _consume
from shoal.mount.handles import Node, Stamp, stamp
from shoal.mount.kept_data import still_served
from shoal.mount.kernel_cache import store_pages
from shoal.mount.options import MountOptions
from shoal.protocol.import_state import ImportState

SMALL = 1 << 20  # larger files may be opened for a look at one place: no read on spec
WAIT = 0.2


@dataclass(eq=False)
class EarlyRead:
    task: asyncio.Task[bytearray]
    file: File  # as it was read: its layout, and the size it was read to
    stamp: Stamp
    chunk: int
    served: dict[int, int | None]  # by OST index: the lock of ours each served it under


class EarlyReads:
    def __init__(self, client: Client, opts: MountOptions) -> None:
        self.client = client
        self.opts = opts
        self.stats: Counter[str] = Counter()  # sent, used, dropped, stored

    def start(self, ino: int, flags: int, pages: Stamp | None) -> EarlyRead | None:
        """The read of a small file whose attributes are kept, sent now (None if not);
        `pages`: the stamp the kernel's pages of the file belong to, if it has some."""
        md, opens = self.client.mdt.md_locks, self.client.mdt.opens
        if (md is None or not md.ready or flags & os.O_ACCMODE != os.O_RDONLY
                or flags & (os.O_TRUNC | os.O_DIRECT)):
            return None
        if opens is not None and ino in opens.kept:
            return None  # the open needs no round trip: the read goes right after it
        kept = md.attrs(ino)
        if kept is None:
            return None
        a = Attr.from_dict(kept)
        if not a.is_file or not a.layout or a.writers or not 0 < a.size <= SMALL:
            return None
        if pages is not None and pages == stamp(a):
            return None  # the kernel keeps the file's pages: it will not read
        layout = Layout.from_dict(a.layout)
        chunk = self.opts.read_chunk_bytes(layout.stripe_size, layout.stripe_count)
        if a.size > chunk:
            return None
        if any(self.client.osts[o].sm.state is not ImportState.FULL
               for o in osts_touched(layout, 0, a.size)):
            return None  # an OST away or recovering: the open must not wait on its read
        f = File(self.client, f"<inode {ino}>", a, 0, os.O_RDONLY, a.size, layout)
        served: dict[int, int | None] = {}
        early = EarlyRead(asyncio.create_task(self._read(f, chunk, served)), f, stamp(a),
                          chunk, served)
        early.task.add_done_callback(_consume)
        self.stats["sent"] += 1
        return early

    async def _read(self, f: File, chunk: int, served: dict[int, int | None]) -> bytearray:
        # the read the read-ahead would send for chunk 0 (mount/cache.py ReadAhead._fetch)
        return await self.client.pread(  # type: ignore[return-value]
            f, chunk, 0, into=_chunks.get(chunk), served=served)

    def _usable(self, early: EarlyRead, node: Node) -> bool:
        """What does not depend on the read itself: the file is as it was read."""
        reader = node.reader
        return (node.stamp == early.stamp and node.size == early.file.size
                and not reader.chunks and reader.chunk == early.chunk and node.writes == 0
                and not node.dirty and not node.writer.pending)

    async def hand_over(self, early: EarlyRead, node: Node, *, keep: bool) -> bool:
        """Give the read to the open file's read-ahead, or drop it (module docstring);
        `keep`: the kernel keeps its pages of the file (it will not read). Then, if the
        open is the file's only handle, the bytes go into the kernel's pages too and True
        is returned: the open is answered with keep_cache, and the kernel reads none of
        them from the mount."""
        used = False
        try:
            if keep or not self._usable(early, node):
                return False
            if not early.task.done():
                await asyncio.wait([early.task], timeout=WAIT)
            if (early.task.done() and not early.task.cancelled()
                    and early.task.exception() is None and self._usable(early, node)
                    and still_served(self.client, early.file.layout, early.served, 0,
                                     early.file.size)):
                node.reader.adopt(0, early.task, early.served)
                self.stats["used"] += 1
                used = True
        finally:
            if not used:  # cancelled while it waited, too
                self.drop(early)
        if not used or node.opens != 1:
            return False
        # the kernel's pages of the file before this open (another stamp's, or none) are
        # all overwritten: the store covers the file from 0 to its size
        stored = store_pages(node.ino, memoryview(early.task.result())[:early.file.size])
        if stored:
            self.stats["stored"] += 1
        return stored

    def drop(self, early: EarlyRead) -> None:
        self.stats["dropped"] += 1
