"""What `shoal status` shows, read from the store: nodes alive, dead or fenced; each target's
owner, backups, state, epoch and since when; the latest events."""

from __future__ import annotations

import time
from typing import Any

from shoal.agent.events import read_events
from shoal.agent.records import (
    STOPPING_KEY,
    FenceRecord,
    NodeRecord,
    OwnerRecord,
    StateRecord,
    alive_key,
    fenced_key,
    load,
    owner_key,
    state_key,
)
from shoal.node.spec import ClusterSpec
from shoal.store.base import ROOT, Store, target_key

STALE_FAILOVER = 30.0  # a FAILING_OVER with no owner for this long is shown as DOWN


def target_state(owner: OwnerRecord | None, state: StateRecord | None, admin: str,
                 *, now: float) -> str:
    if owner is not None:
        return state.state if state is not None and state.node == owner.node \
            and state.state in ("UP", "RECOVERING") else "FAILING_OVER"
    if admin == "stopped" or (state is not None and state.state == "STOPPED"):
        return "STOPPED"
    if state is not None and state.state == "FAILING_OVER" and now - state.since < STALE_FAILOVER:
        return "FAILING_OVER"
    return "DOWN"


async def read_status(store: Store, spec: ClusterSpec, *, events: int = 10) -> dict[str, Any]:
    kvs, rev = await store.range(ROOT + "/nodes/")
    tkvs, _ = await store.range(ROOT + "/targets/")
    by_key = {kv.key: kv for kv in [*kvs, *tkvs]}
    stopping = await store.get(STOPPING_KEY) is not None
    now = time.time()

    def rec(cls: type, key: str) -> Any:
        kv = by_key.get(key)
        return load(cls, kv.value) if kv is not None else None

    nodes = []
    for n in spec.nodes:
        alive: NodeRecord | None = rec(NodeRecord, alive_key(n))
        fenced: FenceRecord | None = rec(FenceRecord, fenced_key(n))
        state = "alive" if alive else ("fenced" if fenced else "dead")
        nodes.append({"name": n, "state": state, "address": spec.nids[n],
                      "boot_id": alive.boot_id if alive else None,
                      "up_since": alive.started_at if alive else None,
                      "fenced_by": fenced.by if fenced and not alive else None,
                      "fenced_at": fenced.at if fenced and not alive else None})
    targets = []
    for t in spec.targets:
        owner: OwnerRecord | None = rec(OwnerRecord, owner_key(t.name))
        st: StateRecord | None = rec(StateRecord, state_key(t.name))
        admin_kv = by_key.get(target_key(t.name, "admin_state"))
        admin = admin_kv.value.decode(errors="replace") if admin_kv else "enabled"
        okv = by_key.get(owner_key(t.name))
        state = target_state(owner, st, admin, now=now)
        reason = st.reason if st else ""
        if state == "DOWN":
            node_states = {n["name"]: n["state"] for n in nodes}
            if all(node_states.get(n) != "alive" for n in t.nodes):
                reason = "no node of its failover pair is alive (" + ", ".join(
                    f"{n} {node_states.get(n, 'dead')}" for n in t.nodes) + ")"
            elif not reason or (st is not None and st.state != "DOWN"):
                reason = "owner lost; waiting for a takeover"
        targets.append({
            "name": t.name, "kind": t.kind,
            "owner": owner.node if owner else None,
            "backup": [n for n in t.nodes if n != (owner.node if owner else t.primary)],
            "nodes": list(t.nodes),
            "state": state,
            "epoch": st.epoch if st and st.epoch else None,
            "since": st.since if st else None,
            "reason": reason,
            "token": okv.create_revision if okv else None,
            "admin_state": admin,
        })
    recent = [{"time": e.time, "node": e.node, "kind": e.kind, "target": e.target,
               "detail": e.detail} for e in await read_events(store, limit=events)]
    return {"revision": rev, "stopping": stopping, "nodes": nodes, "targets": targets,
            "events": recent}
