"""Manual control of failover, for `shoal failover|failback`: ask the owner's agent to hand a
target over (commit, stop, hand over: no fencing needed), then follow it to its new node."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shoal.agent.records import (
    HandoverRequest,
    NodeRecord,
    OwnerRecord,
    StateRecord,
    alive_key,
    dump,
    load,
    owner_key,
    request_key,
    state_key,
)
from shoal.errors import InvalidArgument, NotFound, TimedOut
from shoal.node.spec import ClusterSpec
from shoal.store.base import Store


@dataclass(frozen=True, slots=True)
class Handover:
    target: str
    from_node: str
    to_node: str
    seconds: float
    epoch: int


async def handover(store: Store, spec: ClusterSpec, target: str, *, to: str | None = None,
                   by: str = "admin", reason: str = "manual failover",
                   timeout: float = 30.0) -> Handover:
    """Move `target` to `to` (default: the next live node in its failover order) and wait
    until it is UP there."""
    try:
        t = spec.target(target)
    except KeyError:
        raise NotFound(f"no target {target} (targets: "
                       f"{', '.join(x.name for x in spec.targets)})") from None
    kv = await store.get(owner_key(target))
    owner = load(OwnerRecord, kv.value) if kv else None
    if owner is None:
        raise NotFound(f"{target} is not served by any node: nothing to hand over "
                       "(see `shoal status`)")
    if to is None:
        for n in t.nodes[t.nodes.index(owner.node) + 1:] + t.nodes[:t.nodes.index(owner.node)]:
            if await store.get(alive_key(n)) is not None:
                to = n
                break
        else:
            raise NotFound(f"{target}: no other node of {', '.join(t.nodes)} is alive")
    if to not in t.nodes:
        raise InvalidArgument(f"{to} cannot serve {target} (failover nodes: "
                              f"{', '.join(t.nodes)})")
    if to == owner.node:
        raise InvalidArgument(f"{target} is already served by {to}")
    alive = await store.get(alive_key(to))
    if alive is None or load(NodeRecord, alive.value) is None:
        raise NotFound(f"{to} is not alive: it cannot take {target}")
    t0 = time.monotonic()
    await store.put(request_key(target), dump(HandoverRequest(to, by, time.time(), reason)))
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        kv = await store.get(state_key(target))
        st = load(StateRecord, kv.value) if kv else None
        okv = await store.get(owner_key(target))
        new_owner = load(OwnerRecord, okv.value) if okv else None
        if st and new_owner and new_owner.node == to and st.node == to and st.state == "UP":
            return Handover(target, owner.node, to, time.monotonic() - t0, st.epoch)
        await asyncio.sleep(0.05)
    raise TimedOut(f"{target} did not come up on {to} within {timeout:.0f}s "
                   "(see `shoal events`)")
