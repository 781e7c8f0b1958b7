"""The RPC transport: round trips, and bad input rejected without hurting other clients."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib

import pytest

from shoal.errors import AuthFailure, FrameTooLarge, NotConnected, TimedOut
from shoal.net import loop
from shoal.net.client import RpcConnection
from shoal.net.frame import HEADER_SIZE, MAX_BULK, MAX_META, encode_frame, read_frame
from shoal.net.framing import DIRECT_BULK
from shoal.net.server import RpcServer, ServerConnection
from shoal.net.writer import THREAD_HMAC
from shoal.protocol import messages as m

KEY = b"k" * 32


async def echo(conn: ServerConnection, req: m.Request) -> m.Reply:
    if req.op == "slow":
        await asyncio.sleep(0.3)
    if req.op == "silent":
        return None  # type: ignore[return-value]
    return m.Reply(req.xid, data={"op": req.op, "args": req.args, "who": conn.client_uuid},
                   bulk=req.bulk)


@pytest.fixture
async def server():
    srv = RpcServer(KEY, echo)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.close()


async def client(srv: RpcServer, key: bytes = KEY, name: str = "c1") -> RpcConnection:
    return await RpcConnection.open("127.0.0.1", srv.port, key, m.Hello(name))


async def test_round_trip_with_bulk(server):
    c = await client(server)
    bulk = bytes(range(256)) * 4096
    reply = await c.call(m.Request(1, "write", "T", {"a": 1}, bulk=bulk), timeout=5)
    assert reply.data == {"op": "write", "args": {"a": 1}, "who": "c1"}
    assert reply.bulk == bulk
    await c.close()


async def test_concurrent_requests_are_not_serialized(server):
    c = await client(server)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    slow = asyncio.create_task(c.call(m.Request(1, "slow", "T"), timeout=5))
    fast = await c.call(m.Request(2, "fast", "T"), timeout=5)
    assert fast.data["op"] == "fast"
    assert not slow.done(), "the quick request must not wait behind the slow one"
    await slow
    assert loop.time() - t0 >= 0.3
    await c.close()


async def test_no_reply_times_out(server):
    c = await client(server)
    with pytest.raises(TimedOut):
        await c.call(m.Request(1, "silent", "T"), timeout=0.2)
    await c.close()


async def raw_frame(srv: RpcServer, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(payload)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()
    return data


def hello_frame(key: bytes = KEY) -> bytes:
    meta, _ = m.encode(m.Hello("raw"))
    return b"".join(encode_frame(key, meta, None))


async def test_forged_hmac_is_rejected_counted_and_others_keep_working(server):
    good = await client(server)
    closed = await raw_frame(server, hello_frame(b"x" * 32))
    assert closed == b"", "the server closes a connection with a forged frame"
    assert server.stats["bad_hmac"] == 1
    reply = await good.call(m.Request(1, "still", "T"), timeout=5)
    assert reply.data["op"] == "still"
    await good.close()


async def test_garbage_is_rejected(server):
    await raw_frame(server, b"\x00\x00\x00\x05\x00\x00\x00\x00" + b"\x01" * 32 + b"junk!")
    assert server.stats["bad_hmac"] == 1  # garbage cannot carry a valid HMAC
    # a correctly signed frame whose body is not a message
    meta = b"\xc1\xc1\xc1"
    await raw_frame(server, b"".join(encode_frame(KEY, meta, None)))
    assert server.stats["bad_frames"] == 1


async def test_oversized_frame_refused_before_body(server):
    header = struct.pack(">II", 10, MAX_BULK + 1) + b"\0" * 32
    data = await raw_frame(server, header)  # no body sent at all: refused on the header
    assert data == b""
    assert server.stats["oversize_frames"] == 1


async def test_request_before_hello_is_rejected(server):
    meta, _ = m.encode(m.Request(1, "x", "T"))
    await raw_frame(server, b"".join(encode_frame(KEY, meta, None)))
    assert server.stats["bad_frames"] == 1


async def test_server_gone_fails_waiters(server):
    c = await client(server)
    task = asyncio.create_task(c.call(m.Request(1, "slow", "T"), timeout=5))
    await asyncio.sleep(0.05)
    await server.close()
    with pytest.raises(NotConnected):
        await task


async def test_read_frame_checks(server):
    reader = asyncio.StreamReader()
    meta, _ = m.encode(m.Hello("x"))
    frame = b"".join(encode_frame(KEY, meta, None))
    reader.feed_data(frame)
    assert (await read_frame(reader, KEY))[0] == meta
    reader2 = asyncio.StreamReader()
    reader2.feed_data(frame[:-1] + bytes([frame[-1] ^ 1]))
    with pytest.raises(AuthFailure):
        await read_frame(reader2, KEY)
    reader3 = asyncio.StreamReader()
    reader3.feed_data(struct.pack(">II", 2 << 20, 0) + b"\0" * 32)
    with pytest.raises(FrameTooLarge):
        await read_frame(reader3, KEY)
    assert HEADER_SIZE == 40


# -- bulks of every size, bad bulk frames, uvloop -----------------------------------------
BULK_SIZES = [0, 1, DIRECT_BULK - 1, DIRECT_BULK, DIRECT_BULK + 1, THREAD_HMAC - 1, THREAD_HMAC,
              4 << 20, MAX_BULK]


async def test_bulks_of_every_size_round_trip(server):
    c = await client(server)
    bulks = [os.urandom(n) if n else None for n in BULK_SIZES]
    replies = await asyncio.gather(*(
        c.call(m.Request(i + 1, "write", "T", {"n": len(b or b"")}, bulk=b), timeout=20)
        for i, b in enumerate(bulks)))
    for bulk, reply in zip(bulks, replies, strict=True):
        assert reply.bulk == bulk
        if bulk:  # usable as bytes: compare, slice, checksum, write to a file
            assert bytes(reply.bulk[:10]) == bulk[:10] and len(reply.bulk) == len(bulk)
            assert zlib.crc32(reply.bulk) == zlib.crc32(bulk)
    assert server.stats["frames_in"] == len(bulks) + 1  # and the hello
    await c.close()


async def test_requests_on_a_connection_are_dispatched_in_order(server):
    """A small request behind a large bulk being verified waits for it."""
    order: list[int] = []

    async def record(conn: ServerConnection, req: m.Request) -> m.Reply:
        order.append(req.xid)
        return m.Reply(req.xid)

    server.handler = record
    c = await client(server)
    big = os.urandom(4 << 20)
    await asyncio.gather(*(c.call(m.Request(x, "w", "T", bulk=big if x % 2 else None), timeout=20)
                           for x in range(1, 9)))
    assert order == list(range(1, 9))
    await c.close()


async def test_forged_bulk_frame_is_rejected_and_counted(server):
    good = await client(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    meta, _ = m.encode(m.Request(1, "write", "T"))
    writer.write(hello_frame() + b"".join(encode_frame(b"x" * 32, meta, os.urandom(2 << 20))))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert server.stats["bad_hmac"] == 1
    assert (await good.call(m.Request(1, "still", "T"), timeout=5)).data["op"] == "still"
    await good.close()


async def test_oversized_meta_refused_before_body(server):
    header = struct.pack(">II", MAX_META + 1, 0) + b"\0" * 32
    assert await raw_frame(server, header) == b""
    assert server.stats["oversize_frames"] == 1


async def test_reply_sent_just_before_close_is_delivered(server):
    async def reply_and_hang_up(conn: ServerConnection, req: m.Request) -> None:
        conn.send(m.Reply(req.xid, bulk=b"z" * (2 << 20)))
        await asyncio.sleep(0.2)  # signed and written; the client may still be verifying it
        conn.close()
        return None

    server.handler = reply_and_hang_up
    c = await client(server)
    reply = await c.call(m.Request(1, "read", "T"), timeout=5)
    assert reply.bulk == b"z" * (2 << 20)
    await asyncio.wait_for(c.wait_closed(), 5)
    await c.close()


async def test_disconnect_is_reported_once(server):
    gone: list[str] = []
    server.on_disconnect = lambda conn: gone.append(conn.client_uuid)
    c = await client(server, name="bye")
    await c.call(m.Request(1, "x", "T"), timeout=5)
    assert len(server.connections) == 1
    await c.close()
    for _ in range(100):
        if gone:
            break
        await asyncio.sleep(0.01)
    assert gone == ["bye"] and not server.connections


def test_on_uvloop():
    """The same transport on the loop every Shoal process runs."""

    async def scenario() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        srv = RpcServer(KEY, echo)
        await srv.start("127.0.0.1", 0)
        c = await client(srv)
        for i, n in enumerate(BULK_SIZES):
            bulk = os.urandom(n) if n else None
            reply = await c.call(m.Request(i, "w", "T", bulk=bulk), timeout=20)
            assert reply.bulk == bulk
        assert await raw_frame(srv, hello_frame(b"x" * 32)) == b""
        assert await raw_frame(srv, struct.pack(">II", 1, MAX_BULK + 1) + b"\0" * 32) == b""
        assert srv.stats["bad_hmac"] == 1 and srv.stats["oversize_frames"] == 1
        await c.close()
        await srv.close()

    loop.run(scenario())
