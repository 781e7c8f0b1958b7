"""The frame reader fed by hand: any split of the byte stream parses to the same frames, large
bulks land in their own buffers (hashed as they arrive), bad frames are refused at the first
possible byte, and frames are handed up in the order they came."""

from __future__ import annotations

import asyncio
import itertools
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import AuthFailure, BadMessage, FrameTooLarge, ProtocolError
from shoal.net import framing
from shoal.net.frame import (
    HEADER_SIZE,
    MAX_BULK,
    MAX_META,
    HashedBulk,
    bulk_hash,
    encode_frame,
    read_frame,
)
from shoal.net.framing import BulkPool, FrameProtocol
from shoal.net.writer import FrameWriter

KEY = b"k" * 32
# thresholds small enough that a few hundred bytes exercise every path
SMALL = {"recv_buf": 128, "direct_bulk": 64}


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def writelines(self, bufs: list[bytes]) -> None:
        self.written.extend(bytes(b) for b in bufs)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class Recorder(FrameProtocol):
    def __init__(self, key: bytes = KEY, **kw: int) -> None:
        super().__init__(key, **kw)
        self.frames: list[tuple[bytes, bytes | None]] = []
        self.bulk_types: list[type] = []
        self.rejected: list[ProtocolError] = []
        self.lost_calls = 0
        self.connection_made(FakeTransport())  # type: ignore[arg-type]

    def frame_received(self, meta, bulk) -> None:  # type: ignore[no-untyped-def]
        if bytes(meta) == b"refuse":
            raise BadMessage("refused by the handler")
        self.frames.append((bytes(meta), None if bulk is None else bytes(bulk)))
        self.bulk_types.append(type(bulk))

    def frame_rejected(self, exc: ProtocolError) -> None:
        self.rejected.append(exc)

    def lost(self, exc: Exception | None) -> None:
        self.lost_calls += 1


def frame(meta: bytes, bulk: bytes | None = None, key: bytes = KEY) -> bytes:
    return b"".join(encode_frame(key, meta, bulk))


def feed(proto: FrameProtocol, data: bytes, chunks: list[int]) -> None:
    """Deliver `data` as a transport would: into get_buffer's buffer, at most a chunk at a
    time (chunk sizes cycle)."""
    pos = 0
    sizes = itertools.cycle(chunks)
    while pos < len(data):
        buf = proto.get_buffer(-1)
        assert len(buf) > 0, "get_buffer must never return an empty buffer"
        n = min(len(buf), next(sizes), len(data) - pos)
        buf[:n] = data[pos:pos + n]
        proto.buffer_updated(n)
        pos += n


async def settle(proto: Recorder, frames: int, rejected: int = 0) -> None:
    """Every frame fed is verified and handed up (or refused) by the time feed returns: a
    bulk is hashed as it arrives, so nothing is left to wait for."""
    await asyncio.sleep(0)
    assert len(proto.frames) >= frames and len(proto.rejected) >= rejected, \
        f"got {len(proto.frames)} frames, {proto.rejected}"


def payload(n: int, seed: int) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def stream_of(specs: list[tuple[int, int]]) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
    want = []
    for i, (meta_len, bulk_len) in enumerate(specs):
        meta = payload(meta_len, i) or b"\x90"
        bulk = payload(bulk_len, i + 100) if bulk_len else None
        want.append((meta, bulk))
    return b"".join(frame(meta, bulk) for meta, bulk in want), want


# metas up to past the receive buffer (it must grow), bulks on both sides of both thresholds
SPECS = st.lists(st.tuples(st.integers(1, 300), st.sampled_from(
    [0, 1, 63, 64, 65, 200, 255, 256, 257, 700])), min_size=1, max_size=8)


@settings(max_examples=150)
@given(specs=SPECS, chunks=st.lists(st.integers(1, 2000), min_size=1, max_size=6))
def test_any_chunking_parses_the_same_frames(specs, chunks):
    data, want = stream_of(specs)

    async def go() -> None:
        proto = Recorder(**SMALL)
        feed(proto, data, chunks)
        await settle(proto, len(want))
        assert proto.frames == want
        assert not proto.rejected and not proto.transport.closed  # type: ignore[union-attr]

    asyncio.run(go())


def test_every_split_point_parses():
    data, want = stream_of([(5, 0), (300, 10), (3, 65), (20, 300), (1, 0)])

    async def go() -> None:
        for k in range(1, len(data)):
            proto = Recorder(**SMALL)
            feed(proto, data[:k], [len(data)])
            feed(proto, data[k:], [len(data)])
            await settle(proto, len(want))
            assert proto.frames == want, k
        proto = Recorder(**SMALL)
        feed(proto, data, [1])  # one byte at a time
        await settle(proto, len(want))
        assert proto.frames == want

    asyncio.run(go())


@pytest.mark.parametrize("chunks", [[1 << 30], [1 << 20], [65536], [4096], [7, 13, 100_003]])
async def test_real_sized_bulks_any_chunking(chunks):
    sizes = [0, 1, 65535, 65536, 65537, (1 << 20) - 1, 1 << 20, 4 << 20]
    want = [(f"m{i}".encode(), os.urandom(n) if n else None) for i, n in enumerate(sizes)]
    data = b"".join(frame(meta, bulk) for meta, bulk in want)
    proto = Recorder()
    feed(proto, data, chunks)
    await settle(proto, len(want))
    assert proto.frames == want
    # large bulks are handed up in the buffer they were received into
    assert issubclass(proto.bulk_types[sizes.index(4 << 20)], bytearray)
    assert proto.bulk_types[sizes.index(1)] is bytes


async def test_direct_bulk_is_received_in_place():
    bulk = os.urandom(1 << 20)
    data = frame(b"meta", bulk)
    proto = Recorder()
    # header and meta first: the next buffer offered is the bulk's own, exactly its size
    feed(proto, data[:HEADER_SIZE + 4], [1 << 30])
    buf = proto.get_buffer(-1)
    assert len(buf) == len(bulk)
    buf[:] = bulk
    proto.buffer_updated(len(bulk))
    await settle(proto, 1)
    assert proto.frames == [(b"meta", bulk)]


async def test_no_bulk_byte_lands_in_the_receive_buffer_while_the_meta_is_short():
    data = frame(b"x" * 100, os.urandom(1 << 20))
    proto = Recorder()
    feed(proto, data[:HEADER_SIZE + 10], [1 << 30])
    # the rest of the meta, and not one byte more, goes into the shared buffer
    assert len(proto.get_buffer(-1)) == 90


async def test_order_is_kept_around_large_bulks():
    big = os.urandom(2 << 20)
    want = [(b"a", None), (b"big", big), (b"b", None), (b"c", b"small"), (b"big2", big)]
    data = b"".join(frame(meta, bulk) for meta, bulk in want)
    proto = Recorder()
    feed(proto, data, [1 << 30])
    await settle(proto, len(want))
    assert proto.frames == want


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("lens", [(MAX_META + 1, 0), (10, MAX_BULK + 1), (0xFFFFFFFF, 0xFFFFFFFF)])
async def test_oversized_header_is_refused_before_any_body_byte(lens):
    proto = Recorder()
    feed(proto, struct.pack(">II", *lens) + b"\0" * 32, [1 << 30])
    assert len(proto.rejected) == 1 and isinstance(proto.rejected[0], FrameTooLarge)
    assert proto.transport.closed  # type: ignore[union-attr]
    feed(proto, b"body" * 1000, [1 << 30])  # whatever follows is discarded
    assert proto.frames == [] and len(proto.rejected) == 1


@pytest.mark.parametrize("bulk_len", [0, 10, 100 << 10, 2 << 20])
async def test_forged_frames_are_refused(bulk_len):
    good = frame(b"first", None)
    bad = frame(b"meta", os.urandom(bulk_len) if bulk_len else None, key=b"x" * 32)
    proto = Recorder()
    feed(proto, good + bad + good, [1 << 30])
    await settle(proto, 1, rejected=1)
    assert proto.frames == [(b"first", None)]
    assert [type(e) for e in proto.rejected] == [AuthFailure]
    assert proto.transport.closed  # type: ignore[union-attr]


@pytest.mark.parametrize("chunk", [1 << 30, 65536, 4093])
@pytest.mark.parametrize("where", [0, 1 << 20, -1])
async def test_a_flipped_bulk_bit_is_caught(chunk, where):
    # the bulk is hashed piece by piece as recv() lands it: a bit flipped in the part that
    # came with the meta, in the middle, or in the very last piece fails the HMAC alike
    data = bytearray(frame(b"meta", os.urandom(2 << 20)))
    data[where if where < 0 else HEADER_SIZE + len(b"meta") + where] ^= 1
    proto = Recorder()
    feed(proto, bytes(data), [chunk])
    await settle(proto, 0, rejected=1)
    assert proto.frames == [] and isinstance(proto.rejected[0], AuthFailure)


async def test_bad_frame_after_a_large_bulk_comes_after_it():
    big = os.urandom(2 << 20)
    data = frame(b"big", big) + frame(b"forged", None, key=b"x" * 32) + frame(b"never", None)
    proto = Recorder()
    feed(proto, data, [1 << 30])
    await settle(proto, 1, rejected=1)
    assert proto.frames == [(b"big", big)]
    assert isinstance(proto.rejected[0], AuthFailure)


@pytest.mark.parametrize("digest", ["right", "none", "wrong"])
async def test_a_prehashed_bulk_is_signed_with_its_digest(digest):
    # an OST hashes what it reads as it reads it; the frame then trusts that digest, so a
    # wrong one is a frame every receiver refuses, and no digest means hashing it here
    data = os.urandom(2 << 20)
    bulk = HashedBulk(len(data))
    bulk[:] = data
    bulk.digest = {"right": bulk_hash(data), "none": None, "wrong": bulk_hash(b"x")}[digest]
    proto = Recorder()
    feed(proto, frame(b"m", bulk), [65536])
    if digest == "wrong":
        assert proto.frames == [] and isinstance(proto.rejected[0], AuthFailure)
    else:
        assert proto.frames == [(b"m", data)] and proto.rejected == []


async def test_handler_refusal_closes_the_connection():
    proto = Recorder()
    feed(proto, frame(b"ok") + frame(b"refuse") + frame(b"after"), [1 << 30])
    assert proto.frames == [(b"ok", None)]
    assert isinstance(proto.rejected[0], BadMessage) and proto.transport.closed  # type: ignore


async def test_garbage_is_refused():
    proto = Recorder()
    feed(proto, b"\x00\x00\x00\x05\x00\x00\x00\x00" + b"\x01" * 32 + b"junk!", [3])
    assert isinstance(proto.rejected[0], AuthFailure) and proto.frames == []


# -- connection end ---------------------------------------------------------------------
async def test_lost_comes_after_the_frames_received_before_it():
    big = os.urandom(2 << 20)
    proto = Recorder()
    feed(proto, frame(b"big", big) + frame(b"tail"), [1 << 30])
    proto.connection_lost(None)
    await settle(proto, 2)
    assert proto.frames == [(b"big", big), (b"tail", None)]
    assert proto.lost_calls == 1


async def test_stop_reading_drops_a_frame_half_received():
    proto = Recorder()
    data = frame(b"big", os.urandom(2 << 20)) + frame(b"after")
    feed(proto, data[:1 << 20], [1 << 30])
    proto.stop_reading()
    feed(proto, data[1 << 20:], [65536])
    proto.connection_lost(None)
    assert proto.frames == [] and proto.lost_calls == 1


async def test_partial_frame_at_eof_is_dropped_quietly():
    proto = Recorder()
    data = frame(b"meta", os.urandom(100_000))
    feed(proto, data[:-5], [1 << 30])
    proto.connection_lost(None)
    assert proto.frames == [] and proto.rejected == [] and proto.lost_calls == 1


# -- writes -----------------------------------------------------------------------------
async def test_writer_keeps_order_around_a_bulk_signed_on_a_thread():
    transport = FakeTransport()
    writer = FrameWriter(transport, KEY)  # type: ignore[arg-type]
    big = os.urandom(2 << 20)
    sent = [(b"a", None), (b"big", big), (b"b", b"xy"), (b"c", None)]
    for meta, bulk in sent:
        writer.send(meta, bulk)
    for _ in range(2000):
        await asyncio.sleep(0.001)
        if not writer._held and not writer._out:
            break
    reader = asyncio.StreamReader()
    reader.feed_data(b"".join(transport.written))
    got = [await read_frame(reader, KEY) for _ in sent]
    assert got == sent
    assert any(w is big or w == big for w in transport.written), "the bulk is written as is"


async def test_one_write_per_loop_iteration():
    transport = FakeTransport()
    calls = []
    transport.writelines = lambda bufs: calls.append(list(bufs))  # type: ignore[method-assign]
    writer = FrameWriter(transport, KEY)  # type: ignore[arg-type]
    for i in range(5):
        writer.send(b"m%d" % i, None)
    await asyncio.sleep(0)
    assert len(calls) == 1 and len(calls[0]) == 5


async def test_drain_waits_while_the_transport_is_over_its_high_water():
    proto = Recorder()
    await proto.drain()  # not paused: returns at once
    proto.pause_writing()
    waiter = asyncio.ensure_future(proto.drain())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    proto.resume_writing()
    await asyncio.wait_for(waiter, 1)
    proto.pause_writing()
    waiter = asyncio.ensure_future(proto.drain())
    await asyncio.sleep(0)
    proto.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiter, 1)


# -- the bulk buffer pool ---------------------------------------------------------------
def test_pool_reuses_only_buffers_nobody_holds():
    pool = BulkPool(max_bytes=1 << 20)
    a = pool.get(1000)
    b = pool.get(1000)
    assert a is not b
    view = memoryview(b)
    del a
    c = pool.get(1000)  # a's buffer: only the pool refers to it
    d = pool.get(1000)  # b is held through a view: a new one
    assert d is not b and d is not c
    del view, b
    e = pool.get(1000)  # b's buffer, free now
    assert e is not c and e is not d
    c.extend(b"grown")  # resized by its user: never handed out again
    del c
    assert len(pool.get(1000)) == 1000


def test_pool_is_bounded():
    pool = BulkPool(max_bytes=3000)
    held = [pool.get(1000) for _ in range(5)]
    assert pool._bytes == 3000 and len(held) == 5


def test_receive_buffers_come_from_the_pool(monkeypatch):
    pool = BulkPool()
    monkeypatch.setattr(framing, "_pool", pool)

    async def go() -> None:
        for _ in range(3):
            proto = Recorder()
            feed(proto, frame(b"m", os.urandom(1 << 20)), [1 << 30])
            await settle(proto, 1)
            del proto
        assert pool._bytes == 1 << 20, "one buffer served all three frames"

    asyncio.run(go())


async def test_a_failing_handler_closes_only_its_connection(caplog):
    class Broken(Recorder):
        def frame_received(self, meta, bulk):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")

    for bulk in (None, os.urandom(2 << 20)):  # a small frame, and one with a direct bulk
        proto = Broken()
        feed(proto, frame(b"m", bulk) + frame(b"next"), [1 << 30])
        assert proto.transport.closed  # type: ignore[union-attr]
    assert "handling a frame failed" in caplog.text
