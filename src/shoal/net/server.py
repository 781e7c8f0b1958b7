"""RPC server: accepts connections, verifies frames, hands requests to a handler.

One task per connection reads frames; each request runs in its own task so a slow request
(a 4 MiB read) does not hold up a quick one (a stat) on the same connection. A bad frame
(forged HMAC, garbage, oversized) is counted, logged and closes that connection only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shoal.errors import AuthFailure, BadMessage, FrameTooLarge, ProtocolError
from shoal.net.frame import encode_frame, read_frame
from shoal.protocol import messages as m

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServerConnection:
    """One client's TCP connection to this node."""

    writer: asyncio.StreamWriter
    key: bytes
    peer: str
    client_uuid: str = ""
    client_nid: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _out: list[bytes] = field(default_factory=list)

    def send(self, msg: m.Message) -> None:
        """Queue a frame; frames queued in one loop iteration go out in one write."""
        if self.writer.is_closing():
            return
        meta, bulk = m.encode(msg)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.extend(encode_frame(self.key, meta, bulk))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.writer.is_closing():
            self.writer.writelines(out)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError:
            pass

    def close(self) -> None:
        self.writer.close()

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()


Handler = Callable[[ServerConnection, m.Request], Awaitable[m.Reply | None]]


class RpcServer:
    def __init__(self, key: bytes, handler: Handler) -> None:
        self.key = key
        self.handler = handler
        self.stats: Counter[str] = Counter()
        self.connections: set[ServerConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self.on_disconnect: Callable[[ServerConnection], None] | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=1 << 22)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
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
        log.warning("rejecting frame from %s (%s): %s; closing the connection",
                    conn.peer, conn.client_uuid or "no hello", exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = ServerConnection(writer, self.key, f"{peer[0]}:{peer[1]}" if peer else "?")
        self.connections.add(conn)
        self.stats["connections"] += 1
        try:
            while True:
                try:
                    meta, bulk = await read_frame(reader, self.key)
                    msg = m.decode(meta, bulk)
                except ProtocolError as exc:
                    self._reject(conn, exc)
                    return
                self.stats["frames_in"] += 1
                if isinstance(msg, m.Hello):
                    conn.client_uuid, conn.client_nid = msg.client_uuid, msg.client_nid
                elif isinstance(msg, m.Request):
                    if not conn.client_uuid:
                        self._reject(conn, BadMessage("request before hello"))
                        return
                    task = asyncio.create_task(self._dispatch(conn, msg))
                    conn.tasks.add(task)
                    task.add_done_callback(conn.tasks.discard)
                else:
                    self._reject(conn, BadMessage(f"unexpected {type(msg).__name__}"))
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connections.discard(conn)
            writer.close()
            if self.on_disconnect is not None:
                self.on_disconnect(conn)

    async def _dispatch(self, conn: ServerConnection, req: m.Request) -> None:
        reply = await self.handler(conn, req)
        if reply is not None:
            conn.send(reply)
            await conn.drain()
