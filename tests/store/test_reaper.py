"""The lease reaper: the expiry rule on a fake clock, and the reaper against a real etcd."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from shoal.store import EventType, open_store
from shoal.store.etcd_server import EtcdCluster
from shoal.store.reaper import ExpiryRule, LeaseReaper

pytestmark = pytest.mark.etcd


# -- the rule -----------------------------------------------------------------------------
def test_alive_answers_set_no_deadline() -> None:
    rule = ExpiryRule()
    assert rule.answer(7, 1.0, received=10.0) is None
    assert rule.answer(7, 2.0, received=10.1) is None
    assert not rule.due(7, 100.0)


def test_first_zero_sets_the_deadline_one_second_after_it_arrived() -> None:
    rule = ExpiryRule(margin=0.02)
    assert rule.answer(7, 0.0, received=10.0) == pytest.approx(11.02)
    # a later zero does not push it back: the lease ran out by the first one's bound
    assert rule.answer(7, 0.0, received=10.5) == pytest.approx(11.02)
    assert not rule.due(7, 11.0)
    assert rule.due(7, 11.02)


def test_a_renewal_voids_the_deadline() -> None:
    rule = ExpiryRule()
    rule.answer(7, 0.0, received=10.0)
    assert rule.answer(7, 1.0, received=10.4) is None  # renewed in time after all
    assert not rule.due(7, 12.0)


def test_gone_lease_is_forgotten() -> None:
    rule = ExpiryRule()
    rule.answer(7, 0.0, received=10.0)
    assert rule.answer(7, None, received=10.2) is None
    assert not rule.due(7, 12.0)


# -- against etcd -------------------------------------------------------------------------
async def _deleted_after(cluster: EtcdCluster, ns: str, reap: bool,
                         renew_for: float = 0.0) -> tuple[float, int]:
    """Put a key on a TTL-2 lease, renew it for `renew_for` s, stop; seconds from the last
    renewal to the DELETE, and how many leases the reaper revoked."""
    async with open_store(cluster.url) as holder, open_store(cluster.url) as watcher:
        lease = await holder.grant_lease(2)
        key = f"{ns}k"
        rev = await holder.put(key, b"v", lease=lease.id)
        reaper = LeaseReaper(watcher, ns, poll=0.05)
        task = asyncio.ensure_future(reaper.run()) if reap else None
        try:
            last = time.monotonic()
            end = last + renew_for
            while time.monotonic() < end:
                await asyncio.sleep(0.5)
                await holder.keepalive(lease.id)
                last = time.monotonic()
            async with aclosing(watcher.watch(key, rev + 1)) as events:
                async for ev in events:
                    if ev.type is EventType.DELETE:
                        return time.monotonic() - last, reaper.revoked
        finally:
            if task is not None:
                task.cancel()
    raise AssertionError("no DELETE")


async def test_reaper_never_revokes_before_expiry(etcd_cluster: EtcdCluster, ns: str) -> None:
    """Whoever removes the key (the reaper, or etcd's own tick when it comes first), it is
    never before the TTL has run out since the grant. How much sooner than the tick the
    reaper is shows in `shoal bench store` (detect_s_etcd against detect_s_etcd_tick)."""
    took, revoked = await _deleted_after(etcd_cluster, ns, reap=True)
    assert took >= 2.0 - 0.05
    assert revoked in (0, 1)


async def test_renewed_lease_is_left_alone(etcd_cluster: EtcdCluster, ns: str) -> None:
    """Renewed every 0.5 s for 3 s (longer than the TTL), the lease outlives the reaper's
    watching; it goes only once the renewals stop."""
    took, revoked = await _deleted_after(etcd_cluster, ns, reap=True, renew_for=3.0)
    assert took >= 2.0 - 0.05  # measured from the last renewal, 3 s after the grant
    assert revoked in (0, 1)


async def test_reaper_ignores_keys_it_is_not_asked_about(etcd_cluster: EtcdCluster,
                                                         ns: str) -> None:
    async with open_store(etcd_cluster.url) as s:
        lease = await s.grant_lease(2)
        await s.put(f"{ns}mine", b"v", lease=lease.id)
        reaper = LeaseReaper(s, ns, wanted=lambda kv: not kv.key.endswith("mine"), poll=0.05)
        task = asyncio.ensure_future(reaper.run())
        try:
            await asyncio.sleep(0.3)
            assert reaper.leases == set()
        finally:
            task.cancel()
        await s.revoke_lease(lease.id)
