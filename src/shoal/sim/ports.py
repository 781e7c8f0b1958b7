"""What a simulated client and a simulated target see of the world that runs them, and of
each other: narrow interfaces, so that client.py and server.py need not know world.py
(which builds both) nor each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from shoal.protocol.import_state import ReplayEntry
from shoal.protocol.recovery_actions import Action
from shoal.sim.engine import EventLoop, ServerQueue
from shoal.sim.params import ClientPolicy, Scenario
from shoal.sim.records import Counters


class Peer(Protocol):
    """A client as a target answers it (the replies of its requests)."""

    cid: str

    def accepted(self, gen: int, recovering: bool, epoch: int, last_committed: int) -> None:
        ...

    def busy(self, gen: int) -> None: ...

    def refused_evicted(self, gen: int) -> None: ...

    def replay_answered(self, gen: int, entry: ReplayEntry) -> None: ...

    def final_ping_answered(self, gen: int) -> None: ...


class TargetWorld(Protocol):
    """What a target uses of the world: the clock, the node's queue, the network's reply."""

    loop: EventLoop
    queue: ServerQueue
    scenario: Scenario
    policy: ClientPolicy
    counters: Counters
    trace: list[Action] | None

    def reply(self, fn: Callable[..., None], *args: Any) -> None: ...

    def evicted(self, clients: dict[str, Any], cid: str, cause: str) -> None: ...

    def window_aborted(self) -> None: ...


class ClientWorld(Protocol):
    """What a client uses of the world: the clock and the messages it sends."""

    loop: EventLoop
    policy: ClientPolicy
    counters: Counters
    backup: str

    def ping(self, c: Any) -> None: ...

    def send_connect(self, c: Any, nid: str, gen: int, initial: bool, timeout: float) -> None:
        ...

    def send_replay(self, c: Any, entry: ReplayEntry, gen: int) -> None: ...

    def send_final_ping(self, c: Any, gen: int) -> None: ...

    def send_resend(self, c: Any, gen: int) -> None: ...

    def client_resumed(self) -> None: ...
