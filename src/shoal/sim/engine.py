"""The discrete-event core: a heap of timed callbacks, a server's request queue, the network.

Virtual time is a float (seconds since the server died); nothing here reads a clock. Events
at the same instant run in the order they were scheduled (a sequence number breaks ties), so
a run is deterministic for a given seed. A server is a FIFO queue in front of `workers`
identical workers: a request that arrives at `t` starts when a worker is free and holds it
for its service time. Because requests are served in arrival order, the finish time is known
on arrival, so the queue needs no events of its own.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class EventLoop:
    """Timed callbacks in virtual time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.events = 0
        self.stopped = False  # set by stop(): the run ends after the current event

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) at virtual time t (never before now: the past cannot be changed)."""
        now = self.now
        heapq.heappush(self._heap, (t if t > now else now, next(self._seq), fn, args))

    def after(self, dt: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (self.now + dt, next(self._seq), fn, args))

    def stop(self) -> None:
        self.stopped = True

    def run(self, until: float, tick: Callable[[float], None] | None = None,
            max_events: int | None = None) -> bool:
        """Run events until none is left, virtual time passes `until` or `max_events` have
        run; `tick(now)` is called every 20,000 events (the CLI's progress bar). Returns
        whether it stopped early (time or events left)."""
        heap = self._heap
        pop = heapq.heappop
        limit = self.events + max_events if max_events is not None else None
        while heap:
            if self.stopped or (limit is not None and self.events >= limit):
                return True
            t, _, fn, args = pop(heap)
            if t > until:
                heapq.heappush(heap, (t, 0, fn, args))
                return True
            self.now = t
            fn(*args)
            self.events += 1
            if tick is not None and self.events % 20_000 == 0:
                tick(t)
        return False

    @property
    def pending(self) -> int:
        return len(self._heap)


class ServerQueue:
    """A node's request service: FIFO, `workers` at once (Shoal's node is one event loop:
    one worker; a Lustre OSS runs many service threads on many cores)."""

    def __init__(self, loop: EventLoop, workers: int) -> None:
        self.loop = loop
        self._free = [0.0] * workers  # a heap of when each worker is next free
        self.busy_s = 0.0
        self.served = 0
        self.max_wait = 0.0

    def serve(self, cost: float, fn: Callable[..., None], *args: Any) -> float:
        """Queue a request arriving now that takes `cost` seconds of a worker; fn(*args)
        runs when it is done. Returns the finish time."""
        return self.serve_at(self.loop.now, cost, fn, *args)

    def serve_at(self, now: float, cost: float, fn: Callable[..., None], *args: Any) -> float:
        """The same for a request that will arrive at `now` (on its way: the sender knows
        when it lands, and messages on one path keep their order)."""
        free = self._free[0]
        start = free if free > now else now
        done = start + cost
        heapq.heapreplace(self._free, done)
        self.busy_s += cost
        self.served += 1
        if start - now > self.max_wait:
            self.max_wait = start - now
        self.loop.at(done, fn, *args)
        return done

    def backlog(self) -> float:
        """Seconds of work queued ahead of a request arriving now."""
        return max(0.0, self._free[0] - self.loop.now)


@dataclass(frozen=True)
class Network:
    """One-way latency, bandwidth for payloads, and the chance that a message is lost."""

    latency_s: float
    bandwidth_Bps: float
    loss: float = 0.0

    def delay(self, nbytes: int = 0) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps

    def lost(self, rng: random.Random) -> bool:
        return self.loss > 0 and rng.random() < self.loss
