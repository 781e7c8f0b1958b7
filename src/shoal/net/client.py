"""RPC client side of one TCP connection to one node, multiplexed by xid.

A connection knows nothing about targets, imports or recovery: it sends a request, waits for
the reply with a deadline that early replies may extend, and fails every waiter with
NotConnected when the connection drops. The import layer above decides what to resend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shoal.errors import NotConnected, ProtocolError, TimedOut
from shoal.net.frame import encode_frame, read_frame
from shoal.protocol import messages as m

log = logging.getLogger(__name__)


class RpcConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        key: bytes,
        peer: str,
        on_notice: Callable[[m.Notice], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._key = key
        self.peer = peer
        self.on_notice = on_notice
        self._waiters: dict[int, asyncio.Future[m.Reply]] = {}
        self._deadlines: dict[int, float] = {}
        self._closed = asyncio.Event()
        self._out: list[bytes] = []
        self._reader_task = asyncio.create_task(self._read_loop())

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
    ) -> RpcConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=1 << 22), timeout)
        except (TimeoutError, OSError) as exc:
            raise NotConnected(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
        conn = cls(reader, writer, key, f"{host}:{port}", on_notice)
        conn._send(hello)
        return conn

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _send(self, msg: m.Message) -> None:
        """Queue a frame; frames queued in one loop iteration go out in one write."""
        if self._writer.is_closing():
            raise NotConnected(f"connection to {self.peer} is closed")
        meta, bulk = m.encode(msg)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.extend(encode_frame(self._key, meta, bulk))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self._writer.is_closing():
            self._writer.writelines(out)

    async def call(self, req: m.Request, timeout: float) -> m.Reply:
        """Send and wait for the reply; TimedOut when the (extendable) deadline passes."""
        if self.closed:
            raise NotConnected(f"connection to {self.peer} is closed")
        fut: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
        self._waiters[req.xid] = fut
        self._deadlines[req.xid] = time.monotonic() + timeout
        try:
            self._send(req)
            try:
                if self._writer.transport.get_write_buffer_size() > (8 << 20):
                    await self._writer.drain()
            except ConnectionError as exc:
                raise NotConnected(f"connection to {self.peer} lost: {exc}") from None
            while True:
                remaining = self._deadlines[req.xid] - time.monotonic()
                if remaining <= 0:
                    raise TimedOut(f"{req.op} to {req.target} via {self.peer}: no reply")
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), remaining)
                except TimeoutError:
                    continue  # re-check: an early reply may have moved the deadline
        finally:
            self._waiters.pop(req.xid, None)
            self._deadlines.pop(req.xid, None)

    async def _read_loop(self) -> None:
        try:
            while True:
                meta, bulk = await read_frame(self._reader, self._key)
                msg = m.decode(meta, bulk)
                if isinstance(msg, m.Reply):
                    fut = self._waiters.get(msg.xid)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif isinstance(msg, m.EarlyReply):
                    if msg.xid in self._deadlines:
                        self._deadlines[msg.xid] += msg.extra
                elif isinstance(msg, m.Notice) and self.on_notice is not None:
                    self.on_notice(msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.warning("bad frame from %s: %s; dropping the connection", self.peer, exc)
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        self._closed.set()
        self._writer.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(NotConnected(f"connection to {self.peer} lost"))

    async def close(self) -> None:
        self._reader_task.cancel()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
        self._fail_all()
