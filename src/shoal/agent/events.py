"""The cluster's event log: every step of a failover, with its time, in the store.

An agent writes an event for each step (detect, fence, take, start, recover, ...), so a
failover's timeline can be read back by `shoal events`, from any machine that reaches the
store, after the fact. Writing an event never blocks or fails the step it describes: when the
store is unreachable the event is logged locally and dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from shoal.agent.records import EVENTS_PREFIX, Event, dump, load
from shoal.errors import StoreError
from shoal.store.base import Store

log = logging.getLogger("shoal.events")

KEEP_EVENTS = 5000  # older events are pruned by whoever writes past this many


class EventLog:
    def __init__(self, store: Store, node: str) -> None:
        self.store = store
        self.node = node
        self._n = itertools.count()
        self._pending: set[asyncio.Task[None]] = set()
        self._written = 0
        self.counts: Counter[str] = Counter()  # events emitted here, by kind (the metrics)
        self.on_emit: list[Callable[[Event], None]] = []  # told of each (agent/alerts.py)

    def emit(self, kind: str, target: str = "", detail: str = "", **data: Any) -> Event:
        """Record an event now (timestamped now); the store write runs in the background."""
        event = Event(time.time(), self.node, kind, target, detail, data)
        self.counts[kind] += 1
        for hook in self.on_emit:
            hook(event)
        log.info("event %s %s %s", kind, target, detail)
        key = f"{EVENTS_PREFIX}{time.time_ns():020d}-{self.node}-{next(self._n)}"
        task = asyncio.get_running_loop().create_task(self._write(key, event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return event

    async def _write(self, key: str, event: Event) -> None:
        try:
            await self.store.put(key, dump(event))
            self._written += 1
            if self._written % 500 == 0:
                await prune(self.store)
        except StoreError as exc:
            log.warning("event %s not stored: %s", event.kind, exc)

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


async def read_events(store: Store, *, since: float = 0.0, target: str | None = None,
                      limit: int | None = None) -> list[Event]:
    kvs, _ = await store.range(EVENTS_PREFIX)
    events = [e for kv in kvs if (e := load(Event, kv.value)) is not None]
    events = [e for e in events if e.time >= since and (target is None or e.target == target)]
    events.sort(key=lambda e: e.time)
    return events[-limit:] if limit else events


async def prune(store: Store, keep: int = KEEP_EVENTS) -> int:
    kvs, _ = await store.range(EVENTS_PREFIX)
    old = kvs[:-keep] if len(kvs) > keep else []
    for kv in old:
        await store.delete(kv.key)
    return len(old)


async def record(store: Store, node: str, kind: str, target: str = "", detail: str = "",
                 **data: Any) -> Event:
    """Write one event now (for tools: fault injection, administrators' actions)."""
    event = Event(time.time(), node, kind, target, detail, data)
    await store.put(f"{EVENTS_PREFIX}{time.time_ns():020d}-{node}-x", dump(event))
    return event
