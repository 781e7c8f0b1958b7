"""GET /metrics over HTTP on the caller's own event loop: a node's (node/metrics.py) or a
mount's (client/metrics.py) Prometheus metrics.

prometheus_client's own server runs in a thread, which would read the node's or client's
dictionaries while its event loop changes them; this serves each scrape on the loop. GET
/metrics only: anything else is 404, and a request head past HEAD_MAX or slower than
HEAD_TIMEOUT is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

HEAD_MAX = 8192
HEAD_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """GET /metrics on one address, served from the running event loop."""

    def __init__(self, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server: asyncio.Server | None = None
        self.url: str | None = None

    async def start(self, address: str, port: int) -> None:
        """Listen; a port that cannot be had is logged, and the caller goes on without."""
        try:
            self._server = await asyncio.start_server(self._client, address, port,
                                                      limit=HEAD_MAX)
        except OSError as exc:
            log.warning("metrics not served on %s:%d: %s", address, port, exc.strerror)
            return
        self.url = f"http://{address}:{port}/metrics"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                body, status = self.render(), b"200 OK"
            else:
                body, status = b"only GET /metrics here\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + CONTENT_TYPE.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # a slow, oversized or vanished client: dropped
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
