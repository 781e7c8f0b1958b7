"""Revoke expired etcd leases at once instead of on etcd's next expiry tick.

etcd (3.4 and 3.5) looks for expired leases every 500 ms, so a dead holder's keys vanish up
to half a second after its lease ran out: on a TTL of 2 s that is a quarter of the failover
budget's detect step, spent waiting. A watcher that cares can do better from outside:

LeaseTimeToLive answers the seconds left, truncated to a whole number, so while the holder
renews every TTL/3 a TTL-2 lease always reads 1. The first answer of 0 says less than a
second is left: the lease ran out at the latest one second after that answer arrived (the
server computed it before we received it). At that moment the lease is expired by etcd's own
rule (an expired lease cannot be renewed; a renewal waits for its revocation), so revoking
it then only does what etcd's tick would do later. One more look just before revoking skips
a lease that was renewed in time after all.

`ExpiryRule` is that reasoning, with the times passed in; `LeaseReaper` runs it against a
store for the leases of the keys it is asked to watch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.errors import StoreError
from shoal.store.base import KeyValue, Store

log = logging.getLogger(__name__)


@dataclass
class ExpiryRule:
    """When a lease must have expired, from LeaseTimeToLive answers (whole seconds)."""

    margin: float = 0.02  # clock-rate and rounding slack: never revoke early
    deadlines: dict[int, float] = field(default_factory=dict)

    def answer(self, lease: int, ttl: float | None, received: float) -> float | None:
        """An answer of `ttl` (None: gone) arrived at `received`: the time to revoke the
        lease at, or None while it is alive (or already gone)."""
        if ttl is None:
            self.deadlines.pop(lease, None)
            return None
        if ttl >= 1:
            self.deadlines.pop(lease, None)  # renewed: any earlier deadline is void
            return None
        # less than a second left when the server answered, which was before `received`
        return self.deadlines.setdefault(lease, received + 1.0 + self.margin)

    def due(self, lease: int, now: float) -> bool:
        at = self.deadlines.get(lease)
        return at is not None and now >= at

    def forget(self, lease: int) -> None:
        self.deadlines.pop(lease, None)


class LeaseReaper:
    """Poll the leases of the keys under `prefixes` that `wanted` picks; revoke each as soon
    as it must have expired (see the module docstring). Runs until cancelled."""

    def __init__(self, store: Store, prefixes: str | tuple[str, ...], *,
                 wanted: Callable[[KeyValue], bool] = lambda kv: True,
                 poll: float = 0.1, refresh: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
        self.wanted = wanted
        self.poll = poll
        self.refresh = refresh
        self.clock = clock
        self.rule = ExpiryRule()
        self.leases: set[int] = set()
        self.revoked = 0

    async def run(self) -> None:
        last_refresh = -1e9
        while True:
            now = self.clock()
            if now - last_refresh >= self.refresh:
                last_refresh = now
                await self._refresh()
            if self.leases:
                await asyncio.gather(*(self._look(lease) for lease in list(self.leases)))
            await asyncio.sleep(self._next_wait())

    def _next_wait(self) -> float:
        wait = self.poll
        now = self.clock()
        for at in self.rule.deadlines.values():
            wait = min(wait, max(at - now, 0.0))
        return wait

    async def _refresh(self) -> None:
        kvs: list[KeyValue] = []
        try:
            for prefix in self.prefixes:
                kvs += (await self.store.range(prefix))[0]
        except StoreError as exc:
            log.debug("lease reaper: cannot list %s: %s", self.prefixes, exc)
            return
        self.leases = {kv.lease for kv in kvs if kv.lease and self.wanted(kv)}
        for lease in list(self.rule.deadlines):
            if lease not in self.leases:
                self.rule.forget(lease)

    async def _look(self, lease: int) -> None:
        sent = self.clock()
        try:
            ttl = await self.store.lease_ttl(lease)
        except StoreError as exc:
            log.debug("lease reaper: lease %x: %s", lease, exc)
            return
        now = self.clock()
        if self.rule.due(lease, sent) and ttl is not None and ttl < 1:
            # asked after the deadline, and still not renewed: it expired unrenewed, and an
            # expired lease can no longer be renewed
            try:
                await self.store.revoke_lease(lease)
            except StoreError as exc:
                log.debug("lease reaper: revoke %x: %s", lease, exc)
                return
            self.revoked += 1
            self.rule.forget(lease)
            self.leases.discard(lease)
            log.info("lease reaper: revoked expired lease %x", lease)
            return
        if self.rule.answer(lease, ttl, now) is None and ttl is None:
            self.leases.discard(lease)
