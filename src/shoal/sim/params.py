"""What a simulated failover is made of: the records a preset fills in (sim/presets.py).

Every field is in seconds, bytes or counts. A preset says where each number comes from;
these records only give them names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from shoal.protocol.adaptive import ATParams
from shoal.sim.engine import Network

Fault = Literal["kill", "power-off"]


@dataclass(frozen=True)
class ServerModel:
    """The backup node's request service (a queue in front of `workers`), the MGS's IR
    fan-out, and the dead server's state before it died."""

    workers: int  # requests served at once
    connect_s: float  # service time of one connect request
    replay_recv_s: float  # receiving a replay and queueing it in transno order
    replay_s: float  # running one replay (ServerRecovery's Execute)
    ping_s: float  # a final ping (replay_done), or answering one the window held
    io_s: float  # an ordinary request: the resend that ends a client's recovery
    acked_ops_s: float  # writes the dead server acknowledged per second before it died
    commit_interval_s: float  # its journal commit interval: what was not committed is replayed
    notify_s: float  # the MGS's cost of one IR notice (sent one after another)


@dataclass(frozen=True)
class WindowModel:
    """protocol/recovery.py's ServerRecovery arguments, and when the window opens."""

    soft_s: float
    hard_s: float
    ir_factor: int
    reach_s: float  # without IR, the least the window waits for idle clients
    from_first_connect: bool  # Lustre opens it at the first reconnect; Shoal at the start
    ask_period_s: float | None  # IR: how often the target asks the MGS who is dead (None: never)
    dead_bound_s: float  # protocol/presence.py: closed this long ago is dead


@dataclass(frozen=True)
class ClientPolicy:
    """How a client finds the target again (client/recovery.py's loop, or Lustre's)."""

    ir: bool  # the client acts on IR notices
    at: ATParams  # adaptive timeouts (at_max 0: off, fixed_timeout_s is used)
    fixed_timeout_s: float | None  # obd_timeout when AT is off
    service_estimate_s: float  # what the server reported in its last reply before the death
    ping_interval_s: float  # an idle client's ping period (how it notices a silent server)
    connect_timeout_s: float
    connect_timeout_inc_s: float  # added after each full round over the NIDs (Lustre)
    connect_timeout_max_s: float
    backoff_min_s: float  # after a full round of NIDs failed; doubles up to backoff_max_s
    backoff_max_s: float
    busy_backoff_s: float  # EBUSY: the target is recovering without this client
    replay_window: int  # replays in flight per import
    retry_dead_first: bool  # the first reconnect goes to the same (dead) NID again


@dataclass(frozen=True)
class AgentTimeline:
    """From the server's death to the target started on the backup and clients told."""

    detect_s: float
    fence_s: float
    take_s: float
    start_s: float


@dataclass(frozen=True)
class Workload:
    """What the clients were doing when the server died."""

    active: float = 1.0  # fraction of clients with a request in flight (the rest idle)
    silent: float = 0.0  # fraction of idle clients that do not ping (Lustre's suppress_pings)
    client_ops_s: float = 200.0  # writes one active client issues per second at most
    commit_age: float = 0.5  # how far into a commit interval the death came (0..1)
    replay_bytes: int = 4096  # payload of one replay
    dead: float = 0.0  # fraction of known clients dead at the failure (they never return)
    dead_closed_s: float | None = 0.0  # when their MGS link closed (None: hung, no evidence)
    replays_per_client: int | None = None  # every client holds this many (None: from the rate)


@dataclass(frozen=True)
class Scenario:
    """One preset, one fault, one workload: everything a run needs but the client count."""

    name: str
    fault: Fault
    targets: int  # targets of the dead server, all moving to the one backup
    network: Network
    server: ServerModel
    window: WindowModel
    client: ClientPolicy
    agent: AgentTimeline
    workload: Workload = field(default_factory=Workload)
    budget: dict[str, float] = field(default_factory=dict)  # per phase, when there is one

    def but(self, **changes: object) -> Scenario:
        """A copy with some fields replaced (sweeps); nested records by `section__field`."""
        flat = {k: v for k, v in changes.items() if "__" not in k}
        out = replace(self, **flat)  # type: ignore[arg-type]
        for key, value in changes.items():
            if "__" in key:
                section, name = key.split("__", 1)
                out = replace(out, **{section: replace(getattr(out, section),
                                                       **{name: value})})
        return out
