"""The phases of a failover, from the failover's own events in the store (agent/takeover.py).

The kill, then detect, fenced, the MMP claim (the `start` event's `take_s`), start, the IR
notice to clients (`ir_notify`, from the MGS) and recovered, each phase ending where the next
begins, so detect_s + fence_s + take_s + start_s + notify_s + recover_s = failover_s (kill to
recovered). Used by `shoal bench failover` (workload/bench_failover.py).
"""

from __future__ import annotations

import time

from shoal.agent.events import read_events
from shoal.agent.records import Event
from shoal.net import loop
from shoal.store import open_store

EVENT_WAIT_S = 10.0  # events are written in the background: wait this long for `recovered`

# what each phase ends with, in order; a phase starts where the previous one ended
PHASES = ("detect_s", "fence_s", "take_s", "start_s", "notify_s", "recover_s")
BUDGET_S = {"detect_s": 2.0, "fence_s": 0.2, "take_s": 0.6, "start_s": 0.2, "notify_s": 0.3,
            "recover_s": 0.7, "total_s": 4.0}  # DESIGN.md: Failover sequence, time budget


def phases(events: list[Event], kill: float) -> dict[str, float | None]:
    """Per-phase seconds from a target's failover events after the kill at `kill`.

    Each phase ends at a mark and starts at the previous one: detect, fenced (or the old
    owner found gone without fencing), MMP claimed (fenced + the `start` event's take_s),
    start (location published), IR notice sent, recovered. A missing mark leaves its
    phase None and the next phase starts at the last mark found."""

    def first(*kinds: str) -> Event | None:
        return next((e for e in events if e.time >= kill and e.kind in kinds), None)

    detect = first("detect")
    fenced = first("fenced", "old_owner_released", "old_owner_restarted")
    start = first("start")
    notify = first("ir_notify")
    recovered = first("recovered")
    taken: float | None = None
    if fenced is not None and start is not None:
        take = start.data.get("take_s")
        taken = min(start.time, fenced.time + float(take)) if take is not None else None
    marks: list[tuple[str, float | None]] = [
        ("detect_s", detect.time if detect else None),
        ("fence_s", fenced.time if fenced else None),
        ("take_s", taken),
        ("start_s", start.time if start else None),
        # the MGS may push before the taker writes `start` (it reacts to the location key)
        ("notify_s", max(notify.time, start.time) if notify and start else None),
        ("recover_s", recovered.time if recovered else None),
    ]
    out: dict[str, float | None] = {}
    prev = kill
    for name, at in marks:
        if at is None:
            out[name] = None
            continue
        out[name] = round(max(0.0, at - prev), 3)
        prev = max(prev, at)
    out["failover_s"] = round(recovered.time - kill, 3) if recovered else None
    out["mmp_s"] = start.data.get("mmp_s") if start else None
    out["ir_told"] = notify.data.get("clients") if notify else None
    return out


async def _events(store_url: str, since: float, target: str) -> list[Event]:
    store = open_store(store_url)
    try:
        return await read_events(store, since=since, target=target)
    finally:
        await store.close()


def read_phases(store_url: str, target: str, kill: float) -> dict[str, float | None]:
    """phases() of `target`'s events after the kill at `kill`, read again until the
    `recovered` mark is there or EVENT_WAIT_S have passed."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        events = loop.run(_events(store_url, kill - 1.0, target))
        ph = phases(events, kill)
        if ph["recover_s"] is not None or time.monotonic() > deadline:
            return ph
        time.sleep(0.2)
