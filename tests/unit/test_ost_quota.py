"""Quotas on an OST (issue 23): blocks in use per owner kept by the database with the object
rows, pending writes estimated, grants enforced with EDQUOT (never for a replay), owners
changed by `setowner`, a recount that finds no drift, a device formatted before quotas."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shoal.protocol import messages as m
from shoal.target.base import DB_FILE
from shoal.target.ost import OST
from shoal.target.ost_quota import growth
from tests.unit.ost_client import NAME, Client

MiB = 1 << 20


async def started(dev: Path, *, fresh: bool = False) -> OST:
    """An OST on `dev` that commits only when the test says: formatted, or reopened."""
    o = OST(NAME, dev, fs="scratch", commit_interval=3600)
    if fresh:
        o.format()
    else:
        o.open()
    await o.start()
    return o


def kib(cl: Client, qtype: str, qid: int) -> int:
    r = cl.call("quota_usage", {"qtype": qtype, "id": qid})
    assert r.status is None, r.message
    return int(r.data["kbytes"])


def test_growth_counts_the_pages_added_past_the_end() -> None:
    assert growth(0, 0, 1) == 8
    assert growth(0, 0, 4096) == 8
    assert growth(4096, 0, 4096) == 0  # an overwrite
    assert growth(4096, 4000, 200) == 8  # into the next page
    assert growth(100, 8192, 1) == 8  # past a hole: the hole is not counted
    assert growth(0, 0, MiB) == 2048


async def test_blocks_are_counted_per_owner_before_and_after_the_commit(
        ost: OST, cl: Client) -> None:
    assert cl.write(1, 0, b"x" * MiB, flags=0).status is None  # no owner: nobody's (0)
    r = cl.call("write", {"oid": 2, "offset": 0, "owner": [1000, 100, 7]}, b"y" * MiB)
    assert r.status is None
    for k in (("u", 1000), ("g", 100), ("p", 7)):
        assert kib(cl, *k) == 1024  # estimated while pending
    await ost.commit()
    for k in (("u", 1000), ("g", 100), ("p", 7)):
        assert kib(cl, *k) == 1024  # counted from the device
    # a later write with another owner does not change the object's owner
    cl.call("write", {"oid": 2, "offset": MiB, "owner": [5, 5, 5]}, b"z" * MiB)
    await ost.commit()
    assert kib(cl, "u", 1000) == 2048 and kib(cl, "u", 5) == 0
    cl.call("punch", {"oid": 2, "size": 0})
    await ost.commit()
    assert kib(cl, "u", 1000) == 0
    cl.call("write", {"oid": 3, "offset": 0, "owner": [9, 9, 9]}, b"a" * 8192)
    await ost.commit()
    assert kib(cl, "u", 9) == 8
    cl.call("destroy", {"oids": [3]})
    await ost.commit()
    assert kib(cl, "u", 9) == 0
    assert cl.call("quota_recount", {}).data["drift"] == []


async def test_setowner_moves_the_blocks_and_is_harmless_twice(ost: OST, cl: Client) -> None:
    cl.call("write", {"oid": 4, "offset": 0, "owner": [1, 1, 0]}, b"q" * 65536)
    await ost.commit()
    args = {"objects": [[4, 2, 1, 3], [99, 2, 1, 3]]}  # 99: not written yet, left alone
    for _ in range(2):
        r = cl.call("setowner", args, flags=m.FLAG_SYNC)
        assert r.status is None, r.message
        await ost.commit()
    assert (kib(cl, "u", 1), kib(cl, "u", 2), kib(cl, "p", 3)) == (0, 64, 64)
    cl.call("write", {"oid": 99, "offset": 0, "owner": [7, 7, 7]}, b"w" * 4096)
    await ost.commit()
    assert (kib(cl, "u", 2), kib(cl, "u", 7)) == (64, 4)  # its first write named its owner
    assert cl.call("setowner", {"objects": [[1, -1, 0, 0]]}).status == "EINVAL"
    assert cl.call("quota_recount", {}).data["drift"] == []


async def test_a_write_past_the_grant_is_edquot_and_a_replay_is_not(ost: OST, cl: Client) -> None:
    ost.quota.learn({"limited": [["u", 50]], "grants": [["u", 50, 100]]})
    owner = [50, 0, 0]
    assert cl.call("write", {"oid": 5, "offset": 0, "owner": owner}, b"a" * 65536).status is None
    await ost.commit()
    r = cl.call("write", {"oid": 5, "offset": 65536, "owner": owner}, b"b" * 65536)
    assert r.status == "EDQUOT"
    # a replay was answered once: it is never refused (the grant is the master's to fix)
    r = cl.call("write", {"oid": 7, "offset": 0, "owner": owner}, b"r" * 65536,
                flags=m.FLAG_REPLAY)
    assert r.status is None
    assert cl.call("write", {"oid": 5, "offset": 0, "owner": owner}, b"c" * 4096).status is None
    assert ost.quota.short((50, 0, 0), 128)
    # another user on the same OST is not held back
    assert cl.call("write", {"oid": 6, "offset": 0, "owner": [51, 0, 0]},
                   b"d" * 65536 * 4).status is None
    assert kib(cl, "u", 50) == 128


async def test_usage_survives_a_restart_and_a_crash_loses_only_the_uncommitted(
        tmp_path: Path) -> None:
    dev = tmp_path / "ost"
    o = await started(dev, fresh=True)
    cl = Client(o)
    cl.call("write", {"oid": 1, "offset": 0, "owner": [3, 3, 3]}, b"x" * 65536)
    await o.commit()
    cl.call("write", {"oid": 1, "offset": 65536, "owner": [3, 3, 3]}, b"x" * 65536)
    assert kib(cl, "u", 3) == 128
    o.abandon()  # a crash: the second write was never committed
    o = await started(dev)
    try:
        assert kib(Client(o), "u", 3) == 64
    finally:
        await o.stop()


async def test_a_device_formatted_before_quotas_is_counted_once(tmp_path: Path) -> None:
    dev = tmp_path / "ost"
    o = await started(dev, fresh=True)
    Client(o).write(1, 0, b"x" * 65536)
    await o.stop()
    db = sqlite3.connect(dev / DB_FILE)
    for event in ("insert", "update", "delete"):
        db.execute(f"DROP TRIGGER quota_object_{event}")
    db.execute("DROP TABLE quota_usage")
    db.execute("CREATE TABLE o2 AS SELECT oid, size, version, blocks FROM objects")
    db.execute("DROP TABLE objects")
    db.execute("ALTER TABLE o2 RENAME TO objects")
    db.commit()
    db.close()
    o = await started(dev)
    try:
        assert kib(Client(o), "u", 0) == 64
    finally:
        await o.stop()


async def test_a_write_replayed_after_a_crash_counts_once(tmp_path: Path) -> None:
    dev = tmp_path / "ost"
    o = await started(dev, fresh=True)
    cl = Client(o)
    cl.call("write", {"oid": 1, "offset": 0, "owner": [4, 4, 4]}, b"x" * 65536)
    await o.commit()
    args = {"oid": 1, "offset": 65536, "owner": [4, 4, 4]}
    r = cl.call("write", args, b"y" * 65536)
    assert r.status is None and r.transno > o.last_committed
    o.abandon()
    o = await started(dev)
    try:
        for _ in range(2):  # replayed, then resent: done once
            reply, _ = o.handle(cl.uuid, m.Request(cl.xid, "write", NAME, args,
                                                    m.FLAG_REPLAY, r.transno, bulk=b"y" * 65536))
            assert reply.status is None, reply.message
        await o.commit()
        assert kib(Client(o, "reader"), "u", 4) == 128
    finally:
        await o.stop()


async def test_a_write_into_a_hole_is_checked_against_the_grant(ost: OST, cl: Client) -> None:
    """Found in review: a write that ended inside the object counted nothing, so the last
    page first, then the rest, passed any limit."""
    ost.quota.learn({"limited": [["u", 50]], "grants": [["u", 50, 100]]})  # 100 KiB
    owner = [50, 0, 0]
    r = cl.call("write", {"oid": 5, "offset": 8 * MiB, "owner": owner}, b"t" * 4096)
    assert r.status is None
    r = cl.call("write", {"oid": 5, "offset": 0, "owner": owner}, b"x" * MiB)
    assert r.status == "EDQUOT"
    assert cl.call("punch", {"oid": 6, "size": 4 * MiB}).status is None  # a truncate up
    r = cl.call("write", {"oid": 6, "offset": 0, "owner": owner}, b"y" * MiB)
    assert r.status == "EDQUOT"
    await ost.commit()
    assert kib(cl, "u", 50) <= 100
    # an overwrite of what is known allocated counts nothing, past the grant or not; of
    # a sparse object's page it counts (whether that page is allocated is not known)
    cl.call("write", {"oid": 9, "offset": 0, "owner": owner}, b"f" * 16384)
    await ost.commit()
    ost.quota.learn({"limited": [["u", 50]], "grants": [["u", 50, 4]]})
    assert cl.call("write", {"oid": 9, "offset": 4096, "owner": owner},
                   b"o" * 4096).status is None
    assert cl.call("write", {"oid": 5, "offset": 8 * MiB, "owner": owner},
                   b"o" * 4096).status == "EDQUOT"


async def test_setowner_never_brings_a_destroyed_object_back(ost: OST, cl: Client) -> None:
    """Found in review: chown then rm left an empty object nobody would destroy."""
    cl.call("write", {"oid": 3, "offset": 0, "owner": [1, 1, 1]}, b"x" * 8192)
    cl.call("write", {"oid": 4, "offset": 0, "owner": [1, 1, 1]}, b"x" * 8192)
    await ost.commit()
    cl.call("destroy", {"oids": [3]})
    await ost.commit()
    cl.call("destroy", {"oids": [4]})  # and one in the same batch as the setowner
    assert cl.call("setowner", {"objects": [[3, 2, 2, 2], [4, 2, 2, 2]]},
                   flags=m.FLAG_SYNC).status is None
    await ost.commit()
    assert ost.db.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 0
    assert kib(cl, "u", 1) == 0 and kib(cl, "u", 2) == 0


async def test_a_chown_to_root_sticks(ost: OST, cl: Client) -> None:
    """Found in review: root's owner was taken for "none yet", so a client that opened the
    file before the chown took its blocks back with its next write."""
    cl.call("write", {"oid": 5, "offset": 0, "owner": [1000, 100, 0]}, b"x" * 65536)
    await ost.commit()
    cl.call("setowner", {"objects": [[5, 0, 0, 0]]}, flags=m.FLAG_SYNC)
    await ost.commit()
    cl.call("write", {"oid": 5, "offset": 65536, "owner": [1000, 100, 0]}, b"y" * 65536)
    await ost.commit()
    assert (kib(cl, "u", 1000), kib(cl, "u", 0)) == (0, 128)
    # an object made by a truncate names no owner: the first write that does, owns it
    cl.call("punch", {"oid": 8, "size": 4096})
    cl.call("write", {"oid": 8, "offset": 0, "owner": [9, 9, 9]}, b"z" * 4096)
    await ost.commit()
    assert kib(cl, "u", 9) == 4


async def test_an_ost_asks_ahead_at_half_the_masters_headroom(ost: OST, cl: Client) -> None:
    ost.quota.learn({"limited": [["u", 3]], "grants": [["u", 3, 400, 300]]})
    owner = [3, 0, 0]
    cl.call("write", {"oid": 1, "offset": 0, "owner": owner}, b"a" * (200 << 10))
    assert not ost.quota.low((3, 0, 0))  # 200 of 400 KiB: 200 left, more than 150
    cl.call("write", {"oid": 1, "offset": 200 << 10, "owner": owner}, b"b" * (64 << 10))
    assert ost.quota.low((3, 0, 0))  # 136 left
