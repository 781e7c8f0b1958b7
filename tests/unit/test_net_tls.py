"""TLS on Shoal's RPC (net/tls.py, issue 17), over real sockets on loopback, on the default
loop and on uvloop (every Shoal process runs uvloop): requests and file bulks go through
encrypted (a relay that records the wire sees none of a request's words); a plain peer, a
peer that trusts another CA, and a node whose certificate names another address are refused;
a handshake that never comes is closed at the hello deadline; the per-address limit holds;
and every connection is counted out when it goes, however it went."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shoal.errors import ConfigError, NotConnected
from shoal.net import loop
from shoal.net.client import RpcConnection
from shoal.net.frame import bulk_hash
from shoal.net.server import ConnectionLimits, RpcServer, ServerConnection
from shoal.net.tls import rpc_tls
from shoal.net.writer import FileBulk
from shoal.protocol import messages as m
from shoal.rig.certs import CertAuthority
from tests.unit.test_net_filebulk import until

KEY = b"k" * 32
SECRET_WORD = "plaintext-marker-4b1d"
LIMITS = ConnectionLimits(hello_timeout=0.5, frame_stall=0.5, max_unknown=8,
                          max_connections=50, max_per_peer=3, sweep=0.1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = CertAuthority(d / "ca")
    node = ca.issue("node", ips=["127.0.0.1"])
    elsewhere = ca.issue("elsewhere", ips=["127.0.0.2"])
    other = CertAuthority(d / "other", "another CA")
    return {"ca": ca.ca, "cert": node.cert, "key": node.key, "other_ca": other.ca,
            "elsewhere_cert": elsewhere.cert, "elsewhere_key": elsewhere.key}


def settings(pki: dict[str, Path], cert: str = "cert", key: str = "key",
             ca: str = "ca") -> dict[str, str]:
    return {"RPC_TLS": "yes", "TLS_CA": str(pki[ca]), "TLS_CERT": str(pki[cert]),
            "TLS_KEY": str(pki[key])}


class Node:
    """Echoes requests; "file" answers with a FileBulk of `path`."""

    def __init__(self, tls: ssl.SSLContext | None, path: Path | None = None) -> None:
        self.path = path
        self.srv = RpcServer(KEY, self.handle, limits=LIMITS, tls=tls)

    async def handle(self, conn: ServerConnection, req: m.Request) -> m.Reply:
        if req.op == "file":
            assert self.path is not None
            data = self.path.read_bytes()
            fd = os.open(self.path, os.O_RDONLY)
            return m.Reply(req.xid, data={}, bulk=FileBulk(fd, 0, len(data), bulk_hash(data)))
        return m.Reply(req.xid, data={"echo": req.args.get("word", "")})


class Relay:
    """A TCP relay that keeps every byte that crosses it."""

    def __init__(self, port: int) -> None:
        self.port_to, self.seen = port, bytearray()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.port_to)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                self.seen += data
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)


def both_loops(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]
    loop.run(scenario())  # type: ignore[arg-type]


def test_requests_and_file_bulks_cross_encrypted(pki: dict[str, Path], tmp_path: Path) -> None:
    blob = tmp_path / "object"
    blob.write_bytes(os.urandom(3 << 20) + SECRET_WORD.encode() * 100)
    tls = rpc_tls(settings(pki), serve=True)
    assert tls is not None and tls.server is not None

    async def scenario() -> None:
        for use_tls in (True, False):
            node = Node(tls.server if use_tls else None, blob)
            await node.srv.start("127.0.0.1", 0)
            relay = Relay(node.srv.port)
            port = await relay.start()
            c = await RpcConnection.open("127.0.0.1", port, KEY, m.Hello("c1"),
                                         tls=tls.client if use_tls else None)
            reply = await c.call(m.Request(1, "echo", "T", {"word": SECRET_WORD}), timeout=5)
            assert reply.data == {"echo": SECRET_WORD}
            reply = await c.call(m.Request(2, "file", "T"), timeout=10)
            assert bytes(reply.bulk) == blob.read_bytes()
            await c.close()
            await until(lambda n=node: not n.srv.connections)  # counted out when it went
            assert not node.srv.per_peer
            # the control run shows that the relay would have seen the words
            assert (SECRET_WORD.encode() in relay.seen) is (not use_tls)
            relay.server.close()
            await node.srv.close()

    both_loops(scenario)


def test_wrong_peers_are_refused(pki: dict[str, Path]) -> None:
    tls = rpc_tls(settings(pki), serve=True)
    foreign = rpc_tls(settings(pki, ca="other_ca"))
    misnamed = rpc_tls(settings(pki, cert="elsewhere_cert", key="elsewhere_key"), serve=True)
    assert tls is not None and foreign is not None and misnamed is not None

    async def refused(server_tls: ssl.SSLContext | None, client_tls: ssl.SSLContext | None,
                      why: str) -> RpcServer:
        node = Node(server_tls)
        await node.srv.start("127.0.0.1", 0)
        try:
            c = await RpcConnection.open("127.0.0.1", node.srv.port, KEY, m.Hello("c1"),
                                         tls=client_tls, timeout=2)
            with pytest.raises(NotConnected):  # a plain hello is no TLS handshake
                await c.call(m.Request(1, "echo", "T"), timeout=3)
        except NotConnected as exc:
            assert why in str(exc), exc
        await until(lambda: not node.srv.connections)
        await node.srv.close()
        return node.srv

    async def scenario() -> None:
        srv = await refused(tls.server, None, "")
        assert srv.stats["tls_failed"] == 1
        await refused(None, tls.client, "cannot connect")
        await refused(tls.server, foreign.client, "CERTIFICATE_VERIFY_FAILED")
        await refused(misnamed.server, tls.client, "CERTIFICATE_VERIFY_FAILED")

    both_loops(scenario)


def test_a_handshake_that_never_comes_and_the_per_address_limit(pki: dict[str, Path]) -> None:
    tls = rpc_tls(settings(pki), serve=True)
    assert tls is not None and tls.server is not None

    async def scenario() -> None:
        node = Node(tls.server)
        await node.srv.start("127.0.0.1", 0)
        silent = [await asyncio.open_connection("127.0.0.1", node.srv.port) for _ in range(3)]
        await until(lambda: len(node.srv.connections) == 3)
        # a fourth from the same address is refused, while the three wait
        with pytest.raises(NotConnected):
            c = await RpcConnection.open("127.0.0.1", node.srv.port, KEY, m.Hello("c1"),
                                         tls=tls.client, timeout=1)
            await c.call(m.Request(1, "echo", "T"), timeout=2)
        assert node.srv.stats["refused_peer"] >= 1
        # the silent ones are closed at the hello deadline, their handshake never begun
        for r, _ in silent:
            assert await asyncio.wait_for(r.read(1), 3) == b""
        await until(lambda: not node.srv.connections and not node.srv.per_peer)
        c = await RpcConnection.open("127.0.0.1", node.srv.port, KEY, m.Hello("c1"),
                                     tls=tls.client)
        assert (await c.call(m.Request(1, "echo", "T", {"word": "x"}), timeout=5)).data
        await c.close()
        for _, w in silent:
            w.close()
        await node.srv.close()

    both_loops(scenario)


def test_settings_name_what_is_missing(pki: dict[str, Path], tmp_path: Path) -> None:
    assert rpc_tls({}) is None and rpc_tls({"RPC_TLS": "no"}) is None
    with pytest.raises(ConfigError, match="RPC_TLS is on but TLS_CA is not set"):
        rpc_tls({"RPC_TLS": "yes"})
    with pytest.raises(ConfigError, match=f"TLS_CERT={tmp_path}/none.pem: no such file"):
        rpc_tls({**settings(pki), "TLS_CERT": f"{tmp_path}/none.pem"}, serve=True)
    assert rpc_tls({**settings(pki), "TLS_CERT": ""}) is not None  # a client needs the CA only
    bad = tmp_path / "garbage.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="TLS_CA=.*garbage.pem"):
        rpc_tls({**settings(pki), "TLS_CA": str(bad)})
