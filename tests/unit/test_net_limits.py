"""A node's port is open to anyone: connections without the key are bounded in time and
number, and never keep a keyed client out (issue 17)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from shoal.net.client import RpcConnection
from shoal.net.frame import encode_frame
from shoal.net.server import ConnectionLimits, RpcServer, ServerConnection
from shoal.protocol import messages as m

KEY = b"k" * 32
LIMITS = ConnectionLimits(hello_timeout=0.5, frame_stall=0.5, max_unknown=4,
                          max_connections=10, sweep=0.1)


async def echo(conn: ServerConnection, req: m.Request) -> m.Reply:
    return m.Reply(req.xid, data={"who": conn.client_uuid})


@pytest.fixture
async def server():
    srv = RpcServer(KEY, echo, limits=LIMITS)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.close()


async def raw(srv: RpcServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", srv.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def keyed(srv: RpcServer, name: str) -> str:
    c = await RpcConnection.open("127.0.0.1", srv.port, KEY, m.Hello(name))
    try:
        return (await c.call(m.Request(1, "who", "T"), timeout=5)).data["who"]
    finally:
        await c.close()


async def test_a_connection_that_never_says_hello_is_closed(server: RpcServer) -> None:
    reader, writer = await raw(server)
    assert await closed_within(reader, 3.0)
    assert server.stats["hello_timeouts"] == 1 and not server.connections
    writer.close()


async def test_a_frame_that_stops_half_way_is_closed(server: RpcServer) -> None:
    reader, writer = await raw(server)
    meta, _ = m.encode(m.Hello("slow"))
    writer.write(b"".join(encode_frame(KEY, bytes(meta), None)))  # a keyed hello
    # then a header promising 100 bytes of meta, and 10 of them
    writer.write(struct.pack(">II", 100, 0) + bytes(32) + b"x" * 10)
    await writer.drain()
    assert await closed_within(reader, 3.0)
    assert server.stats["stalled_frames"] == 1 and server.stats["hello_timeouts"] == 0
    writer.close()


async def test_strangers_flooding_the_port_do_not_keep_a_keyed_client_out(
        server: RpcServer) -> None:
    strangers = [await raw(server) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert len(server.unknown) <= LIMITS.max_unknown  # the oldest went to make room
    assert server.stats["hello_evicted"] >= 4
    assert await keyed(server, "client-1") == "client-1"
    for _, w in strangers:
        w.close()


async def test_past_the_descriptor_budget_new_connections_are_refused(
        server: RpcServer) -> None:
    held = [await RpcConnection.open("127.0.0.1", server.port, KEY, m.Hello(f"c{i}"))
            for i in range(LIMITS.max_connections)]
    for _ in range(100):  # every one counted first: on a loaded machine 0.1 s was not enough
        if len(server.connections) == LIMITS.max_connections:
            break
        await asyncio.sleep(0.05)
    reader, writer = await raw(server)
    assert await closed_within(reader, 2.0)
    assert server.stats["refused_full"] >= 1
    assert len(server.connections) == LIMITS.max_connections
    for c in held:
        await c.close()
    writer.close()
    await asyncio.sleep(0.1)
    assert await keyed(server, "after") == "after"  # room again once they left


async def test_rejected_frames_are_all_counted_but_warned_of_once_a_while(
        server: RpcServer, caplog: pytest.LogCaptureFixture) -> None:
    """A client with another cluster's key reconnects again and again: one warning."""
    meta, _ = m.encode(m.Hello("wrong-key"))
    for _ in range(5):
        reader, writer = await raw(server)
        writer.write(b"".join(encode_frame(b"x" * 32, bytes(meta), None)))
        await writer.drain()
        assert await closed_within(reader, 2.0)
        writer.close()
    assert server.stats["bad_hmac"] == 5
    warnings = [r for r in caplog.records if "rejecting frame" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
