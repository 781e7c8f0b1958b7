"""Large OST reads of data the page cache does not hold yet, on worker threads (Lustre's OSS
bulk I/O).

A buffered read on the node's event loop that has to wait for the disk stops everything
else the node does meanwhile. So a large read of an object with nothing pending is first
tried against the page cache alone (RWF_NOWAIT: a warm read stays on the loop, one copy,
no thread hop); if any of it would have to come from the disk, it is handed to a worker
thread (DeferredRead), and the loop goes on. The OST also reads ahead of sequential readers
(ost_files.Readahead), so in a stream most reads find their pages already there.

Reads go through the page cache, not O_DIRECT: on the machines measured, the disk gave a
sequential buffered reader (the kernel's readahead, 8 MiB requests) about twice what it gave
4 MiB direct reads at any queue depth (2.1-2.5 GB/s against 1.0-1.2), and a striped stream
read cold at about 840 MB/s against 620 with direct reads.

A read is decided (size, no pending changes) on the loop and carried out later: if a commit
started writing the object in between, the file may be changing under the thread, so the
read is done again the ordinary way on the loop, and the result is what it would have been
at that later moment (DeferredRead.resolve).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.net.frame import HASH_PIECE, BulkHasher, HashedBulk
from shoal.net.framing import BulkPool

DEFER_MIN = 1 << 20  # smaller reads stay on the loop: a thread hop costs more than they do

_pool = BulkPool(factory=HashedBulk)


def deferrable(n: int) -> bool:
    return n >= DEFER_MIN


def _fill(fd: int, buf: HashedBulk, offset: int, n: int, flags: int) -> int:
    """Read up to n bytes at offset into buf piece by piece, hashing each piece right after
    it lands (the frame's BLAKE3, see net/frame.py); the bytes read. A piece that comes back
    short ends it: the end of the file, or (RWF_NOWAIT) pages not in the cache."""
    buf.digest = buf.pieces = None
    view, h, got = memoryview(buf), BulkHasher(), 0
    while got < n:
        k = os.preadv(fd, [view[got:min(n, got + HASH_PIECE)]], offset + got, flags)
        if k <= 0:
            break
        h.update(view[got:got + k])
        got += k
        if k < min(HASH_PIECE, n - got + k):
            break
    if got < n and not flags:
        view[got:n] = bytes(n - got)  # holes past the end
        h.update(view[got:n])
    buf.digest = h.digest()
    buf.pieces = h.piece_digests()
    return got


def read_cached(fd: int | None, offset: int, n: int) -> HashedBulk | None:
    """The n bytes at offset if the page cache holds all of them (a warm read stays on the
    loop: one copy, no thread hop, no disk); None if any would have to come from the disk."""
    if fd is None:
        return None
    buf = _pool.get(n)
    try:
        got = _fill(fd, buf, offset, n, os.RWF_NOWAIT)
    except OSError:  # EAGAIN (BlockingIOError): not all cached; EOPNOTSUPP: no such read
        return None
    return buf if got == n else None


def read_whole(path: Path, offset: int, n: int) -> HashedBulk:
    """n bytes at offset, read on the calling thread; bytes past the file's end are zeros
    (holes). The file is opened here, not taken from the OST's cache of descriptors, which
    the loop may close meanwhile."""
    buf = _pool.get(n)
    fd = os.open(path, os.O_RDONLY)
    try:
        _fill(fd, buf, offset, n, 0)
    finally:
        os.close(fd)
    return buf


class DeferredRead:
    """The bulk of a read reply, still to be read (see the module docstring)."""

    def __init__(self, path: Path, offset: int, n: int, still_valid: Callable[[], bool],
                 redo: Callable[[], Any],
                 on_read: Callable[[HashedBulk], None] = lambda buf: None) -> None:
        self.path, self.offset, self.n = path, offset, n
        self._still_valid = still_valid
        self._redo = redo
        self._on_read = on_read  # told what was read, when it is still what the file holds

    async def resolve(self) -> Any:
        try:
            data = await asyncio.to_thread(read_whole, self.path, self.offset, self.n)
        except OSError:
            return self._redo()  # gone or unreadable now: the ordinary path says what it is
        if not self._still_valid():
            return self._redo()
        self._on_read(data)
        return data
