"""agent/quota_limits.py against a real SQLite store and an in-process MDT0 (found in review,
session 24): a copy in the store that is not well formed never stops MDT0 from starting and
changes nothing; a copy of another timeline (the store unread when this instance started)
never comes back over limits the device acknowledged since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.agent.quota_limits import LimitsCopy, limits_key
from shoal.store import open_store
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client, open_mdt


@pytest.mark.parametrize("copy", [
    b'{"version": 99}', b'{"version": Infinity, "limits": [], "grace": []}',
    b'{"version": 99, "limits": [[1]], "grace": []}', b"not json", b"[]",
    b'{"version": 99, "limits": [["u", 5, 0, -1, 0, 0, 0, 0]], "grace": []}',
])
async def test_a_copy_not_well_formed_changes_nothing(tmp_path: Path, copy: bytes) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    store = open_store(f"sqlite://{tmp_path}/store.db")
    try:
        Client(mdt)("quota_set", qtype="u", id=5, bhard=100)
        await store.put(limits_key("scratch"), copy)
        await LimitsCopy(store, {mdt.name: mdt}).opened(mdt)
        assert mdt.quota.limits[("u", 5)].bhard == 100
        assert Client(mdt)("quota_get", qtype="u", id=5)["bhard"] == 100
    finally:
        await store.close()
        mdt._close_db()


async def test_a_newer_copy_is_taken_and_a_copy_of_another_timeline_is_not(
        tmp_path: Path) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    store = open_store(f"sqlite://{tmp_path}/store.db")
    key = limits_key("scratch")
    try:
        newer = {"version": 7, "limits": [["u", 9, 0, 500, 0, 0, 0.0, 0.0]],
                 "grace": [["u", 60.0, 60.0]]}
        await store.put(key, json.dumps(newer).encode())
        copies = LimitsCopy(store, {mdt.name: mdt})
        await copies.opened(mdt)
        assert mdt.quota.limits[("u", 9)].bhard == 500 and mdt.quota.version == 7
        # a later instance that did not read the store: what it acknowledges stands
        mdt2 = reopened(mdt, tmp_path)
        c = Client(mdt2, "c2")
        c("quota_set", qtype="u", id=9, bhard=800)  # version 8 on the device
        await store.put(key, json.dumps({**newer, "version": 50}).encode())
        await mdt2.commit()
        fresh = LimitsCopy(store, {mdt2.name: mdt2})
        await fresh._save(mdt2)  # sees 50 >= 8: moves past it instead of writing
        assert json.loads((await store.get(key)).value)["version"] == 50
        await mdt2.commit()
        await fresh._save(mdt2)
        stored = json.loads((await store.get(key)).value)
        assert stored["version"] == 51 and stored["limits"][0][3] == 800
        mdt2._close_db()
    finally:
        await store.close()


def reopened(mdt: MDT, tmp_path: Path) -> MDT:
    """The same MDT0 device started again (a failover): a new instance."""
    mdt._close_db()
    return open_mdt(tmp_path / "mdt", create=False)
