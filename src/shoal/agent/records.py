"""What the failover agents keep in the store, and under which keys (DESIGN.md: Store layout).

    /shoal/nodes/<node>/alive            NodeRecord, on the node's heartbeat lease
    /shoal/nodes/<node>/fenced           FenceRecord: who fenced it, when, how (no lease)
    /shoal/targets/<target>/owner        OwnerRecord, on the owner's service lease; the key's
                                         create revision is the fencing token (MMP)
    /shoal/targets/<target>/state        StateRecord: UP | RECOVERING | FAILING_OVER | DOWN |
                                         STOPPED, who, since when, why (no lease)
    /shoal/targets/<target>/location     LocationRecord: NID + epoch, what IR pushes
    /shoal/targets/<target>/request      HandoverRequest: `shoal failover|failback`
    /shoal/settings/cluster_stopping/<fs>  present while `shoal down` stops that file
                                         system's nodes; on a lease (STOPPING_TTL), so a
                                         `down` that died leaves nothing behind
    /shoal/settings/fs_down/<fs>         present while an administrator keeps that file
                                         system stopped (`shoal down` through the store:
                                         its daemons stay up for the others); `shoal start`
                                         deletes it. Not a flag of a command that may die:
                                         the state asked for, as Pacemaker's target-role
    /shoal/events/<ns>-<node>-<n>        Event

Values are JSON so `shoal store get` shows them to a person as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from shoal.store.base import ROOT, node_alive_key, settings_key, target_key

STATES = ("UP", "RECOVERING", "FAILING_OVER", "DOWN", "STOPPED")
NODES_PREFIX = f"{ROOT}/nodes/"
TARGETS_PREFIX = f"{ROOT}/targets/"
EVENTS_PREFIX = f"{ROOT}/events/"
STOPPING_TTL = 60.0  # seconds: far longer than a `shoal down` takes, short enough to heal


def stopping_key(fs: str) -> str:
    """Per file system: stopping one leaves every other file system in the store alone."""
    return settings_key("cluster_stopping", fs)

def fs_down_key(fs: str) -> str:
    return settings_key("fs_down", fs)


R = TypeVar("R")


def dump(record: Any) -> bytes:
    return json.dumps(asdict(record), sort_keys=True).encode()


def load(cls: type[R], raw: bytes) -> R | None:
    """The record in a value, or None if it is not one (a hand-edited or foreign value)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    kinds = {f.name: _KINDS.get(str(f.type)) for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in data.items() if k in kinds}
    for k, v in values.items():
        kind = kinds[k]
        # a hand-edited value of the wrong type is not a record (bool is an int: refuse it)
        if kind is not None and (not isinstance(v, kind) or (isinstance(v, bool)
                                                             and bool not in kind)):
            return None
    try:
        return cls(**values)
    except TypeError:
        return None


_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "dict[str, Any]": (dict,),
}


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node: str
    nid: str
    pid: int
    boot_id: str  # one per process start: tells a restarted node from its old self
    started_at: float


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    node: str
    nid: str
    boot_id: str
    lease: int


@dataclass(frozen=True, slots=True)
class StateRecord:
    state: str
    node: str  # the owner, or the last owner for DOWN / FAILING_OVER / STOPPED
    since: float
    epoch: int = 0
    reason: str = ""
    clean: bool = False  # the last owner stopped it cleanly: no fencing needed to take it
    to: str = ""  # handover: the node that should take it; FAILING_OVER: who is taking it
    boot_id: str = ""  # the owner's process incarnation (a restarted owner is a dead owner)


@dataclass(frozen=True, slots=True)
class LocationRecord:
    target: str
    node: str
    nid: str
    epoch: int
    version: int  # the owner key's revision: newer locations have larger versions


@dataclass(frozen=True, slots=True)
class FenceRecord:
    node: str
    by: str
    method: str
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HandoverRequest:
    to: str  # "" = the next node in failover order
    by: str
    at: float
    reason: str = "manual failover"


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    node: str
    kind: str
    target: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def owner_key(target: str) -> str:
    return target_key(target, "owner")


def state_key(target: str) -> str:
    return target_key(target, "state")


def location_key(target: str) -> str:
    return target_key(target, "location")


def request_key(target: str) -> str:
    return target_key(target, "request")


def fenced_key(node: str) -> str:
    return f"{NODES_PREFIX}{node}/fenced"


def alive_key(node: str) -> str:
    return node_alive_key(node)


def split_target_key(key: str) -> tuple[str, str] | None:
    """(target, leaf) for a key under /shoal/targets/, else None."""
    if not key.startswith(TARGETS_PREFIX):
        return None
    target, _, leaf = key[len(TARGETS_PREFIX):].partition("/")
    return (target, leaf) if target and leaf else None


def split_node_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(NODES_PREFIX):
        return None
    node, _, leaf = key[len(NODES_PREFIX):].partition("/")
    return (node, leaf) if node and leaf else None
