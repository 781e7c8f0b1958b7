"""RPC client side of one TCP connection to one node, multiplexed by xid.

A connection knows nothing about targets, imports or recovery: it sends a request, waits for
the reply with a deadline that early replies may extend, and fails every waiter with
NotConnected when the connection drops. The import layer above decides what to resend.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from shoal.errors import NotConnected, ProtocolError, Refused, TimedOut
from shoal.net.framing import FrameProtocol
from shoal.net.sink import BulkSink
from shoal.net.writer import FrameWriter
from shoal.protocol import messages as m

log = logging.getLogger(__name__)

SWEEP = 0.05  # seconds between deadline checks: how late a TimedOut may be raised


class _Expired(Exception):
    """A call's deadline passed (set by the sweep, turned into TimedOut by the call)."""


class _ClientProtocol(FrameProtocol):
    def __init__(self, conn: RpcConnection, key: bytes) -> None:
        super().__init__(key)
        self.conn = conn

    def frame_received(self, meta: memoryview | bytes, bulk: bytes | bytearray | None) -> None:
        self.conn._received(m.decode(meta, bulk))  # type: ignore[arg-type]

    def bulk_sink(self, meta: memoryview, nbytes: int) -> BulkSink | None:
        sinks = self.conn._sinks
        return sinks.get(m.peek_reply_xid(meta)) if sinks else None  # type: ignore[arg-type]

    def frame_rejected(self, exc: ProtocolError) -> None:
        log.warning("bad frame from %s: %s; dropping the connection", self.conn.peer, exc)
        self.conn._fail_all()

    def lost(self, exc: Exception | None) -> None:
        self.conn._fail_all()


class RpcConnection:
    def __init__(
        self,
        key: bytes,
        peer: str,
        on_notice: Callable[[m.Notice], None] | None = None,
    ) -> None:
        self._key = key
        self.peer = peer
        self.on_notice = on_notice
        self._waiters: dict[int, asyncio.Future[m.Reply]] = {}
        self._deadlines: dict[int, float] = {}
        self._sinks: dict[int, BulkSink] = {}  # xid -> where its reply's bulk is received
        self._closed = asyncio.Event()
        self._protocol = _ClientProtocol(self, key)
        self._transport: asyncio.Transport | None = None
        self._writer: FrameWriter | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.last_sent = time.monotonic()  # the pinger pings a connection idle for long
        # whether the server ever sent a frame we could verify: a server that closes a new
        # connection without one has most likely refused our hello's HMAC (another key)
        self.heard = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        key: bytes,
        hello: m.Hello,
        *,
        timeout: float = 2.0,
        on_notice: Callable[[m.Notice], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> RpcConnection:
        """Connect (over TLS when `tls` is given: the node's certificate must be valid for
        `host`) and say hello; NotConnected if that fails or takes more than `timeout`."""
        conn = cls(key, f"{host}:{port}", on_notice)
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the inner call completes, and an import's recovery task that
            # was cancelled (IR moved it) must stop, not carry on beside its successor
            async with asyncio.timeout(timeout):
                if tls is None:
                    transport, _ = await loop.create_connection(lambda: conn._protocol, host,
                                                                port)
                else:
                    transport, _ = await loop.create_connection(
                        lambda: conn._protocol, host, port, ssl=tls, server_hostname=host,
                        ssl_handshake_timeout=timeout)
        except ssl.SSLError as exc:
            raise NotConnected(f"cannot connect to {host}:{port}: TLS: "
                               f"{exc.reason or exc}") from None
        except ConnectionRefusedError as exc:
            raise Refused(f"cannot connect to {host}:{port}: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise NotConnected(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
        conn._transport = transport  # type: ignore[assignment]
        conn._writer = FrameWriter(transport, key, tls=tls is not None)  # type: ignore[arg-type]
        conn._send(hello)
        return conn

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _send(self, msg: m.Message) -> None:
        """Queue a frame; frames queued in one loop iteration go out in one write."""
        if self._writer is None or self._writer.transport.is_closing():
            raise NotConnected(f"connection to {self.peer} is closed")
        meta, bulk = m.encode(msg)
        self._writer.send(meta, bulk)

    async def call(self, req: m.Request, timeout: float) -> m.Reply:
        """Send and wait for the reply; TimedOut when the (extendable) deadline passes."""
        if self.closed:
            raise NotConnected(f"connection to {self.peer} is closed")
        fut: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
        self._waiters[req.xid] = fut
        self.last_sent = now = time.monotonic()
        self._deadlines[req.xid] = now + timeout
        if self._sweep_handle is None:
            self._sweep_handle = asyncio.get_running_loop().call_later(SWEEP, self._sweep)
        if req.reply_into is not None:
            self._sinks[req.xid] = req.reply_into
        try:
            self._send(req)
            try:
                await self._protocol.drain()  # waits only with > WRITE_HIGH bytes unsent
            except ConnectionError as exc:
                raise NotConnected(f"connection to {self.peer} lost: {exc}") from None
            try:
                return await fut
            except _Expired:
                raise TimedOut(f"{req.op} to {req.target} via {self.peer}: no reply") from None
        finally:
            self._waiters.pop(req.xid, None)
            self._deadlines.pop(req.xid, None)
            self._sinks.pop(req.xid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed (or expired) while drain() raised: seen, not logged

    def _sweep(self) -> None:
        """Fail the calls whose deadline has passed. One timer per connection, not one per
        call: a timer, a timeout context and a shielded future per RPC cost more than the
        rest of a small call's client side."""
        self._sweep_handle = None
        now = time.monotonic()
        for xid, deadline in self._deadlines.items():
            if deadline <= now:
                fut = self._waiters.get(xid)
                if fut is not None and not fut.done():
                    fut.set_exception(_Expired())
        if self._waiters and not self.closed:
            self._sweep_handle = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    def _received(self, msg: m.Message) -> None:
        self.heard = True
        if isinstance(msg, m.Reply):
            fut = self._waiters.get(msg.xid)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, m.EarlyReply):
            if msg.xid in self._deadlines:
                self._deadlines[msg.xid] += msg.extra
        elif isinstance(msg, m.Notice) and self.on_notice is not None:
            self.on_notice(msg)

    def _fail_all(self) -> None:
        self._closed.set()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        if self._transport is not None:
            self._transport.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(NotConnected(f"connection to {self.peer} lost"))

    async def close(self) -> None:
        self._protocol.stop_reading()
        self._fail_all()
