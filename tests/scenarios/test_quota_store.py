"""Issue 23: the quota limits are kept in the store too (agent/quota_limits.py). Once a
setquota has committed on MDT0, the node serving it copies the limits there; a node that
starts MDT0 from a device that lost them (restored from an older backup) takes the copy."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from shoal.agent.quota_limits import limits_key
from shoal.client import quota
from shoal.client.client import Client
from shoal.cluster.local import LocalCluster
from shoal.store import open_store
from shoal.target.base import DB_FILE
from tests.scenarios.harness import wait_for

pytestmark = pytest.mark.timeout(120)
UID = 4242


def test_a_device_that_lost_its_limits_takes_the_stores_copy(cl: LocalCluster) -> None:
    async def set_limits() -> None:
        async with Client.from_cluster_dir(cl.dir) as c:
            await quota.set_quota(c, "u", UID, bhard=1000, ihard=10)
            await quota.set_grace(c, "u", 3600, 7200)

    async def copied() -> dict | None:
        store = open_store(cl.spec.store_url)
        try:
            kv = await store.get(limits_key("scratch"))
        finally:
            await store.close()
        return None if kv is None else json.loads(kv.value)

    asyncio.run(set_limits())
    wait_for("the limits copied to the store",
             lambda: (asyncio.run(copied()) or {}).get("version", 0) >= 2, timeout=30)
    snap = asyncio.run(copied())
    assert snap is not None and [r[:6] for r in snap["limits"]] == [["u", UID, 0, 1000, 0, 10]]
    cl.down()
    # MDT0's device as an older backup has it: no limits yet
    for dev in cl.spec.target("scratch-MDT0000").devices.values():
        db_file = Path(dev) / DB_FILE
        if db_file.exists():
            db = sqlite3.connect(db_file)
            db.execute("DELETE FROM quota_limits")
            db.execute("DELETE FROM quota_grace")
            db.execute("DELETE FROM quota_meta")
            db.commit()
            db.close()
    cl.up(timeout=60)

    async def after() -> quota.QuotaReport:
        async with Client.from_cluster_dir(cl.dir) as c:
            return await quota.get_quota(c, "u", UID)

    r = asyncio.run(after())
    assert (r.limits.bhard, r.limits.ihard) == (1000, 10)
    assert (r.bgrace, r.igrace) == (3600, 7200)
