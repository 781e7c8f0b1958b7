"""net/writer.py FileBulk: a reply's bulk sent from a file by sendfile on a worker thread.

Pinned here, over real sockets on loopback, on both the default loop and uvloop: the bytes
arrive verified under the frame's HMAC; the frames queued after it keep their order; a file
shorter than the bulk sends zeros for the rest; a wrong digest is refused by the receiver;
and the file descriptor is closed and `on_done` called once whether the bulk was sent or the
connection went away first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.errors import NotConnected, TimedOut
from shoal.net import loop
from shoal.net.client import RpcConnection
from shoal.net.frame import bulk_hash, encode_frame
from shoal.net.server import RpcServer, ServerConnection
from shoal.net.writer import FileBulk
from shoal.protocol import messages as m

KEY = b"k" * 32
MiB = 1 << 20


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class FileServer:
    """Answers "read" with a FileBulk of the test's file, "small" with a small bulk."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data = path, data
        self.bulks: list[FileBulk] = []
        self.done: list[FileBulk] = []
        self.wrong_digest = False
        self.srv = RpcServer(KEY, self.handle, now=self.now)

    def file_bulk(self, offset: int, n: int) -> FileBulk:
        fd = os.open(self.path, os.O_RDONLY)
        want = self.data[offset:offset + n].ljust(n, b"\0")
        digest = bulk_hash(want if not self.wrong_digest else want[::-1])
        bulk = FileBulk(fd, offset, n, digest)
        bulk.on_done.append(lambda: self.done.append(bulk))
        self.bulks.append(bulk)
        return bulk

    def now(self, conn: ServerConnection, req: m.Request) -> m.Reply | None:
        if req.op == "read":
            return m.Reply(req.xid, data={}, bulk=self.file_bulk(req.args["off"], req.args["n"]))
        if req.op == "small":
            return m.Reply(req.xid, data={"i": req.args["i"]}, bulk=b"s%d" % req.args["i"])
        return None

    async def handle(self, conn: ServerConnection, req: m.Request) -> m.Reply:
        await asyncio.sleep(3600)  # "hang": never answered
        raise AssertionError


async def connect(fs: FileServer) -> RpcConnection:
    return await RpcConnection.open("127.0.0.1", fs.srv.port, KEY, m.Hello("c1"))


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def both_loops(scenario: Callable[[FileServer], object], tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "object"
    path.write_bytes(data)

    async def run() -> None:
        fs = FileServer(path, data)
        await fs.srv.start("127.0.0.1", 0)
        try:
            await scenario(fs)  # type: ignore[misc]
        finally:
            await fs.srv.close()

    asyncio.run(run())
    loop.run(run())  # uvloop, as every Shoal process runs


def test_file_bulks_arrive_whole_and_in_order(tmp_path: Path) -> None:
    async def scenario(fs: FileServer) -> None:
        c = await connect(fs)
        calls = []
        for i in range(12):  # file reads and small replies interleaved on one connection
            if i % 3 == 0:
                calls.append(c.call(m.Request(i, "small", "T", {"i": i}), timeout=10))
            else:
                off = (i * 3 * MiB) % (20 * MiB)
                calls.append(c.call(m.Request(i, "read", "T", {"off": off, "n": 4 * MiB}),
                                    timeout=10))
        replies = await asyncio.gather(*calls)
        for i, r in enumerate(replies):
            if i % 3 == 0:
                assert r.data == {"i": i} and bytes(r.bulk) == b"s%d" % i
            else:
                off = (i * 3 * MiB) % (20 * MiB)
                assert bytes(r.bulk) == fs.data[off:off + 4 * MiB]
        await c.close()
        # a bulk sent by sendfile is released when its thread's completion reaches the loop,
        # which may be just after the client has read the last byte
        await until(lambda: len(fs.done) == 8)
        assert len(fs.done) == len(fs.bulks) == 8
        assert not any(fd_open(b.fd) for b in fs.bulks) and all(b.fd == -1 for b in fs.bulks)

    both_loops(scenario, tmp_path, 24 * MiB)


def test_past_the_end_of_the_file_is_zeros(tmp_path: Path) -> None:
    async def scenario(fs: FileServer) -> None:
        c = await connect(fs)
        r = await c.call(m.Request(1, "read", "T", {"off": MiB, "n": 2 * MiB}), timeout=10)
        got = bytes(r.bulk)
        assert got[:MiB // 2] == fs.data[MiB:]
        assert got[MiB // 2:] == bytes(2 * MiB - MiB // 2)
        await c.close()

    both_loops(scenario, tmp_path, MiB + MiB // 2)


def test_a_wrong_digest_is_refused_by_the_receiver(tmp_path: Path) -> None:
    async def scenario(fs: FileServer) -> None:
        fs.wrong_digest = True
        c = await connect(fs)
        with pytest.raises((NotConnected, TimedOut)):
            await c.call(m.Request(1, "read", "T", {"off": 0, "n": 2 * MiB}), timeout=2)
        await c.close()
        await until(lambda: len(fs.done) == 1)
        assert fs.bulks[0].fd == -1

    both_loops(scenario, tmp_path, 2 * MiB)


def test_a_bulk_queued_behind_a_closed_connection_is_released(tmp_path: Path) -> None:
    async def scenario(fs: FileServer) -> None:
        c = await connect(fs)
        await until(lambda: bool(fs.srv.connections))
        conn = next(iter(fs.srv.connections))
        conn.transport.close()
        conn.send(m.Reply(7, data={}, bulk=fs.file_bulk(0, MiB)))  # after the close
        await until(lambda: len(fs.done) == 1)
        assert fs.bulks[0].fd == -1
        await c.close()

    both_loops(scenario, tmp_path, MiB)


def test_a_peer_that_stops_reading_then_leaves_releases_every_bulk(tmp_path: Path) -> None:
    async def scenario(fs: FileServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", fs.srv.port)
        for msg in [m.Hello("c1"), *(m.Request(i, "read", "T", {"off": 0, "n": 16 * MiB})
                                     for i in range(3))]:
            meta, bulk = m.encode(msg)
            writer.writelines(encode_frame(KEY, meta, bulk))
        await writer.drain()
        # nothing is read: the first bulk fills the socket and its thread waits, the
        # other two wait behind it
        await until(lambda: len(fs.bulks) == 3)
        await asyncio.sleep(0.2)
        assert not fs.done
        writer.transport.abort()
        await until(lambda: len(fs.done) == 3)
        assert all(b.fd == -1 for b in fs.bulks)

    both_loops(scenario, tmp_path, 16 * MiB)
