"""Large OST reads straight from the disk, on worker threads (Lustre's OSS bulk I/O).

A buffered read copies every byte out of the page cache on the node's event loop; on a cold
cache it also waits there for the disk, with nothing sent meanwhile. A large aligned read of
an object with nothing pending that the page cache cannot answer at once (a read with
RWF_NOWAIT comes back short) is instead handed to a worker thread that reads it with
O_DIRECT into a page-aligned buffer: the disk writes the bytes where the reply sends them
from, no CPU copies them, and several reads keep the disk busy while the loop goes on.
The kernel writes back dirty cached pages of the range before a direct read, so data a
commit wrote through the page cache is read as written.

A read is decided (size, no pending changes) on the loop and carried out later: if a commit
started writing the object in between, the file may be changing under the thread, so the
read is done again the ordinary way on the loop, and the result is what it would have been
at that later moment (DeferredRead.resolve).
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.net.framing import BulkPool

ALIGN = 4096
DIRECT_MIN = 1 << 20  # smaller reads stay on the loop: a thread hop costs more than they do

_pool = BulkPool(factory=lambda n: mmap.mmap(-1, n))  # mmap memory is page-aligned
_cache_pool = BulkPool()


def direct_eligible(offset: int, n: int) -> bool:
    return n >= DIRECT_MIN and offset % ALIGN == 0


def read_cached(fd: int | None, offset: int, n: int) -> bytearray | None:
    """The n bytes at offset if the page cache holds all of them (a warm read stays on the
    loop: one copy, no thread hop, no disk); None if any would have to come from the disk."""
    if fd is None:
        return None
    buf = _cache_pool.get(n)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except (BlockingIOError, OSError):
        return None  # EAGAIN: not all cached; EOPNOTSUPP: no such read here
    return buf if got == n else None


def read_direct(path: Path, offset: int, n: int) -> memoryview:
    """n bytes at offset, read with O_DIRECT; bytes past the file's end are zeros (holes)."""
    size = -(-n // ALIGN) * ALIGN
    buf = _pool.get(size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        got = 0
        view = memoryview(buf)
        while got < size:
            k = os.preadv(fd, [view[got:]], offset + got)
            if k <= 0:
                break
            got += k
            if got % ALIGN:
                break  # the end of the file: a direct read cannot go on from mid-block
    finally:
        os.close(fd)
    if got < n:
        view[got:n] = bytes(n - got)
    return view[:n]


class DeferredRead:
    """The bulk of a read reply, still to be read (see the module docstring)."""

    def __init__(self, path: Path, offset: int, n: int, still_valid: Callable[[], bool],
                 redo: Callable[[], Any]) -> None:
        self.path, self.offset, self.n = path, offset, n
        self._still_valid = still_valid
        self._redo = redo

    async def resolve(self) -> Any:
        try:
            data = await asyncio.to_thread(read_direct, self.path, self.offset, self.n)
        except OSError:
            return self._redo()  # gone or unreadable now: the ordinary path says what it is
        return data if self._still_valid() else self._redo()
