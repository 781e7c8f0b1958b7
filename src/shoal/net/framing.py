"""Frames read straight off the socket: asyncio.BufferedProtocol instead of a StreamReader.

A StreamReader copies a 4 MiB bulk three times before anyone looks at it (into its growing
buffer, out of it with readexactly, and again when the buffer's head is deleted). Here the
transport receives into buffers this protocol hands it:

* small frames are parsed out of one reusable receive buffer (RECV_BUF, compacted as frames
  are consumed, grown for the rare frame that does not fit: a meta of up to MAX_META);
* a frame whose bulk is DIRECT_BULK or more gets a bytearray of exactly the bulk's size as
  soon as its header and meta are in: the part of the bulk that arrived with them is copied
  in, and every further recv() writes straight into the bytearray. That bytearray is the bulk
  handed up (a bytearray, not bytes: use it as any bytes-like object), and it is never
  written again while anything else refers to it (BulkPool reuses it only after that).

The checks come in the same order as read_frame's: the lengths against the limits as soon as
the header is in, before any body byte is accepted (FrameTooLarge); the HMAC once the frame
is complete (AuthFailure); decoding is the subclass's (BadMessage). After the first error the
protocol reads nothing more and closes the transport.

Hashing a bulk for its frame's HMAC (BLAKE3, see net/frame.py) is the dearest part of a bulk
frame. A direct bulk is hashed piece by piece as each recv() lands, while those bytes are
still in the CPU's cache (about 6 GB/s, against under 4 for the whole bulk afterwards, from
memory); when its last byte is in, only the HMAC over the header, the meta and the digest
is left, and the frame is handed up at once, in the order frames arrived.

A subclass may receive a large bulk into buffers of its caller's instead (bulk_sink, see
net/sink.py): the bulk's bytes then go where they belong, and are not copied again.

pause_writing/resume_writing (high water WRITE_HIGH) back FrameProtocol.drain(), so a sender
with more than WRITE_HIGH bytes queued in the transport waits before queueing more; the
sending half is net/writer.py.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from shoal.errors import AuthFailure, FrameTooLarge, ProtocolError
from shoal.net.frame import (
    _LENS,
    HEADER_SIZE,
    MAX_BULK,
    MAX_META,
    BulkHasher,
    HashedBulk,
    mac,
    sign,
)
from shoal.net.sink import BulkSink

log = logging.getLogger(__name__)

RECV_BUF = 256 << 10  # the reusable receive buffer (small frames, headers, metas)
DIRECT_BULK = 64 << 10  # a bulk this large is received into its own buffer, not copied
AFTER_BULK_READ = 4096  # first read after a direct bulk: a header and meta, not the next bulk
WRITE_HIGH = 8 << 20  # transport write buffer above which drain() waits
POOL_BYTES = 64 << 20  # bulk receive buffers kept for reuse, per process

_LENS_SIZE = _LENS.size
_unpack_lens = _LENS.unpack_from
_compare = hmac.compare_digest
_getrefcount = sys.getrefcount

def _scan(bufs: list[bytearray], limit: int) -> tuple[bytearray | None, int]:
    """The first buffer referred to by nothing but `bufs` (see BulkPool), and its refcount."""
    for b in bufs:
        refs = _getrefcount(b)
        if refs <= limit:
            return b, refs
    return None, 0


class BulkPool:
    """Receive buffers for large bulks, reused once nothing but the pool refers to them.

    `bytearray(n)` zeroes its n bytes, which on a stream of 4 MiB bulks is a tenth of the
    receiving loop's time spent writing memory that recv() overwrites anyway. A buffer handed
    out stays in the pool; the next `get` of the same size takes one whose only reference is
    the pool's own (CPython reference counts: whoever still holds the bulk, a memoryview of
    it, a Request waiting in a queue, keeps it out of reuse). Every byte of a reused buffer
    is received anew before it is handed up. At most `max_bytes` are pooled; beyond that,
    buffers are allocated as usual. `factory` makes a buffer of n bytes (target/ost_deferred.py
    pools HashedBulks, which carry their digest).
    """

    def __init__(self, max_bytes: int = POOL_BYTES,
                 factory: Callable[[int], Any] = bytearray) -> None:
        self.max_bytes = max_bytes
        self._factory = factory
        self._bufs: dict[int, list[Any]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        _, self._free_refs = _scan([bytearray(1)], 1 << 30)  # what "only the pool's" reads as

    def get(self, n: int) -> Any:
        with self._lock:
            bufs = self._bufs.get(n)
            if bufs:
                b, _ = _scan(bufs, self._free_refs)
                if b is not None:
                    if len(b) == n:
                        return b
                    bufs.remove(b)  # resized by its last user: not ours to size any more
                    self._bytes -= n
            b = self._factory(n)
            if self._bytes + n <= self.max_bytes:
                self._bufs.setdefault(n, []).append(b)
                self._bytes += n
            return b


_pool = BulkPool(factory=HashedBulk)  # received bulks keep their pieces' digests
_DROPPED = BulkSink([])  # the bulk of a frame diverted from a closed sink


def _bad_hmac() -> AuthFailure:
    return AuthFailure("frame HMAC does not verify with the cluster key")


class FrameProtocol(asyncio.BufferedProtocol):
    """Frame parsing and write flow control; subclasses say what a frame means."""

    def __init__(self, key: bytes, *, max_meta: int = MAX_META, max_bulk: int = MAX_BULK,
                 recv_buf: int = RECV_BUF, direct_bulk: int = DIRECT_BULK) -> None:
        self.transport: asyncio.Transport | None = None
        self._key = key
        self._max_meta = max_meta
        self._max_bulk = max_bulk
        self._recv_size = recv_buf
        self._direct = max(direct_bulk, 1)
        self._buf = bytearray(recv_buf)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte of the frame being parsed
        self._end = 0  # end of the bytes received into _buf
        self._need = HEADER_SIZE  # bytes from _start the frame at _start needs in _buf
        self._cap = 0  # >0: receive at most up to _start + _cap (a direct bulk's meta)
        self._after_bulk = False
        # the direct bulk being received (a pooled buffer or a sink), the views it is received
        # into (the current one, then the rest in reverse order), and its frame's header and meta
        self._bulk: bytearray | BulkSink | None = None
        self._seg: memoryview | None = None
        self._segs: list[memoryview] = []
        self._seg_got = 0
        self._bulk_head = (b"", b"", b"")  # lens, mac, meta
        self._hasher: Any = None  # BLAKE3 of the direct bulk so far, fed as it arrives
        self._reading = True  # False after a bad frame or EOF: nothing more is parsed
        self._dead = False  # nothing more is handed up (closed, or rejected)
        self.last_data = time.monotonic()  # when bytes last arrived (a stalled frame's age)
        # write flow control
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost = False

    # -- what a subclass provides ---------------------------------------------------------
    def frame_received(self, meta: memoryview | bytes, bulk: bytes | bytearray | None) -> None:
        """One verified frame. `meta` is valid only during the call; raise ProtocolError to
        reject the frame (and the connection)."""
        raise NotImplementedError

    def frame_rejected(self, exc: ProtocolError) -> None:
        """The first bad frame: the transport is being closed after this."""

    def lost(self, exc: Exception | None) -> None:
        """The connection is gone (called once, after every frame received before the end
        has been handed up)."""

    def bulk_sink(self, meta: memoryview, nbytes: int) -> BulkSink | None:
        """Where the nbytes of bulk of the frame with this (unverified) meta should be
        received; None: a buffer of its own. `meta` is valid only during the call."""
        return None

    @property
    def alive(self) -> bool:
        """Still receiving: a bulk sink this connection holds is not free for another."""
        return not (self._dead or self._lost)

    # -- transport callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[union-attr]

    def rebind(self, transport: asyncio.BaseTransport) -> None:
        """The connection goes on over `transport` (the TLS layer loop.start_tls made)."""
        FrameProtocol.connection_made(self, transport)  # not a subclass's: no new connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._reading = False
        self._release_bulk()
        self._wake_writers()
        self.lost(exc)

    def eof_received(self) -> bool:
        return False  # a half-closed peer is a gone peer: close our side too

    def stop_reading(self) -> None:
        """Hand up nothing more, and discard whatever arrives (the owner is closing)."""
        self._reading = False
        self._dead = True
        self._release_bulk()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._seg is not None:
            if type(self._bulk) is BulkSink and self._bulk.closed:
                self._divert()
            return self._seg[self._seg_got:]
        if not self._reading:
            return self._view  # discarded: buffer_updated ignores it
        start, end = self._start, self._end
        if start == end:
            start = end = self._start = self._end = 0
            if len(self._buf) > self._recv_size:  # a huge meta grew it: give the memory back
                self._buf = bytearray(self._recv_size)
                self._view = memoryview(self._buf)
        need = self._need
        size = len(self._buf)
        if start + need > size or size - end < 4096:
            if need > size:  # a frame larger than the buffer (big meta): grow to fit it
                buf = bytearray(need)
                buf[:end - start] = self._view[start:end]
                self._buf, self._view = buf, memoryview(buf)
            elif start:
                self._view[:end - start] = self._view[start:end]
            self._end = end = end - start
            self._start = start = 0
            size = len(self._buf)
        if self._cap:
            return self._view[end:start + self._cap]
        if self._after_bulk and start == end:
            return self._view[end:min(size, end + AFTER_BULK_READ)]
        return self._view[end:]

    def trust(self, *, recv_buf: int = RECV_BUF, max_meta: int = MAX_META,
              max_bulk: int = MAX_BULK) -> None:
        """The peer proved it holds the key: from now on it gets the full receive buffer
        and frame limits (a stranger is held to the small ones it was created with). The
        bytes received so far keep their offsets, so a parse under way reads on unchanged."""
        self._max_meta, self._max_bulk, self._recv_size = max_meta, max_bulk, recv_buf
        if len(self._buf) < recv_buf:
            buf = bytearray(recv_buf)
            buf[:self._end] = self._view[:self._end]
            self._buf, self._view = buf, memoryview(buf)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def mid_frame(self) -> bool:
        """Part of a frame has arrived and the rest has not."""
        return self._seg is not None or self._end > self._start

    def buffer_updated(self, nbytes: int) -> None:
        self.last_data = time.monotonic()
        if not self._reading:
            return
        if self._seg is not None:
            got = self._seg_got
            if self._hasher is not None:
                self._hasher.update(self._seg[got:got + nbytes])
            self._seg_got = got + nbytes
            if self._seg_got == len(self._seg):
                if self._segs:
                    self._seg, self._seg_got = self._segs.pop(), 0
                    return
                bulk = self._bulk
                self._bulk = self._seg = None  # the bulk is the handler's from here on
                self._after_bulk = True
                self._bulk_complete(bulk)  # type: ignore[arg-type]
            return
        self._end += nbytes
        self._after_bulk = False
        self._parse()

    # -- parsing --------------------------------------------------------------------------
    def _parse(self) -> None:
        buf, view, key = self._buf, self._view, self._key
        start, end = self._start, self._end
        while self._reading:
            if end - start < HEADER_SIZE:
                self._need = HEADER_SIZE
                break
            meta_len, bulk_len = _unpack_lens(buf, start)
            if meta_len > self._max_meta or bulk_len > self._max_bulk:
                self._start = start
                self._bad(FrameTooLarge(f"frame of {meta_len}+{bulk_len} bytes exceeds the limit"))
                return
            body = start + HEADER_SIZE
            mend = body + meta_len
            if bulk_len >= self._direct:
                if end < mend:  # receive the rest of the meta, and not a byte of the bulk
                    self._need = self._cap = HEADER_SIZE + meta_len
                    break
                self._cap = 0
                have = min(end - mend, bulk_len)
                sink = self.bulk_sink(view[body:mend], bulk_len)
                segs = sink.claim(self, bulk_len) if sink is not None else None
                bulk: bytearray | BulkSink
                if segs is None:
                    bulk = _pool.get(bulk_len)
                    segs = [memoryview(bulk)]
                else:
                    bulk = sink  # type: ignore[assignment]
                pos = mend
                self._hasher = hasher = BulkHasher()
                hasher.update(view[pos:pos + have])
                while have and segs:  # the part of the bulk that came with the meta
                    seg = segs[0]
                    n = min(have, len(seg))
                    seg[:n] = view[pos:pos + n]
                    pos += n
                    have -= n
                    if n == len(seg):
                        segs.pop(0)
                    else:
                        segs[0] = seg[n:]
                self._bulk_head = (bytes(view[start:start + _LENS_SIZE]),
                                   bytes(view[start + _LENS_SIZE:body]), bytes(view[body:mend]))
                start = pos
                self._start = start
                if segs:  # the rest arrives straight into the buffers
                    self._end = start
                    self._need = HEADER_SIZE
                    self._bulk = bulk
                    segs.reverse()
                    self._seg, self._seg_got = segs.pop(), 0
                    self._segs = segs
                    return
                self._bulk_complete(bulk)
                continue
            fend = mend + bulk_len
            if end < fend:
                self._need = fend - start
                break
            if bulk_len:
                bulk = bytes(view[mend:fend])
                expected = sign(key, view[start:start + _LENS_SIZE], view[body:mend], bulk)
            else:
                bulk = None  # type: ignore[assignment]
                expected = mac(key, view[start:start + _LENS_SIZE], view[body:mend])
            if not _compare(view[start + _LENS_SIZE:body], expected):
                self._start = start
                self._bad(_bad_hmac())
                return
            self._start = start = fend
            self._deliver(view[body:mend], bulk)
        self._start, self._end = start, end

    def _divert(self) -> None:
        """The sink being received into was closed: the rest of the bulk goes to scratch."""
        rest = len(self._seg) - self._seg_got + sum(len(v) for v in self._segs)  # type: ignore[arg-type]
        self._seg, self._seg_got, self._segs = memoryview(bytearray(rest)), 0, []
        self._bulk = _DROPPED
        self._hasher = None

    def _bulk_complete(self, bulk: bytearray | BulkSink) -> None:
        lens, got, meta = self._bulk_head
        self._bulk_head = (b"", b"", b"")
        hasher, self._hasher = self._hasher, None
        if bulk is _DROPPED or (type(bulk) is BulkSink and bulk.closed):
            return  # a late reply to a request already answered: nobody reads it
        # the bulk was hashed as it arrived, while its bytes were still in the CPU's cache:
        # hashing the whole of it afterwards cost half as much again
        if _compare(got, mac(self._key, lens, meta, hasher.digest())):
            if type(bulk) is HashedBulk:
                bulk.pieces = hasher.piece_digests()  # an OST keeps them (ost_digests.py)
            self._deliver(meta, bulk)
        else:
            self._bad(_bad_hmac())

    def _deliver(self, meta: memoryview | bytes, bulk: bytes | bytearray | None) -> None:
        try:
            self.frame_received(meta, bulk)
        except ProtocolError as exc:
            self._reject(exc)
        except Exception:  # a bug above us: this connection cannot go on, the process can
            log.exception("handling a frame failed; closing the connection")
            self.stop_reading()
            if self.transport is not None:
                self.transport.close()

    def _bad(self, exc: ProtocolError) -> None:
        """A bad frame: stop reading now, reject it and close."""
        self._reading = False
        self._release_bulk()
        self._reject(exc)

    def _release_bulk(self) -> None:
        self._bulk = self._seg = self._hasher = None
        self._segs = []

    def _reject(self, exc: ProtocolError) -> None:
        self.stop_reading()
        try:
            self.frame_rejected(exc)
        finally:
            if self.transport is not None:
                self.transport.close()

    # -- write flow control ---------------------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport holds more than WRITE_HIGH unsent bytes;
        ConnectionResetError once the connection is lost."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut
        if self._lost:
            raise ConnectionResetError("connection lost")
