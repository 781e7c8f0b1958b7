"""Every lease revoked at once while every node is healthy, as etcd 3.4 does when its leader
wakes from a pause longer than the TTL (etcd issue 15247): in the rig one such pause in four
took every owner key and node key away, and a backup fenced a healthy owner that had stopped
serving on its lost lease. Nothing may move: the owners serve on for the time their renewals
earned, take their keys back, and the backups, asking them first, hear that they serve."""

from __future__ import annotations

import asyncio
import time

import pytest

from shoal.cluster.local import LocalCluster
from shoal.store import open_store
from tests.scenarios.harness import Load, assert_clean, events, targets, wait_for

pytestmark = pytest.mark.timeout(120)


async def revoke_every_lease(url: str) -> int:
    store = open_store(url)
    try:
        kvs, _ = await store.range("/shoal/")
        leases = {kv.lease for kv in kvs if kv.lease}
        for lease in leases:
            await store.revoke_lease(lease)
        return len(leases)
    finally:
        await store.close()


def test_every_lease_revoked_under_load_moves_nothing(cl: LocalCluster) -> None:
    owners = {n: t["owner"] for n, t in targets(cl).items()}
    t0 = time.time()
    load = Load(cl, duration=8.0)
    time.sleep(2.0)
    revoked = [asyncio.run(revoke_every_lease(cl.spec.store_url))]
    wait_for("owner keys back", lambda: all(t["owner"] for t in targets(cl).values()))
    time.sleep(1.5)
    revoked.append(asyncio.run(revoke_every_lease(cl.spec.store_url)))
    assert_clean(load.result())
    assert min(revoked) >= len(owners) + len(cl.spec.nodes), revoked  # owner and node keys
    wait_for("every target UP", lambda: all(t["state"] == "UP" for t in targets(cl).values()))
    assert {n: t["owner"] for n, t in targets(cl).items()} == owners
    seen = events(cl, t0)
    assert not [e for e in seen if e.kind in ("take", "fence_start")], seen
    assert all(cl.pid(n) is not None for n in cl.spec.nodes), "a node was fenced"
    back = [e.target for e in seen if e.kind == "reacquired"]
    assert sorted(back) == sorted(2 * list(owners)), back  # each owner key, twice
