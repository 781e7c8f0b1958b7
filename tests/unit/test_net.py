"""The RPC transport: round trips, and bad input rejected without hurting other clients."""

from __future__ import annotations

import asyncio
import struct

import pytest

from shoal.errors import AuthFailure, FrameTooLarge, NotConnected, TimedOut
from shoal.net.client import RpcConnection
from shoal.net.frame import HEADER_SIZE, MAX_BULK, encode_frame, read_frame
from shoal.net.server import RpcServer, ServerConnection
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
