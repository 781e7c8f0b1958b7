"""RPC server: accepts connections, verifies frames, hands requests to a handler.

Each connection is a FrameProtocol (net/framing.py): frames are parsed as bytes arrive, a
large bulk is received straight into its own buffer, and each request runs in its own task so
a slow request (a 4 MiB read) does not hold up a quick one (a stat) on the same connection. A
bad frame (forged HMAC, garbage, oversized) is counted, logged and closes that connection
only. While more than WRITE_HIGH bytes of replies wait in a connection's transport, handlers
wait in drain() and no further requests are read from it.

Anyone who can reach the port can open connections, key or not, so they are bounded
(ConnectionLimits): a connection must say hello (an HMAC-verified frame) within
`hello_timeout`; a frame begun must go on arriving (`frame_stall`); at most `max_unknown`
connections may be waiting for their hello, the oldest going when one more comes; and at
most `max_connections` in all, kept below the process's file descriptor limit so the node's
own files (devices, journals, MMP blocks) always have some, and at most `max_per_peer` from
one address. Before these limits, 19,995 idle connections without a key took a node to its
20,000 descriptors, its MMP updates failed and its targets failed over.

With TLS (net/tls.py) a connection is admitted as above first and then upgraded, the
handshake counting against its hello deadline.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.config.settings import value as setting
from shoal.errors import AuthFailure, BadMessage, Busy, FrameTooLarge, ProtocolError
from shoal.net.framing import FrameProtocol
from shoal.net.writer import FileBulk, FrameWriter
from shoal.protocol import messages as m

log = logging.getLogger(__name__)


FD_RESERVE = 512  # descriptors kept for the node's own files, whatever clients do
REJECT_LOG_EVERY = 10.0  # seconds between warnings of rejected frames from one address


def _fd_budget() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, soft - FD_RESERVE)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    hello_timeout: float = 5.0  # seconds from accept to a verified hello
    frame_stall: float = 10.0  # seconds a half-received frame may go without a byte
    max_unknown: int = 256  # connections waiting for their hello
    max_connections: int = field(default_factory=_fd_budget)
    max_per_peer: int = 1024  # connections from one address
    sweep: float = 1.0  # how often the limits are checked

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ConnectionLimits:
        """The limits the settings ask for (config/settings.py), within the descriptors
        the process has."""
        wanted = int(setting(settings, "MAX_CONNECTIONS"))
        budget = _fd_budget()
        return cls(hello_timeout=setting(settings, "HELLO_TIMEOUT"),
                   max_unknown=int(setting(settings, "MAX_STRANGERS")),
                   max_connections=min(wanted, budget) if wanted else budget,
                   max_per_peer=int(setting(settings, "MAX_PEER_CONNECTIONS")))


@dataclass(eq=False)
class ServerConnection:
    """One client's TCP connection to this node."""

    transport: asyncio.Transport
    protocol: _ServerProtocol
    key: bytes
    peer: str
    client_uuid: str = ""
    client_nid: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writer: FrameWriter = field(init=False)
    admitted: bool = False  # counted in the server's connections and per-address counts

    def __post_init__(self) -> None:
        self.writer = FrameWriter(self.transport, self.key)

    @property
    def host(self) -> str:
        return self.peer.rsplit(":", 1)[0]

    def upgraded(self, transport: asyncio.Transport) -> None:
        """The connection now runs over TLS on `transport`."""
        self.transport = transport
        self.writer = FrameWriter(transport, self.key, tls=True)

    def send(self, msg: m.Message) -> None:
        """Queue a frame; frames queued in one loop iteration go out in one write."""
        if self.transport.is_closing():
            bulk = getattr(msg, "bulk", None)
            if type(bulk) is FileBulk:
                bulk.release()
            return
        meta, bulk = m.encode(msg)
        self.writer.send(meta, bulk)

    async def drain(self) -> None:
        """Wait while too many replies are queued in the transport (not on a lost peer)."""
        try:
            await self.protocol.drain()
        except ConnectionError:
            pass

    def close(self) -> None:
        self.protocol.stop_reading()
        self.transport.close()

    @property
    def closed(self) -> bool:
        return self.transport.is_closing()


Handler = Callable[[ServerConnection, m.Request], Awaitable[m.Reply | None]]
# Called first, in the protocol callback: the reply at once, an awaitable for it (the
# request is being served and must finish in a task), or None: `Handler` takes it instead.
# A task per request costs more than serving most requests does.
NowHandler = Callable[[ServerConnection, m.Request], "m.Reply | Awaitable[m.Reply] | None"]


# What a peer gets before its hello proves it holds the key: a receive buffer and a frame
# just big enough for a hello, so that 256 strangers cost 2 MiB, not 64 (RECV_BUF each).
STRANGER_BUF = 8 << 10
STRANGER_MAX_META = 4 << 10
STASH_MAX = 16 << 10  # bytes of a TLS handshake kept before the TLS layer takes over
_STASH_BUF = bytearray(4096)  # one for the process: the loop reads into it, then we copy


class _ServerProtocol(FrameProtocol):
    def __init__(self, server: RpcServer) -> None:
        super().__init__(server.key, recv_buf=STRANGER_BUF, max_meta=STRANGER_MAX_META,
                         max_bulk=0)
        self.server = server
        self.conn: ServerConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        peer = transport.get_extra_info("peername")
        self.conn = ServerConnection(self.transport, self, self.server.key,
                                     f"{peer[0]}:{peer[1]}" if peer else "?")
        if self.server.admit(self.conn) and self.server.tls is not None:
            self.stash = bytearray()
            task = asyncio.get_running_loop().create_task(self.server._start_tls(self.conn))
            self.conn.tasks.add(task)
            task.add_done_callback(self.conn.tasks.discard)

    # Until loop.start_tls puts its TLS layer in front of us, what arrives is the start of
    # the handshake: it is kept (pausing is not enough: uvloop starts reading a new
    # connection after connection_made) and handed to the TLS layer (_start_tls).
    stash: bytearray | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.stash is not None:
            return memoryview(_STASH_BUF)
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.stash is None:
            return super().buffer_updated(nbytes)
        self.stash += _STASH_BUF[:nbytes]
        if len(self.stash) > STASH_MAX and self.transport is not None:
            self.transport.close()  # no TLS client says that much before the server speaks
        return None

    def frame_received(self, meta: memoryview | bytes, bulk: bytes | bytearray | None) -> None:
        msg = m.decode(meta, bulk)  # type: ignore[arg-type]
        server, conn = self.server, self.conn
        assert conn is not None
        server.stats["frames_in"] += 1
        if isinstance(msg, m.Request):
            if not conn.client_uuid:
                raise BadMessage("request before hello")
            now = server.now(conn, msg) if server.now is not None else None
            if isinstance(now, m.Reply):
                conn.send(now)  # backpressure: pause_writing stops reading new requests
                return
            task = asyncio.create_task(server._dispatch(conn, msg, now))
            conn.tasks.add(task)
            task.add_done_callback(conn.tasks.discard)
        elif isinstance(msg, m.Hello):
            conn.client_uuid, conn.client_nid = msg.client_uuid, msg.client_nid
            self.trust()
            server.unknown.pop(conn, None)
        else:
            raise BadMessage(f"unexpected {type(msg).__name__}")

    def frame_rejected(self, exc: ProtocolError) -> None:
        assert self.conn is not None
        self.server._reject(self.conn, exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.transport is not None:
            self.transport.pause_reading()  # no new requests while the replies back up

    def resume_writing(self) -> None:
        super().resume_writing()
        self.last_data = time.monotonic()  # a stall is counted from when we read again
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn is None:
            return
        self.server.release(conn)
        conn.writer.abort()
        if self.server.on_disconnect is not None:
            self.server.on_disconnect(conn)


def _feed(protocol: asyncio.BaseProtocol, data: bytearray) -> None:
    """Hand `data` to a TLS layer as if the transport had read it (both asyncio's and
    uvloop's read into buffers they lend, uvloop's without being a BufferedProtocol)."""
    view = memoryview(data)
    while view:
        buf = protocol.get_buffer(len(view))  # type: ignore[attr-defined]
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)  # type: ignore[attr-defined]
        view = view[n:]


class RpcServer:
    def __init__(self, key: bytes, handler: Handler, *, now: NowHandler | None = None,
                 limits: ConnectionLimits | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.key = key
        self.tls = tls
        self.handler = handler
        self.now = now
        self.limits = limits or ConnectionLimits()
        self.stats: Counter[str] = Counter()
        self.connections: set[ServerConnection] = set()
        self.per_peer: Counter[str] = Counter()  # address -> connections from it
        # connections without a hello yet, oldest first, with when they were accepted
        self.unknown: dict[ServerConnection, float] = {}
        self._rejected: dict[str, tuple[float, int]] = {}  # host -> (last warning, since)
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.on_disconnect: Callable[[ServerConnection], None] | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _ServerProtocol(self), host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Busy(f"{host}:{port} is in use: another process (this node's daemon "
                           "already running?) listens there; two daemons never share a "
                           "port") from None
            raise
        self._sweeper = loop.call_later(self.limits.sweep, self._sweep)

    def admit(self, conn: ServerConnection) -> bool:
        """A new connection: refused if the node is full or its address has its share, and
        it makes room among the connections still waiting for their hello by closing the
        oldest. Whether it was admitted."""
        lim = self.limits
        if len(self.connections) >= lim.max_connections:
            self.stats["refused_full"] += 1
            conn.close()
            return False
        if self.per_peer[conn.host] >= lim.max_per_peer:
            self.stats["refused_peer"] += 1
            self._warn(conn.host, f"refusing a connection from {conn.host}: it has "
                       f"{lim.max_per_peer} already (MAX_PEER_CONNECTIONS)")
            conn.close()
            return False
        if len(self.unknown) >= lim.max_unknown:
            oldest = next(iter(self.unknown))
            self._drop(oldest, "hello_evicted", "too many connections without a hello")
        conn.admitted = True
        self.connections.add(conn)
        self.per_peer[conn.host] += 1
        self.unknown[conn] = time.monotonic()
        self.stats["connections"] += 1
        return True

    def release(self, conn: ServerConnection) -> None:
        """A connection is gone (once for each admitted one, however it ended)."""
        self.connections.discard(conn)
        self.unknown.pop(conn, None)
        if conn.admitted:
            conn.admitted = False
            left = self.per_peer[conn.host] - 1
            if left > 0:
                self.per_peer[conn.host] = left
            else:
                del self.per_peer[conn.host]

    async def _start_tls(self, conn: ServerConnection) -> None:
        assert self.tls is not None
        loop = asyncio.get_running_loop()
        plain = conn.transport
        upgrade = asyncio.ensure_future(loop.start_tls(
            plain, conn.protocol, self.tls, server_side=True,
            ssl_handshake_timeout=self.limits.hello_timeout))
        # One turn of the loop: start_tls has run up to its first await, so its TLS layer is
        # the transport's protocol (its connection_made and resume_reading are queued, and
        # what we queue now runs after them, before anything more is read).
        await asyncio.sleep(0)
        stash, conn.protocol.stash = conn.protocol.stash, None
        if stash and not plain.is_closing():
            loop.call_soon(_feed, plain.get_protocol(), stash)
        transport = None
        try:
            transport = await upgrade
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            self.stats["tls_failed"] += 1
            self._warn(conn.host, f"TLS handshake with {conn.peer} failed: {exc}")
        finally:
            if transport is None or transport.is_closing():
                # failed, cancelled, or closed meanwhile (the hello deadline): the TLS layer
                # may never tell us, so the connection is counted out here
                plain.close()
                self.release(conn)
        if transport is None or transport.is_closing():
            return
        conn.upgraded(transport)  # type: ignore[arg-type]
        conn.protocol.rebind(transport)

    def _drop(self, conn: ServerConnection, stat: str, why: str) -> None:
        self.stats[stat] += 1
        log.debug("closing the connection from %s (%s): %s", conn.peer,
                  conn.client_uuid or "no hello", why)
        self.unknown.pop(conn, None)
        conn.close()

    def _sweep(self) -> None:
        lim = self.limits
        now = time.monotonic()
        late = [c for c, t in self.unknown.items() if now - t > lim.hello_timeout]
        for conn in late:
            self._drop(conn, "hello_timeouts", f"no hello within {lim.hello_timeout:g}s")
        # (not while we stopped reading it ourselves, its replies backing up)
        for conn in [c for c in self.connections if c.protocol.mid_frame
                     and not c.protocol.write_paused
                     and now - c.protocol.last_data > lim.frame_stall]:
            self._drop(conn, "stalled_frames",
                       f"a frame stalled for {now - conn.protocol.last_data:.0f}s")
        self._sweeper = asyncio.get_running_loop().call_later(lim.sweep, self._sweep)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
            for t in conn.tasks:
                t.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _reject(self, conn: ServerConnection, exc: ProtocolError) -> None:
        if isinstance(exc, AuthFailure):
            kind = "bad_hmac"
        elif isinstance(exc, FrameTooLarge):
            kind = "oversize_frames"
        else:
            kind = "bad_frames"
        self.stats[kind] += 1
        self._warn(conn.host, f"rejecting frame from {conn.peer} "
                   f"({conn.client_uuid or 'no hello'}): {exc}; closing the connection")

    def _warn(self, host: str, text: str) -> None:
        """One warning per address and REJECT_LOG_EVERY, however fast it retries (a client
        with another cluster's key reconnects for minutes)."""
        now = time.monotonic()
        last, quiet = self._rejected.get(host, (-REJECT_LOG_EVERY, 0))
        if now - last < REJECT_LOG_EVERY:
            self._rejected[host] = (last, quiet + 1)
            return
        if len(self._rejected) > 4096:
            self._rejected.clear()
        self._rejected[host] = (now, 0)
        more = f" ({quiet} more from there since the last warning)" if quiet else ""
        log.warning("%s%s", text, more)

    async def _dispatch(self, conn: ServerConnection, req: m.Request,
                        started: Awaitable[m.Reply] | None = None) -> None:
        reply = await (started if started is not None else self.handler(conn, req))
        if reply is not None:
            conn.send(reply)
            await conn.drain()
