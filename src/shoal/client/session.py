"""What an import (client/imports.py, client/recovery.py) and the fail point (client/faults.py)
may use of the client that owns them: xids, requests in flight, connections, timeouts. A
narrow interface, so that those modules do not know the Client class (client/client.py),
which builds on them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shoal.net.client import RpcConnection
    from shoal.protocol import messages as m
    from shoal.protocol.adaptive import ATParams
    from shoal.protocol.import_state import ImportStateMachine


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


class FaultPoint(Protocol):
    """The client's fail point, as an RPC passes it (client/faults.py ClientFaults)."""

    async def call(self, conn: RpcConnection, req: m.Request, timeout: float) -> m.Reply: ...


class RecoveringImport(Protocol):
    """What an import's recovery task (client/recovery.py) uses of the import
    (client/imports.py), which owns it: its state machine, its session, and the steps the
    task shares with ordinary requests."""

    target: str
    client: ClientSession
    sm: ImportStateMachine
    faults: FaultPoint

    @property
    def nids(self) -> list[str]: ...

    def notify_changed(self) -> None: ...

    def locks_lost(self) -> None: ...

    def locks_held_over(self) -> None: ...

    def replay_locks(self) -> None: ...

    def data_locks_to_replay(self) -> list[list[Any]] | None: ...

    def data_locks_replayed(self, granted: Any) -> None: ...

    def account_uncommitted(self, before: int) -> None: ...

    def observe_committed(self, last_committed: int) -> None: ...

    def attempt_timeout(self) -> float: ...

    def new_request(self, op: str, args: dict[str, Any], *, target: str | None = None,
                    bulk: bytes | None = None, reply_into: Any = None) -> m.Request: ...

    def evict(self, reason: str, *, from_recovery: bool = False) -> None: ...
