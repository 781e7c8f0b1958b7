"""What `shoal status` shows, read from the store: nodes alive, dead or fenced; each target's
owner, backups, state, epoch and since when; the latest events."""

from __future__ import annotations

import time
from typing import Any

from shoal.agent.events import read_events
from shoal.agent.records import (
    NODES_PREFIX,
    TARGETS_PREFIX,
    OwnerRecord,
    StateRecord,
    fs_down_key,
    stopping_key,
)
from shoal.agent.view import ClusterView
from shoal.node.spec import ClusterSpec
from shoal.store.base import Store

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
    view = ClusterView()
    kvs, rev = await store.range(NODES_PREFIX)
    tkvs, _ = await store.range(TARGETS_PREFIX)
    flags = [kv for key in (stopping_key(spec.fs), fs_down_key(spec.fs))
             if (kv := await store.get(key)) is not None]
    view.kvs = {kv.key: kv for kv in [*kvs, *tkvs, *flags]}
    now = time.time()
    nodes = []
    for n in spec.nodes:
        alive, fenced = view.alive(n), view.fenced(n)
        state = "alive" if alive else ("fenced" if fenced else "dead")
        nodes.append({"name": n, "state": state, "address": spec.nids[n],
                      "boot_id": alive.boot_id if alive else None,
                      "up_since": alive.started_at if alive else None,
                      "fenced_by": fenced.by if fenced and not alive else None,
                      "fenced_at": fenced.at if fenced and not alive else None})
    node_states = {n["name"]: n["state"] for n in nodes}
    targets = []
    for t in spec.targets:
        found = view.owner(t.name)
        owner, okv = found if found is not None else (None, None)
        st = view.state(t.name)
        admin = view.admin_state(t.name)
        state = target_state(owner, st, admin, now=now)
        reason = st.reason if st else ""
        if state == "DOWN":
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
               "detail": e.detail, "data": e.data}
              for e in await read_events(store, limit=events)]
    return {"revision": rev, "stopping": view.stopping(spec.fs),
            "fs_down": view.fs_down(spec.fs), "nodes": nodes, "targets": targets,
            "events": recent}
