"""Quotas on the MDT (issue 23): inode accounting by the database's triggers, inode limits,
projects passed on by directories, EXDEV across projects, the master's grants, the owner
log, and a device formatted before quotas."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from shoal.protocol import messages as m
from shoal.protocol.quota import QUNIT_MIN
from shoal.target.base import DB_FILE
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client, open_mdt


def usage(mdt: MDT, qtype: str, qid: int) -> int:
    return int(Client(mdt, "reader")("quota_usage", qtype=qtype, id=qid)["inodes"])


def test_inodes_are_counted_per_user_group_and_project_through_every_change(mdt: MDT) -> None:
    c = Client(mdt)
    c("mkdir", path="/d", uid=1000, gid=100)
    c("create", path="/d/f", uid=1000, gid=100)
    c("symlink", path="/d/l", target="f", uid=1000, gid=200)
    assert usage(mdt, "u", 1000) == 3
    assert (usage(mdt, "g", 100), usage(mdt, "g", 200)) == (2, 1)
    c("setattr", path="/d/f", uid=2000, follow=False)
    assert (usage(mdt, "u", 1000), usage(mdt, "u", 2000)) == (2, 1)
    c("setattr", path="/d", projid=7, projinherit=True)
    c("create", path="/d/g", uid=2000, gid=100)  # takes the directory's project
    assert usage(mdt, "p", 7) == 2
    assert c("getattr", path="/d/g")["projid"] == 7
    c("unlink", path="/d/l")
    assert usage(mdt, "u", 1000) == 1
    assert Client(mdt)("quota_recount")["drift"] == []


def test_a_failed_request_counts_nothing(mdt: MDT) -> None:
    c = Client(mdt)
    c("create", path="/f", uid=5)
    assert c.err("create", path="/f", uid=5) == "EEXIST"
    assert c.err("mkdir", path="/nope/d", uid=5) == "ENOENT"
    assert usage(mdt, "u", 5) == 1


def test_the_inode_hard_limit_refuses_with_edquot_and_a_replay_is_never_refused(
        mdt: MDT) -> None:
    c = Client(mdt)
    c("quota_set", qtype="u", id=42, ihard=2)
    c("create", path="/a", uid=42)
    r = c.req("create", {"path": "/b", "uid": 42})
    assert r.status is None
    assert c.err("mkdir", path="/c", uid=42) == "EDQUOT"
    assert c.err("create", path="/c", uid=42) == "EDQUOT"
    assert usage(mdt, "u", 42) == 2
    c("create", path="/c", uid=43)  # another user is not held back
    c("unlink", path="/a")
    c("create", path="/c2", uid=42)  # room again


def test_a_soft_limit_starts_the_grace_period_and_holds_when_it_ends(mdt: MDT) -> None:
    c = Client(mdt)
    c("quota_set", qtype="g", grace=[60, 1])
    c("quota_set", qtype="g", id=9, isoft=1)
    c("create", path="/a", gid=9)
    assert c("quota_get", qtype="g", id=9)["itime"] == 0  # at the limit, not past it
    c("create", path="/b", gid=9)  # past it: grace starts
    got = c("quota_get", qtype="g", id=9)
    assert got["itime"] > got["now"] - 1 and got["igrace"] == 1
    mdt.quota.limits[("g", 9)].itime = 1.0  # the grace period ended
    assert c.err("create", path="/c", gid=9) == "EDQUOT"


def test_root_is_never_limited_and_bad_limits_change_nothing(mdt: MDT) -> None:
    c = Client(mdt)
    assert c.err("quota_set", qtype="u", id=0, bhard=1) == "EPERM"
    assert c.err("quota_set", qtype="p", id=0, ihard=4) == "EPERM"  # every file of no project
    assert c.err("quota_set", qtype="x", id=1, bhard=1) == "EINVAL"
    assert c.err("quota_set", qtype="u", id=-1, bhard=1) == "EINVAL"
    assert c.err("quota_set", qtype="u", id=1, bhard=-5) == "EINVAL"
    assert c.err("quota_set", qtype="u", id=1, bhard="many") == "EINVAL"
    assert c.err("quota_set", qtype="u", grace=[0, 1]) == "EINVAL"
    assert mdt.quota.limits == {}


def test_links_and_moves_into_another_project_are_exdev(mdt: MDT) -> None:
    c = Client(mdt)
    c("mkdir", path="/p")
    c("setattr", path="/p", projid=3, projinherit=True)
    c("create", path="/f")
    assert c.err("link", src="/f", path="/p/f") == "EXDEV"
    assert c.err("rename", src="/f", dst="/p/f") == "EXDEV"
    c("create", path="/p/g")
    c("rename", src="/p/g", dst="/p/h")  # within the project: fine
    assert usage(mdt, "p", 3) == 2
    assert c.err("setattr", path="/f", projinherit=True) == "EINVAL"


def test_the_master_grants_within_the_hard_limit_and_an_ask_sets_not_adds(mdt: MDT) -> None:
    c = Client(mdt)
    c("quota_set", qtype="u", id=7, bhard=10_000)
    one = c("quota_acquire", slave="scratch-OST0000", asks=[["u", 7, 1000, 0]], sync=True)
    g0 = one["grants"][0][2]
    assert 1000 <= g0 <= 10_000 and one["limited"] == [["u", 7]]
    again = c("quota_acquire", slave="scratch-OST0000", asks=[["u", 7, 1000, 0]])
    assert again["grants"][0][2] == g0  # asked twice: the same grant
    other = c("quota_acquire", slave="scratch-OST0001", asks=[["u", 7, 20_000, 0]])
    assert other["grants"][0][2] == 10_000 - g0  # what the limit leaves
    free = c("quota_acquire", slave="scratch-OST0001", asks=[["u", 8, 5, 0]])
    assert free["grants"] == [["u", 8, -1, 0]]  # no limit
    grants = c("quota_get", qtype="u", id=7)["grants"]
    assert sum(g[1] for g in grants) <= 10_000


def test_a_chown_logs_the_objects_new_owner_until_the_ost_has_it(tmp_path: Path) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    try:
        c = Client(mdt)
        c("create", path="/f", uid=1, gid=2, stripe_count=2)
        layout = c("getattr", path="/f")["layout"]
        c("setattr", path="/f", uid=10)
        assert mdt.quota.pending_owners(100) == {}  # not committed yet
        asyncio.run(mdt.commit())
        pending = mdt.quota.pending_owners(100)
        assert sorted(pending) == sorted(layout["osts"])
        ost = layout["osts"][0]
        assert pending[ost] == [[layout["oid"], 10, 2, 0]]
        mdt.quota.owners_done(ost, pending[ost])
        assert ost not in mdt.quota.pending_owners(100)
    finally:
        mdt._close_db()


def test_a_device_formatted_before_quotas_is_counted_once_when_opened(tmp_path: Path) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    c = Client(mdt)
    c("create", path="/a", uid=3)
    c("mkdir", path="/b", uid=3)
    asyncio.run(mdt.commit())
    mdt._close_db()
    db = sqlite3.connect(tmp_path / "mdt" / DB_FILE)
    for name in ("quota_inode_added", "quota_inode_gone", "quota_inode_uid",
                 "quota_inode_gid", "quota_inode_projid"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE quota_usage")
    db.commit()
    db.close()
    mdt = open_mdt(tmp_path / "mdt", create=False)
    try:
        assert usage(mdt, "u", 3) == 2
        assert usage(mdt, "u", 0) == 1  # the root
        assert Client(mdt)("quota_recount")["drift"] == []
    finally:
        mdt._close_db()



def test_creates_replayed_after_a_crash_count_once_and_are_never_refused(
        tmp_path: Path) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    c = Client(mdt)
    c("quota_set", qtype="u", id=77, ihard=2)
    c("create", path="/a", uid=77)
    asyncio.run(mdt.commit())
    made = [c.req("create", {"path": "/b", "uid": 77}), c.req("mkdir", {"path": "/c"})]
    assert all(r.status is None for r in made)
    mdt.abandon()  # a crash: /b and /c were never committed
    mdt = open_mdt(tmp_path / "mdt", create=False)
    try:
        c2 = Client(mdt, c.uuid, xid=c.xid)
        mdt.quota.limits[("u", 77)].ihard = 1  # lowered since: the replay still goes in
        r = c2.req("create", {"path": "/b", "uid": 77}, xid=made[0].xid,
                   flags=m.FLAG_REPLAY, transno=made[0].transno)
        assert r.status is None, r.message
        assert usage(mdt, "u", 77) == 2
        assert Client(mdt, "x")("quota_recount")["drift"] == []
    finally:
        mdt._close_db()


def test_a_grace_period_that_ran_out_ends_when_usage_falls_back_under_the_soft_limit(
        mdt: MDT) -> None:
    c = Client(mdt)
    c("quota_set", qtype="u", id=31, isoft=2)
    for name in "abcd":
        c("create", path=f"/{name}", uid=31)
    mdt.db.execute("UPDATE quota_limits SET itime=1.0 WHERE id=31")  # ran out long ago
    mdt.quota.reload()
    assert c.err("create", path="/e", uid=31) == "EDQUOT"
    c("unlink", path="/c")
    c("unlink", path="/d")
    c("create", path="/e", uid=31)  # past the soft limit again: a new grace period
    got = c("quota_get", qtype="u", id=31)
    assert got["itime"] > got["now"]


def test_the_headroom_shrinks_as_the_limit_nears_so_one_ost_gets_nearly_all(mdt: MDT) -> None:
    """Three OSTs hold 1 MiB each and sync (ask for what they use) as they do every few
    seconds; the fourth keeps writing. Its grant ends close to the limit, not a fixed
    headroom per OST short of it."""
    c = Client(mdt)
    hard = 64 << 10
    c("quota_set", qtype="u", id=8, bhard=hard)
    granted = 0
    for _ in range(8):
        for i in (1, 2, 3):
            c("quota_acquire", slave=f"scratch-OST000{i}", asks=[["u", 8, 1024, 1024]],
              sync=True)
        got = c("quota_acquire", slave="scratch-OST0000", asks=[["u", 8, hard, granted]])
        granted = got["grants"][0][2]
    others = sum(g[1] for g in c("quota_get", qtype="u", id=8)["grants"]
                 if g[0] != "scratch-OST0000")
    assert granted + others <= hard
    # short of the limit by what the others use and twice the least headroom each (with a
    # fixed headroom of a sixteenth of the limit per OST it was 50,176)
    assert granted >= hard - 3 * 1024 - 3 * 2 * QUNIT_MIN["b"], (granted, others)


def test_found_in_review_owner_log_slave_names_and_ids(tmp_path: Path) -> None:
    """A gone file takes its pending owners with it; only an OST of this file system may
    ask for grants; a new inode's uid and gid are 32-bit."""
    mdt = open_mdt(tmp_path / "mdt")
    try:
        c = Client(mdt)
        c("create", path="/f", uid=1, stripe_count=2)
        c("setattr", path="/f", uid=2)
        c("unlink", path="/f")
        asyncio.run(mdt.commit())
        assert mdt.quota.pending_owners(100) == {}
        c("quota_set", qtype="u", id=5, bhard=1000)
        for bad in ("made-up", "other-OST0000", "scratch-MDT0000", "scratch-OST00001"):
            assert c.err("quota_acquire", slave=bad, asks=[["u", 5, 1000, 0]]) == "EINVAL"
        assert c("quota_get", qtype="u", id=5)["grants"] == []
        assert c.err("create", path="/g", uid=1 << 40) == "EINVAL"
        assert c.err("mkdir", path="/h", gid=-1) == "EINVAL"
    finally:
        mdt._close_db()


def test_a_fresh_slave_gets_back_what_its_last_instance_held(mdt: MDT) -> None:
    c = Client(mdt)
    c("quota_set", qtype="u", id=6, bhard=10_000)
    c("quota_acquire", slave="scratch-OST0000", asks=[["u", 6, 5000, 0]])
    again = c("quota_acquire", slave="scratch-OST0000", asks=[], fresh=True, sync=True)
    assert again["limited"] == [["u", 6]]
    other = c("quota_acquire", slave="scratch-OST0001", asks=[["u", 6, 9000, 0]])
    assert other["grants"][0][2] >= 9000  # nothing stranded on OST0000


def test_an_ost_may_look_at_the_limited_ids_as_it_asks_with_flag_sync(mdt: MDT) -> None:
    c = Client(mdt)
    c("quota_set", qtype="g", id=12, bhard=100)
    r = c.req("quota_limited", {}, flags=m.FLAG_SYNC)
    assert r.status is None and r.data["limited"] == [["g", 12]]
