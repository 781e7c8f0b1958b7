"""Heartbeat: the node lease and the service leases, renewed from a thread of their own.

Why a thread: a node under the heaviest client load keeps its event loop busy for tens of
milliseconds at a time, and a keepalive queued behind that work could miss its deadline and
cause a false failover. The keepalives run on their own event loop, in their own thread,
with their own store connection, so only a truly stuck process stops them.

And a truly stuck process must stop them: the main loop ticks `loop_alive()` several times a
second; when it has not ticked for `stuck_after` seconds (the health monitor's own limit for
a lagging loop), the heartbeat stops renewing everything, the leases expire, and the backup
fences this node and takes over.

Self-fencing: a lease renewed by a keepalive *sent* at time S is valid in the store until at
least S + TTL. `serving_allowed()` says no from S + TTL - margin on, so the node stops
serving before its lease can expire and a backup act (DESIGN.md invariant 2) — unless the
failsafe holds: the store is unreachable but every partner node answered this node's
failsafe ping within the last TTL, so no partner will take over (invariant 5).

A lease found gone earlier than S + TTL was revoked, not expired. etcd 3.4 does that on its
own: a leader paused for longer than the TTL (a stall, SIGSTOP, a hung disk) wakes up with
every lease's expiry in the past and revokes them all through the new leader before it
steps down (etcd issue 15247, fixed in 3.4.25 and 3.5.8; Debian ships 3.4.23). The loss is
reported at once, so the agent takes its keys back, and serving goes on until S + TTL -
margin: a backup that sees the owner key vanish asks this node before it takes anything,
and hears that it still serves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shoal.errors import LeaseExpired, ShoalError, StoreError
from shoal.net import loop as netloop
from shoal.store import open_store

log = logging.getLogger(__name__)

SELF_FENCE_MARGIN = 0.3  # seconds before the lease's earliest expiry that serving stops
# After a failed renewal the next one goes this soon, not a period later: a link down for
# half a second (a flap) must cost one failed attempt, not the lease (seed 25, rounds 387,
# 495, 527: a renewal timed out, the failsafe probe of silent partners waited out its own
# deadline, and the next renewal came after the node had stopped serving)
RETRY_AFTER_FAILURE = 0.1


@dataclass
class _Tracked:
    lease: int
    valid_until: float  # monotonic: sent-at + TTL of the last successful renewal
    lost: bool = False


class Heartbeat:
    def __init__(self, store_url: str, *, ttl: float, stuck_after: float,
                 failsafe_probe: Callable[[], Awaitable[bool]] | None = None,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.store_url = store_url
        self.ttl = ttl
        self.period = ttl / 3
        self.stuck_after = stuck_after
        self.failsafe_probe = failsafe_probe
        self.on_lost = on_lost
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.Lock()
        self._loop_tick = time.monotonic()
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.store_ok = True
        self.failsafe_until = 0.0
        self.failsafe_logged = False
        self.stuck = False
        self.renewals = 0
        self.failures = 0
        self.max_renew_s = 0.0
        self._probing: asyncio.Task[None] | None = None  # the failsafe probe, on the thread
        self._probed_at = -math.inf

    # -- called from the main loop -------------------------------------------------------
    def start(self) -> None:
        self._main_loop = asyncio.get_running_loop()
        self._loop_tick = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="shoal-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)

    def loop_alive(self) -> None:
        self._loop_tick = time.monotonic()

    def track(self, name: str, lease: int, sent_at: float) -> None:
        """Renew `lease` from now on; it was granted (or last renewed) by a call sent at
        `sent_at` (monotonic)."""
        with self._lock:
            self._tracked[name] = _Tracked(lease, sent_at + self.ttl)

    def untrack(self, name: str) -> int | None:
        with self._lock:
            t = self._tracked.pop(name, None)
        return t.lease if t else None

    def own_leases(self) -> set[int]:
        with self._lock:
            return {t.lease for t in self._tracked.values()}

    def lease(self, name: str) -> int | None:
        with self._lock:
            t = self._tracked.get(name)
            return t.lease if t and not t.lost else None

    def serving_allowed(self, name: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        # a lost lease still counts until the time its renewals earned: it can only be gone
        # before then if someone revoked it, and no backup acts on a missing owner key
        # before this node says it no longer serves (takeover.py)
        return now < self.failsafe_until or self._earned(name, now, lost_too=True)

    def held(self, name: str, now: float | None = None) -> bool:
        """The lease is in the store and renewed: what a takeover needs to go on. A lease
        revoked behind our back (lost) still lets a serving node serve (serving_allowed),
        but a takeover under it stops: its owner key is gone, and another node that asks
        this one while the target is not started yet may take it too."""
        return self._earned(name, time.monotonic() if now is None else now, lost_too=False)

    def _earned(self, name: str, now: float, *, lost_too: bool) -> bool:
        """`now` is before the margin ahead of the lease's earliest expiry."""
        with self._lock:
            t = self._tracked.get(name)
            return (t is not None and (lost_too or not t.lost)
                    and now < t.valid_until - SELF_FENCE_MARGIN)

    def remaining(self, name: str) -> float:
        with self._lock:
            t = self._tracked.get(name)
            return (t.valid_until - time.monotonic()) if t else 0.0

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        loop = netloop.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        # each renewal must finish within a period, and so must its retry on another member
        # when the first one it asks hangs (store/etcd.py)
        store = open_store(self.store_url, timeout=self.period)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                if started - self._loop_tick > self.stuck_after:
                    if not self.stuck:
                        log.error("event loop stuck for %.1fs: no more lease renewals, the "
                                  "backup will fence this node", started - self._loop_tick)
                    self.stuck = True
                else:
                    self.stuck = False
                    await self._renew_all(store, started)
                spent = time.monotonic() - started
                self.max_renew_s = max(self.max_renew_s, spent)
                wait = self.period - spent
                if not self.store_ok and self._within_reach(time.monotonic()):
                    wait = min(wait, RETRY_AFTER_FAILURE)
                await asyncio.sleep(max(0.01, wait))
        finally:
            if self._probing is not None:
                self._probing.cancel()
            await store.close()

    def _within_reach(self, now: float) -> bool:
        """Some lease a renewal can still save (an outage that outlasted them all is
        retried at the usual pace)."""
        with self._lock:
            return any(not t.lost and t.valid_until > now for t in self._tracked.values())

    async def _renew_all(self, store: object, sent_at: float) -> None:
        with self._lock:
            todo = [(n, t.lease) for n, t in self._tracked.items() if not t.lost]
        results = await asyncio.gather(*(self._renew(store, lease) for _, lease in todo),
                                       return_exceptions=True)
        unreachable = False
        for (name, lease), res in zip(todo, results, strict=True):
            if res is None:
                with self._lock:
                    t = self._tracked.get(name)
                    if t is not None and t.lease == lease:
                        t.valid_until = sent_at + self.ttl
                self.renewals += 1
            elif isinstance(res, LeaseExpired):
                log.warning("lease of %s is gone from the store", name)
                with self._lock:
                    t = self._tracked.get(name)
                    if t is not None and t.lease == lease:
                        t.lost = True
                self._notify_lost(name)
            elif isinstance(res, (StoreError, ShoalError, TimeoutError, OSError)):
                unreachable = True
                self.failures += 1
            elif isinstance(res, BaseException):
                raise res
        self.store_ok = not unreachable
        if unreachable:
            # on its own, once a period: the next renewal must not wait for partners that
            # are silent too
            now = time.monotonic()
            if ((self._probing is None or self._probing.done())
                    and now - self._probed_at >= self.period):
                self._probed_at = now
                self._probing = asyncio.create_task(self._failsafe())
        elif self.failsafe_logged:
            # Leave failsafe_until to run out on its own: leases that lapsed during the
            # outage are being taken back by the main loop, and the partners still see
            # this node serving, so nobody else acts in the meantime.
            log.warning("store reachable again: failsafe ends within %.1fs",
                        max(0.0, self.failsafe_until - time.monotonic()))
            self.failsafe_logged = False

    async def _renew(self, store: object, lease: int) -> None:
        async with asyncio.timeout(self.period):
            await store.keepalive(lease)  # type: ignore[attr-defined]

    async def _failsafe(self) -> None:
        if self.failsafe_probe is None:
            return
        probe_at = time.monotonic()
        try:
            ok = await asyncio.wait_for(self.failsafe_probe(), timeout=self.period)
        except (TimeoutError, ShoalError, OSError):
            ok = False
        if ok:
            if not self.failsafe_logged:
                self.failsafe_logged = True
                log.warning("store unreachable, every partner answers: failsafe, keep serving")
            self.failsafe_until = probe_at + self.ttl
        elif self.failsafe_logged:
            self.failsafe_logged = False  # said once; a failsafe that holds again says so
            log.warning("store unreachable and a partner silent: failsafe lapses")

    def _notify_lost(self, name: str) -> None:
        if self.on_lost is not None and self._main_loop is not None:
            try:
                self._main_loop.call_soon_threadsafe(self.on_lost, name)
            except RuntimeError:
                pass  # main loop already closed: the process is exiting
