"""What the agent does next about one target: a pure function of a snapshot and the time.

`decide(snapshot)` returns one action (take, release, re-acquire, supersede, mark DOWN, or
wait) from what the agent's view of the store says, this node's own state, and the clocks
the snapshot carries; it reads no clock and touches nothing. FailoverAgent._reconcile builds
the snapshot and carries the action out (agent/takeover.py). The rules of who may take a
target that has no owner are agent/policy.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.agent import policy
from shoal.agent.records import HandoverRequest, OwnerRecord, StateRecord

SICK_CHECKS = 2  # consecutive unhealthy checks before a node lets a target go


@dataclass(frozen=True, slots=True)
class Snapshot:
    target: str
    nodes: tuple[str, ...]  # failover order, the primary first
    me: str
    boot_id: str  # this process's
    now: float  # monotonic
    wall: float  # time.time(): node records carry wall-clock start times
    booted_for: float  # seconds this agent has run
    boot_grace: float
    busy: bool  # a step on this target is under way here
    hosted: bool  # this node serves the target
    owner: OwnerRecord | None
    state: StateRecord | None
    alive: frozenset[str]  # nodes of the pair with a heartbeat
    primary_started_at: float | None  # wall clock start of the primary's running instance
    stopping: bool  # every file system the target serves is being stopped
    fs_down: bool  # ... or is down (shoal down --fs)
    admin_state: str
    retry_at: float  # monotonic: no new attempt before
    store_ok: bool
    problem: str | None  # the health check's complaint about the service here
    sick: int  # consecutive unhealthy checks before this one
    request: HandoverRequest | None
    failback: str  # "off" | "auto"
    failback_delay: float
    auto_failover_blocked: str | None  # why an automatic failover may not happen, if so


@dataclass(frozen=True, slots=True)
class Wait:
    why: str = ""


@dataclass(frozen=True, slots=True)
class Take:
    why: str


@dataclass(frozen=True, slots=True)
class MarkDown:
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    reason: str
    to: str = ""
    final: str = "FAILING_OVER"
    alert: str = ""  # an unhealthy service: said as an alert first


@dataclass(frozen=True, slots=True)
class Reacquire:
    pass


@dataclass(frozen=True, slots=True)
class Supersede:
    why: str


Action = Wait | Take | MarkDown | Release | Reacquire | Supersede


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    sick: int  # the count of consecutive unhealthy checks to keep for the next one


def decide(s: Snapshot) -> Decision:
    if s.busy:
        return Decision(Wait("a step is under way"), s.sick)
    if s.hosted:
        return _hosted(s)
    return Decision(_unowned(s), s.sick)


def _unowned(s: Snapshot) -> Action:
    if s.owner is not None:
        return Wait(f"{s.owner.node} owns it")
    if s.stopping:
        return Wait("stopping")
    if s.admin_state != "enabled":
        return Wait(f"admin state {s.admin_state}")
    if s.now < s.retry_at:
        return Wait("retry later")
    choice = policy.preferred_taker(s.nodes, set(s.alive), s.state, booted_for=s.booted_for,
                                    boot_grace=s.boot_grace)
    if choice.taker != s.me:
        return Wait(choice.why)
    if s.state is not None and policy.needs_failover(s.state, s.me) \
            and s.auto_failover_blocked:
        why = s.auto_failover_blocked
        if s.state.state != "DOWN" or s.state.reason != why:
            return MarkDown(s.state.node, why)
        return Wait(why)
    return Take(choice.why)


def _hosted(s: Snapshot) -> Decision:
    if s.fs_down:
        return Decision(Release("file system stopped (shoal down)", final="STOPPED"), s.sick)
    if s.owner is None:
        if s.stopping or not s.store_ok:
            # failsafe: keep serving, take the key back when the store returns
            return Decision(Wait("owner key gone, store away"), s.sick)
        if s.now >= s.retry_at:
            return Decision(Reacquire(), s.sick)
        return Decision(Wait("retry later"), s.sick)
    if s.owner.node != s.me or s.owner.boot_id != s.boot_id:
        return Decision(Supersede(f"{s.owner.node} owns {s.target} now"), s.sick)
    sick = s.sick + 1 if s.problem else 0
    others = any(n in s.alive for n in s.nodes if n != s.me)
    if s.problem and sick >= SICK_CHECKS and others:
        return Decision(Release(f"unhealthy: {s.problem}", alert=s.problem), sick)
    if s.request is not None and s.request.to != s.me:
        return Decision(Release(s.request.reason, to=s.request.to), sick)
    primary = s.nodes[0]
    if s.failback == "auto" and primary != s.me and s.primary_started_at is not None \
            and s.wall - s.primary_started_at >= s.failback_delay:
        return Decision(Release("automatic failback", to=primary), sick)
    return Decision(Wait("serving"), sick)
