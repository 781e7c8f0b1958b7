"""Scatter receive (net/sink.py): a reply's bulk lands in the caller's pieces of one buffer.

BulkSink's own rules (claim, owners, clear_tail), peek_reply_xid against msgpack, and the
receiving FrameProtocol fed by hand in any chunking, then a real server and connection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import AuthFailure
from shoal.net.client import RpcConnection
from shoal.net.framing import FrameProtocol
from shoal.net.server import RpcServer, ServerConnection
from shoal.net.sink import BulkSink
from shoal.protocol import messages as m
from tests.unit.test_net_framing import KEY, SMALL, Recorder, feed, frame, payload, settle

SENTINEL = 0xEE  # bytes of the output buffer no frame should touch
# four pieces of a 1000-byte buffer, out of order and with gaps: bulk byte 0 goes to 500
PIECES = [(500, 600), (0, 100), (250, 400), (700, 950)]
SINK_SIZE = sum(b - a for a, b in PIECES)  # 600


class Owner:
    def __init__(self, alive: bool = True) -> None:
        self.alive = alive


def scattered(pieces: Sequence[tuple[int, int]] = PIECES,
              size: int = 1000) -> tuple[bytearray, BulkSink]:
    out = bytearray([SENTINEL]) * size
    return out, BulkSink([memoryview(out)[a:b] for a, b in pieces])


def gathered(sink: BulkSink) -> bytes:
    """The sink's bytes in bulk order (all of them, not just the filled prefix)."""
    return b"".join(bytes(v) for v in sink.views)


def gaps(out: bytearray, pieces: Sequence[tuple[int, int]] = PIECES) -> bytes:
    """The bytes of `out` outside every piece: nothing may ever write there."""
    inside = set()
    for a, b in pieces:
        inside.update(range(a, b))
    return bytes(out[i] for i in range(len(out)) if i not in inside)


# -- BulkSink on its own ------------------------------------------------------------------
def test_claim_covers_exactly_n_bytes_in_order() -> None:
    for n in range(0, SINK_SIZE + 1, 7):
        out, sink = scattered()
        views = sink.claim(Owner(), n)
        assert views is not None and sum(len(v) for v in views) == n
        data = payload(n, n)
        pos = 0
        for v in views:
            v[:] = data[pos:pos + len(v)]
            pos += len(v)
        assert len(sink) == sink.filled == sink.dirty == n
        assert gathered(sink)[:n] == data
        assert gathered(sink)[n:] == bytes([SENTINEL]) * (SINK_SIZE - n)
        assert gaps(out) == bytes([SENTINEL]) * (1000 - SINK_SIZE)


def test_empty_views_are_dropped() -> None:
    buf = memoryview(bytearray(10))
    sink = BulkSink([buf[0:0], buf[2:5], buf[5:5], buf[7:10]])
    assert [len(v) for v in sink.views] == [3, 3] and sink.size == 6


def test_too_large_is_refused_and_changes_nothing() -> None:
    _, sink = scattered()
    assert sink.claim(Owner(), SINK_SIZE + 1) is None
    assert (sink.filled, sink.dirty, len(sink)) == (0, 0, 0)
    # nobody holds it after a refusal: an exact fit is still accepted
    assert sink.claim(Owner(), SINK_SIZE) is not None


def test_a_live_owner_holds_the_sink_a_dead_one_does_not() -> None:
    _, sink = scattered()
    first = Owner()
    assert sink.claim(first, 300) is not None
    assert sink.claim(Owner(), 10) is None  # another connection while the first lives
    assert sink.claim(first, 10) is None  # the same one too: a duplicate reply
    assert sink.filled == 300
    first.alive = False
    assert sink.claim(Owner(), 10) is not None
    assert sink.filled == 10 and sink.dirty == 300  # dirty remembers the furthest write


@settings(max_examples=200)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6), data=st.data())
def test_clear_tail_zeroes_exactly_between_filled_and_dirty(sizes: list[int],
                                                            data: st.DataObject) -> None:
    pieces, pos = [], 0
    for s in sizes:  # a gap of 3 bytes between pieces
        pieces.append((pos, pos + s))
        pos += s + 3
    out, sink = scattered(pieces, pos)
    total = sum(sizes)
    big = data.draw(st.integers(0, total))
    small = data.draw(st.integers(0, big))
    a = Owner()
    for v in sink.claim(a, big) or []:  # a frame that wrote `big` bytes, then was rejected
        v[:] = b"\xAA" * len(v)
    a.alive = False
    for v in sink.claim(Owner(), small) or []:  # the reply that replaced it
        v[:] = b"\xBB" * len(v)
    sink.clear_tail()
    assert gathered(sink) == (b"\xBB" * small + bytes(big - small)
                              + bytes([SENTINEL]) * (total - big))
    assert gaps(out, pieces) == bytes([SENTINEL]) * (pos - total)
    assert sink.dirty == sink.filled == small
    before = bytes(out)
    sink.clear_tail()  # nothing dirty past the end any more: a no-op
    assert bytes(out) == before


# -- peek_reply_xid -----------------------------------------------------------------------
def reply_meta(xid: int, **kw: object) -> bytes:
    meta, _ = m.encode(m.Reply(xid, **kw))  # type: ignore[arg-type]
    return meta


@settings(max_examples=300)
@given(xid=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(
    [0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 2**32 - 1, 2**32, 2**64 - 1])),
    status=st.one_of(st.none(), st.text(max_size=8)), data=st.dictionaries(
        st.text(max_size=4), st.integers(-2**63, 2**64 - 1), max_size=3))
def test_peek_agrees_with_msgpack_for_every_reply(xid: int, status: str | None,
                                                  data: dict[str, int]) -> None:
    meta = reply_meta(xid, status=status, data=data)
    assert msgpack.unpackb(meta)[1] == xid
    assert m.peek_reply_xid(meta) == xid
    assert m.peek_reply_xid(memoryview(meta)) == xid
    # every prefix either says nothing or the right thing, and enough of it says it
    need = 3 if xid <= 0x7F else 3 + _width(xid)  # fixarray, kind, xid tag (+ its bytes)
    for k in range(len(meta) + 1):
        got = m.peek_reply_xid(meta[:k])
        assert got == (xid if k >= need else None), k


def _width(xid: int) -> int:
    """How many bytes msgpack's uint for xid > 0x7F takes after its tag."""
    return 1 if xid <= 0xFF else 2 if xid <= 0xFFFF else 4 if xid <= 0xFFFFFFFF else 8


@pytest.mark.parametrize("head", [b"\xdc\x00\x09", b"\xdd\x00\x00\x00\x09"])
def test_peek_reads_long_array_headers(head: bytes) -> None:
    """msgpack writes a reply's 9 fields with a fixarray header, but a longer header for
    the same 9 is valid msgpack too."""
    for xid in (5, 300, 2**40):
        short = msgpack.packb([m.KIND_REPLY, xid] + [0] * 7)
        assert short[0] == 0x99
        assert m.peek_reply_xid(head + short[1:]) == xid


@pytest.mark.parametrize("count", [2, 8, 10, 20, 70000])
def test_peek_says_none_for_arrays_of_the_wrong_length(count: int) -> None:
    meta = msgpack.packb([m.KIND_REPLY, 5] + [0] * (count - 2))
    assert m.peek_reply_xid(meta) is None


@pytest.mark.parametrize("msg", [
    m.Request(7, "read", "T", {"a": 1}),
    m.Request(2**63, "write", "T", bulk=b"x"),
    m.Notice("ir", {"xid": 1}),
    m.EarlyReply(7, 1.5),
    m.Hello("client-1", "nid"),
])
def test_peek_says_none_for_anything_not_a_reply(msg: m.Message) -> None:
    meta, _ = m.encode(msg)
    assert m.peek_reply_xid(meta) is None


@pytest.mark.parametrize("meta", [b"", b"\x99", b"\x99\x01", b"\xc0\x01\x05",
                                  msgpack.packb([1, -1]), msgpack.packb([1, "7"]),
                                  msgpack.packb([1, 1.0]), msgpack.packb({1: 2}),
                                  msgpack.packb([True, 7])])
def test_peek_says_none_for_garbage(meta: bytes) -> None:
    assert m.peek_reply_xid(meta) is None


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=16),
                 st.binary(max_size=12).map(lambda b: b"\x99\x01" + b)))
def test_peek_never_raises_and_any_answer_is_what_msgpack_reads(data: bytes) -> None:
    got = m.peek_reply_xid(data)
    if got is None:
        return
    # an answer means: an array whose first element is the reply kind, followed by a uint
    up = msgpack.Unpacker()
    up.feed(data)
    up.read_array_header()
    kind, xid = up.unpack(), up.unpack()
    assert type(kind) is int and kind == m.KIND_REPLY
    assert type(xid) is int and xid == got and 0 <= got < 2**64


def test_peek_says_none_for_arrays_too_short_to_be_replies() -> None:
    assert m.peek_reply_xid(b"\x91\x01\x05") is None


# -- scatter receive through FrameProtocol ------------------------------------------------
class SinkRecorder(Recorder):
    """Records each frame's bulk object as handed up, and its bytes at that moment."""

    def __init__(self, sinks: dict[bytes, BulkSink], **kw: int) -> None:
        super().__init__(**kw)
        self.sinks = sinks
        self.asked: list[tuple[bytes, int]] = []
        self.bulks: list[object] = []

    def bulk_sink(self, meta: memoryview, nbytes: int) -> BulkSink | None:
        self.asked.append((bytes(meta), nbytes))
        return self.sinks.get(bytes(meta))

    def frame_received(self, meta, bulk) -> None:  # type: ignore[no-untyped-def]
        self.bulks.append(bulk)
        if isinstance(bulk, BulkSink):
            data: bytes | None = gathered(bulk)[:len(bulk)]
        else:
            data = None if bulk is None else bytes(bulk)
        self.frames.append((bytes(meta), data))


BULK_LENS = [0, 1, 63, 64, 65, 200, 255, 256, 257, SINK_SIZE - 1, SINK_SIZE, SINK_SIZE + 1, 700]


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(st.tuples(st.sampled_from(BULK_LENS), st.booleans()),
                      min_size=1, max_size=6),
       chunks=st.lists(st.integers(1, 2000), min_size=1, max_size=6))
def test_bulks_land_in_their_sinks_in_any_chunking(specs: list[tuple[int, bool]],
                                                   chunks: list[int]) -> None:
    outs: dict[bytes, bytearray] = {}
    sinks: dict[bytes, BulkSink] = {}
    want = []
    for i, (n, to_sink) in enumerate(specs):
        meta = b"s%d" % i if to_sink else b"o%d" % i
        if to_sink:
            outs[meta], sinks[meta] = scattered()
        want.append((meta, payload(n, i) if n else None))

    async def go() -> None:
        proto = SinkRecorder(sinks, **SMALL)  # direct at 64 bytes, thread HMAC at 256
        feed(proto, b"".join(frame(mt, b) for mt, b in want), chunks)
        await settle(proto, len(want))
        assert proto.frames == want and not proto.rejected
        # only a direct-sized bulk asks for a sink, with its exact length
        assert proto.asked == [(mt, len(b)) for mt, b in want if b and len(b) >= 64]
        for (meta, bulk), got in zip(want, proto.bulks, strict=True):
            n = len(bulk or b"")
            sink = sinks.get(meta)
            if sink is not None and 64 <= n <= SINK_SIZE:
                assert got is sink and len(got) == n  # the prefix of the sink it filled
                assert gathered(sink)[n:] == bytes([SENTINEL]) * (SINK_SIZE - n)
            else:  # too small to be direct, too large for the sink, or no sink: its own
                assert not isinstance(got, BulkSink)
                if sink is not None:
                    assert gathered(sink) == bytes([SENTINEL]) * SINK_SIZE
            if meta in outs:
                assert gaps(outs[meta]) == bytes([SENTINEL]) * (1000 - SINK_SIZE)

    asyncio.run(go())


async def test_bytes_land_at_their_places_in_the_buffer() -> None:
    assert FrameProtocol(KEY).bulk_sink(memoryview(b"x"), 1 << 20) is None  # opt-in only
    out, sink = scattered()
    bulk = payload(SINK_SIZE, 3)
    proto = SinkRecorder({b"m": sink})
    feed(proto, frame(b"m", bulk), [1 << 30])  # default thresholds: below DIRECT_BULK
    await settle(proto, 1)
    assert proto.bulks[0] is not sink  # 600 bytes is no direct bulk at the real threshold
    proto = SinkRecorder({b"m": sink}, **SMALL)
    feed(proto, frame(b"m", bulk), [17])
    await settle(proto, 1)
    assert proto.bulks[0] is sink
    assert out[500:600] == bulk[0:100] and out[0:100] == bulk[100:200]
    assert out[250:400] == bulk[200:350] and out[700:950] == bulk[350:600]


@pytest.mark.parametrize("n", [100, 2 << 20])  # HMAC on the loop, and on a thread
async def test_a_flipped_bulk_bit_in_a_sink_is_rejected(n: int) -> None:
    pieces = [(0, n // 2), (n // 2 + 8, n + 8)]
    out, sink = scattered(pieces, n + 8)
    data = bytearray(frame(b"m", payload(n, 1)))
    data[-n // 3] ^= 0x10
    proto = SinkRecorder({b"m": sink}, **SMALL)
    feed(proto, bytes(data), [65536])
    await settle(proto, 0, rejected=1)
    assert proto.frames == [] and isinstance(proto.rejected[0], AuthFailure)
    assert proto.transport.closed and not proto.alive  # type: ignore[union-attr]
    # the rejected frame wrote the whole sink; a shorter good reply on a new connection
    # takes it over, and clear_tail leaves no byte of the bad one behind
    assert sink.dirty == n
    good = payload(n // 4 + 64, 9)
    proto2 = SinkRecorder({b"m": sink}, **SMALL)
    feed(proto2, frame(b"m", good), [1000])
    await settle(proto2, 1)
    assert proto2.bulks[0] is sink and len(sink) == len(good)
    sink.clear_tail()
    assert gathered(sink) == good + bytes(n - len(good))
    assert out[n // 2:n // 2 + 8] == bytes([SENTINEL]) * 8


async def test_a_second_frame_for_a_held_sink_gets_its_own_buffer() -> None:
    out, sink = scattered()
    first, second = payload(300, 1), payload(400, 2)
    proto = SinkRecorder({b"m": sink}, **SMALL)
    feed(proto, frame(b"m", first) + frame(b"m", second), [50])
    await settle(proto, 2)
    assert proto.bulks[0] is sink and proto.bulks[1] is not sink
    assert proto.frames == [(b"m", first), (b"m", second)]
    assert len(sink) == 300 and gathered(sink)[:300] == first  # not written over
    # once that connection is gone, the sink is free for the next one's frame
    proto.connection_lost(None)
    proto2 = SinkRecorder({b"m": sink}, **SMALL)
    feed(proto2, frame(b"m", second), [1 << 30])
    await settle(proto2, 1)
    assert proto2.bulks[0] is sink and gathered(sink)[:400] == second


async def test_a_late_frame_does_not_write_over_a_result_already_taken() -> None:
    out, sink = scattered()
    old, new = b"\xAA" * SINK_SIZE, payload(SINK_SIZE, 5)
    slow = SinkRecorder({b"m": sink}, **SMALL)
    data = frame(b"m", old)
    feed(slow, data[:len(data) // 2], [1 << 30])  # the first reply is half way in
    fast = SinkRecorder({b"m": sink}, **SMALL)  # the resend's reply, on another connection
    feed(fast, frame(b"m", new), [1 << 30])
    await settle(fast, 1)
    assert fast.bulks[0] is not sink  # held by the live slow one: its own buffer
    view, pos = memoryview(fast.bulks[0]), 0  # type: ignore[arg-type]
    for v in sink.views:  # what fileio.pread does with a reply in its own buffer
        v[:] = view[pos:pos + len(v)]
        pos += len(v)
    sink.filled = len(view)
    sink.clear_tail()
    sink.close()  # as fileio.pread does before it returns `out`
    taken = bytes(out)  # pread has returned `out` to its caller
    feed(slow, data[len(data) // 2:], [1 << 30])
    await settle(slow, 0)
    assert bytes(out) == taken
    assert slow.bulks == [] and not slow.rejected  # dropped quietly, the connection lives


# -- end to end: a real server and connection ----------------------------------------------
async def bulk_of(conn: ServerConnection, req: m.Request) -> m.Reply:
    return m.Reply(req.xid, data={"n": req.args["n"]}, bulk=payload(req.args["n"], req.xid))


@pytest.mark.parametrize("n,into", [(3 << 20, True), ((3 << 20) - 5000, True),
                                    (100 << 10, True), (1000, False), ((3 << 20) + 1, False)])
async def test_reply_bulk_is_received_into_the_requests_sink(n: int, into: bool) -> None:
    srv = RpcServer(KEY, bulk_of)
    await srv.start("127.0.0.1", 0)
    try:
        conn = await RpcConnection.open("127.0.0.1", srv.port, KEY, m.Hello("c1"))
        mb = 1 << 20  # a 3 MiB sink from 1 MiB pieces of a 4 MiB buffer, last piece first
        pieces = [(3 * mb, 4 * mb), (0, mb), (2 * mb, 3 * mb)]
        out, sink = scattered(pieces, 4 * mb)
        reply = await conn.call(m.Request(7, "read", "T", {"n": n}, reply_into=sink), timeout=10)
        want = payload(n, 7)
        if into:
            assert reply.bulk is sink and len(sink) == n  # type: ignore[comparison-overlap]
            assert gathered(sink)[:n] == want
        else:
            assert reply.bulk == want and not isinstance(reply.bulk, BulkSink)
            assert gathered(sink) == bytes([SENTINEL]) * (3 * mb)
        assert out[mb:2 * mb] == bytes([SENTINEL]) * mb  # the gap
        assert conn._sinks == {}  # forgotten with its call
        # a request without a sink, after: its reply has a buffer of its own
        other = await conn.call(m.Request(8, "read", "T", {"n": 2 << 20}), timeout=10)
        assert bytes(other.bulk or b"") == payload(2 << 20, 8)
        if into:
            assert gathered(sink)[:n] == want
        await conn.close()
    finally:
        await srv.close()


async def test_concurrent_calls_fill_their_own_sinks() -> None:
    srv = RpcServer(KEY, bulk_of)
    await srv.start("127.0.0.1", 0)
    try:
        conn = await RpcConnection.open("127.0.0.1", srv.port, KEY, m.Hello("c1"))
        sinks = [BulkSink([memoryview(bytearray(1 << 20)) for _ in range(2)]) for _ in range(4)]
        replies = await asyncio.gather(*(
            conn.call(m.Request(10 + i, "read", "T", {"n": (2 << 20) - i}, reply_into=s), 10)
            for i, s in enumerate(sinks)))
        for i, (r, s) in enumerate(zip(replies, sinks, strict=True)):
            assert r.bulk is s and gathered(s)[:len(s)] == payload((2 << 20) - i, 10 + i)
        await conn.close()
    finally:
        await srv.close()
