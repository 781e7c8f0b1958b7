"""The mount's data cache: read-ahead and write-behind for one inode.

The kernel hands a FUSE file system reads and writes of at most 1 MiB (its max_pages), one
at a time per write(2). Sent one by one, each would be one RPC to one OST and wait for it: a
stream would run at the speed of one round trip per MiB. Instead each inode gathers:

- writes into a buffer that goes out as one striped pwrite (one RPC per OST) when it holds a
  chunk (a whole number of stripe rows), while the program goes on; write() only waits when
  `limit` bytes are already in flight. An error of a write in flight is reported by the next
  write, flush (close) or fsync of the file, as NFS does.
- sequential reads into chunk-sized fetches, `window` bytes ahead of the reader.

Neither ever shows stale data from this client: every write drops the inode's read-ahead,
reads and truncates first wait for the writes before them, and writes whose ranges overlap
go out one after the other so they land in the order they were made.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from shoal.client.client import Client
from shoal.client.data_locks import note_served
from shoal.client.fileio import File
from shoal.errors import IOFailure, ShoalError
from shoal.net.framing import BulkPool

log = logging.getLogger(__name__)

Served = dict[int, int | None]  # by OST index: the lock of ours a read was served under

# read-ahead chunks, reused once nothing refers to them any more (the reply that carried the
# last view of one has gone to the kernel): a fresh 16 MiB buffer is zeroed and faulted in
# page by page, which cost the mount as much system time as receiving the bytes
_chunks = BulkPool(max_bytes=256 << 20)


def _consume(task: asyncio.Task[bytearray]) -> None:
    """Retrieve a dropped fetch's exception so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class ReadAhead:
    client: Client
    chunk: int
    window: int  # bytes fetched ahead of a sequential reader
    chunks: dict[int, asyncio.Task[bytearray]] = field(default_factory=dict)
    # by chunk: the lock of ours each OST served its read under (client/fileio.py pread)
    served: dict[int, Served] = field(default_factory=dict)
    next_off: int = -1  # where a sequential reader reads next

    def drop(self) -> None:
        """Forget everything fetched: the file changed."""
        for task in self.chunks.values():
            task.add_done_callback(_consume)
        self.chunks.clear()
        self.served.clear()
        self.next_off = -1

    def adopt(self, index: int, task: asyncio.Task[bytearray], served: Served) -> None:
        """A chunk fetched by someone else (mount/early_read.py)."""
        self.chunks[index] = task
        self.served[index] = served

    def _fetch(self, f: File, index: int) -> asyncio.Task[bytearray]:
        task = self.chunks.get(index)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            served: Served = {}
            task = asyncio.create_task(self.client.pread(  # type: ignore[arg-type]
                f, self.chunk, index * self.chunk, into=_chunks.get(self.chunk),
                served=served))
            self.chunks[index] = task
            self.served[index] = served
        return task

    def is_sequential(self, off: int) -> bool:
        """Whether a read at off belongs to the stream being read ahead. The kernel sends a
        stream's requests concurrently and they are served as concurrent tasks, so they
        arrive a little out of order: a read just behind or ahead of the last one still
        belongs to it (taking it for random access cost an extra RPC each, and re-fetched
        chunks dropped a moment too early)."""
        if off == 0 or off // self.chunk in self.chunks:
            return True
        nxt = self.next_off
        return nxt >= 0 and nxt - self.chunk <= off <= nxt + self.window

    async def read(self, f: File, off: int, size: int, *,
                   served: Served | None = None) -> bytes | memoryview:
        """size bytes at off (fewer at the end of the file); f.size is the size to trust.
        `served` gets the locks of ours the bytes were read under (by OST index)."""
        end = min(off + size, f.size)
        if off >= end:
            return b""
        first = off // self.chunk
        if not self.is_sequential(off):
            # random access: exactly what was asked, and no read-ahead to waste
            self.next_off = end
            return await self.client.pread(f, end - off, off, served=served)
        self.next_off = max(self.next_off, end)
        last = (end - 1) // self.chunk
        eof_chunk = (f.size - 1) // self.chunk
        ahead = min(eof_chunk, (self.next_off - 1) // self.chunk + self.window // self.chunk)
        # one chunk behind the reader stays, for the requests that overtook each other
        for index in [i for i in self.chunks if i < first - 1 or i > ahead]:
            self.chunks.pop(index).add_done_callback(_consume)
        for index in range(first, ahead + 1):
            self._fetch(f, index)
        tasks = [self.chunks[i] for i in range(first, last + 1)]  # before any await drops one
        under = [self.served.get(i, {}) for i in range(first, last + 1)]
        parts = [await t for t in tasks]
        if served is not None:
            for s in under:
                for o, handle in s.items():
                    note_served(served, o, handle)
        base = first * self.chunk
        if len(parts) == 1:
            # a view, not a copy: pyfuse3 takes any buffer
            return memoryview(parts[0])[off - base: end - base]
        return b"".join(parts)[off - base: end - base]


@dataclass(eq=False)
class WriteBehind:
    client: Client
    chunk: int
    limit: int  # bytes in flight before write() waits
    parts: list[bytes] = field(default_factory=list)  # contiguous writes, not yet sent
    buf_len: int = 0
    buf_off: int = 0
    buf_file: File | None = None
    inflight: dict[asyncio.Task[None], tuple[int, int]] = field(default_factory=dict)
    inflight_bytes: int = 0
    error: ShoalError | None = None
    landed_end: int = 0  # the furthest end of a write that landed
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    room: asyncio.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.room = asyncio.Condition(self.lock)

    @property
    def pending(self) -> bool:
        return bool(self.parts) or bool(self.inflight)

    def take_error(self) -> ShoalError | None:
        err, self.error = self.error, None
        return err

    async def write(self, f: File, off: int, data: bytes) -> None:
        async with self.lock:
            err = self.take_error()
            if err is not None:
                raise err
            if self.parts and (off != self.buf_off + self.buf_len
                               or self.buf_len + len(data) > self.chunk):
                await self._launch()
            if not self.parts:
                self.buf_off, self.buf_file = off, f
            self.parts.append(data)
            self.buf_len += len(data)
            if self.buf_len >= self.chunk:
                await self._launch()

    async def _launch(self) -> None:
        """Send the buffer (lock held). Waits for room, and for earlier overlapping writes."""
        parts, off, f = self.parts, self.buf_off, self.buf_file
        self.parts, self.buf_len, self.buf_file = [], 0, None
        if not parts or f is None:
            return
        # the writes go out as they came: pwritev copies each once, into its RPC's bulk
        size = sum(len(p) for p in parts)
        end = off + size
        while True:
            overlap = [t for t, (s, e) in self.inflight.items() if s < end and off < e]
            if not overlap and (self.inflight_bytes == 0
                                or self.inflight_bytes + size <= self.limit):
                break
            await self.room.wait()
        task = asyncio.create_task(self._send(f, parts, off, size))
        self.inflight[task] = (off, end)
        self.inflight_bytes += size

    async def _send(self, f: File, parts: list[bytes], off: int, size: int) -> None:
        try:
            await self.client.pwritev(f, parts, off)
            self.landed_end = max(self.landed_end, off + size)
        except ShoalError as exc:
            log.warning("write-behind of %d bytes at %d failed: %s", size, off, exc)
            self.error = self.error or exc
        except Exception as exc:  # a bug must still reach the writer, never vanish
            log.exception("write-behind of %d bytes at %d failed", size, off)
            self.error = self.error or IOFailure(f"write failed: {exc}")
        finally:
            async with self.lock:
                task = asyncio.current_task()
                if task is not None:
                    self.inflight.pop(task, None)  # type: ignore[arg-type]
                self.inflight_bytes -= size
                self.room.notify_all()

    async def settle(self) -> None:
        """Send what is buffered and wait until nothing is in flight (errors are kept)."""
        if not self.parts and not self.inflight and not self.lock.locked():
            return  # nothing to wait for: every close of a file only read
        async with self.lock:
            await self._launch()
            while self.inflight:
                await self.room.wait()

    async def drain(self) -> None:
        """settle(), then raise the first error of a write since the last report."""
        await self.settle()
        err = self.take_error()
        if err is not None:
            raise err
