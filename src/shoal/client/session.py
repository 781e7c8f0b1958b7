"""What an import (client/imports.py, client/recovery.py) and the fail point (client/faults.py)
may use of the client that owns them: xids, requests in flight, connections, timeouts. A
narrow interface, so that those modules do not know the Client class (client/client.py),
which builds on them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shoal.net.client import RpcConnection
    from shoal.protocol.adaptive import ATParams


class ClientSession(Protocol):
    uuid: str
    at_params: ATParams
    request_timeout: float | None  # a fixed RPC timeout instead of adaptive ones
    connect_timeout: float
    recovery_timeout: float
    uncommitted_bytes: int  # acknowledged but not committed, over every import
    inflight: set[int]  # xids of requests sent and not answered

    def next_xid(self) -> int: ...

    def known_xid(self) -> int: ...

    async def connection(self, nid: str) -> RpcConnection: ...

    def node_said(self, nid: str, data: dict[str, Any]) -> None: ...

    def ping_soon(self, nid: str) -> None: ...
