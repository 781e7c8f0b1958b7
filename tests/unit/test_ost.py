"""OST operations, their errors, commits, resends and health, on real files in tmp_path."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import NoDevice
from shoal.protocol import messages as m
from shoal.protocol.transno import epoch_of, make_transno
from shoal.target.ost import OST
from shoal.target.ost_files import object_path
from tests.unit.ost_client import NAME, Client


def reopen(old: OST) -> OST:
    o = OST(NAME, old.device, fs="scratch", commit_interval=3600)
    o.open(create=True)
    return o


# -- write / read -------------------------------------------------------------------------
async def test_write_read_before_and_after_commit(ost: OST, cl: Client) -> None:
    r = cl.write(7, 10, b"hello")
    assert r.status is None and r.data == {"size": 15}
    assert r.transno == make_transno(ost.epoch, 1)
    assert r.pre_versions == [0]
    assert not object_path(ost.objects_dir, 7).exists()  # nothing on the files yet
    assert cl.read(7) == bytes(10) + b"hello"
    assert ost.dirty_bytes() == 5
    assert await ost.commit() == r.transno
    assert ost.dirty_bytes() == 0
    assert object_path(ost.objects_dir, 7).read_bytes() == bytes(10) + b"hello"
    assert cl.read(7) == bytes(10) + b"hello"
    assert cl.read(7, 12, 2) == b"ll"


async def test_adjacent_writes_land_in_order(ost: OST, cl: Client) -> None:
    chunks = [bytes([65 + i]) * (100 + i) for i in range(5)]
    offset = 0
    for c in chunks:
        cl.write(9, offset, c)
        offset += len(c)
    await ost.commit()
    assert object_path(ost.objects_dir, 9).read_bytes() == b"".join(chunks)


async def test_object_path_layout(ost: OST) -> None:
    assert object_path(ost.objects_dir, 0x1234) == ost.objects_dir / "34" / "1234"
    assert object_path(ost.objects_dir, 5) == ost.objects_dir / "05" / "5"


async def test_versions_and_pre_versions(cl: Client) -> None:
    first = cl.write(1, 0, b"a")
    second = cl.write(1, 0, b"b")
    assert second.pre_versions == [first.transno]
    assert cl.getattr(1)["version"] == second.transno
    punch = cl.call("punch", {"oid": 1, "size": 0})
    assert punch.pre_versions == [second.transno]
    assert cl.getattr(1)["version"] == punch.transno


async def test_never_written_object_reads_empty(cl: Client) -> None:
    r = cl.call("read", {"oid": 99, "offset": 0, "length": 4096})
    assert r.status is None and r.bulk == b"" and r.data == {"size": 0}
    assert cl.getattr(99) == {"size": 0, "version": 0, "blocks": 0}


async def test_read_is_short_at_end_and_zero_in_holes(ost: OST, cl: Client) -> None:
    cl.write(3, 0, b"ab")
    cl.write(3, 100, b"cd")
    await ost.commit()
    r = cl.call("read", {"oid": 3, "offset": 98, "length": 100})
    assert r.bulk == b"\0\0cd" and r.data["size"] == 102
    assert cl.read(3, 2, 98) == bytes(98)
    assert cl.read(3, 200, 10) == b""


async def test_sparse_object_allocates_few_blocks(ost: OST, cl: Client) -> None:
    cl.write(4, 1 << 30, b"x" * 4096)
    await ost.commit()
    attrs = cl.getattr(4)
    assert attrs["size"] == (1 << 30) + 4096
    assert 0 < attrs["blocks"] < 1024  # a hole of 1 GiB takes no space
    assert cl.read(4, (1 << 30) - 4, 8) == b"\0\0\0\0xxxx"


async def test_zero_length_write_creates_the_object(ost: OST, cl: Client) -> None:
    r = cl.write(5, 50, b"")
    assert r.status is None and r.data == {"size": 0}
    assert cl.getattr(5)["version"] == r.transno
    await ost.commit()
    o = reopen(ost)
    try:
        assert o._attrs[5].version == r.transno
    finally:
        o._close_db()


async def test_punch_shrinks_and_extends_with_zeros(ost: OST, cl: Client) -> None:
    cl.write(2, 0, b"0123456789")
    await ost.commit()
    assert cl.call("punch", {"oid": 2, "size": 4}).data == {"size": 4}
    assert cl.call("punch", {"oid": 2, "size": 8}).data == {"size": 8}
    assert cl.read(2) == b"0123\0\0\0\0"
    await ost.commit()
    assert cl.read(2) == b"0123\0\0\0\0"
    assert os.path.getsize(object_path(ost.objects_dir, 2)) == 8


# -- bad input changes nothing ------------------------------------------------------------
@pytest.mark.parametrize("op,args,bulk,status", [
    ("read", {"oid": 1, "offset": 0, "length": (16 << 20) + 1}, None, "EINVAL"),
    ("read", {"oid": 1, "offset": -1, "length": 10}, None, "EINVAL"),
    ("read", {"oid": 1, "length": 10}, None, "EINVAL"),
    ("read", {"oid": True, "offset": 0, "length": 10}, None, "EINVAL"),
    ("read", {"oid": "1", "offset": 0, "length": 10}, None, "EINVAL"),
    ("write", {"oid": 1, "offset": 0}, None, "EINVAL"),
    ("write", {"oid": 1, "offset": 1 << 48}, b"x", "EFBIG"),
    ("write", {"oid": -2, "offset": 0}, b"x", "EINVAL"),
    ("punch", {"oid": 1}, None, "EINVAL"),
    ("punch", {"oid": 1, "size": (1 << 48) + 1}, None, "EINVAL"),
    ("destroy", {"oids": 1}, None, "EINVAL"),
    ("destroy", {"oids": [1, "x"]}, None, "EINVAL"),
    ("getattr", {}, None, "EINVAL"),
    ("getattrs", {"oids": None}, None, "EINVAL"),
    ("frobnicate", {}, None, "EOPNOTSUPP"),
])
async def test_bad_arguments(ost: OST, cl: Client, op: str, args: dict[str, Any],
                             bulk: bytes | None, status: str) -> None:
    cl.write(1, 0, b"keep")
    r = cl.call(op, args, bulk)
    assert r.status == status, r
    assert r.transno == 0
    assert cl.read(1) == b"keep" and cl.getattr(1)["size"] == 4
    assert ost.last_transno == make_transno(ost.epoch, 1)


async def test_oversized_write_rejected(ost: OST, cl: Client) -> None:
    data = bytes((16 << 20) + 1)
    r = cl.write(1, 0, data)
    assert r.status == "EINVAL" and ost.dirty_bytes() == 0


async def test_destroy_with_a_bad_oid_destroys_nothing(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"x")
    r = cl.call("destroy", {"oids": [1, -5]})
    assert r.status == "EINVAL"
    assert cl.getattr(1)["size"] == 1


# -- destroy --------------------------------------------------------------------------------
async def test_destroy_removes_files(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"one")
    cl.write(2, 0, b"two")
    await ost.commit()
    path = object_path(ost.objects_dir, 1)
    assert path.exists()
    cl.read(1)  # leaves a cached descriptor behind
    r = cl.call("destroy", {"oids": [1, 3, 1]})
    assert r.data == {"destroyed": 1}  # 3 never existed, 1 is gone the second time
    assert cl.read(1) == b"" and cl.getattr(1)["size"] == 0
    assert path.exists()  # until the commit
    await ost.commit()
    assert not path.exists()
    assert cl.read(2) == b"two"
    o = reopen(ost)
    try:
        assert sorted(o._attrs) == [2]
    finally:
        o._close_db()


async def test_destroy_then_recreate_in_one_commit(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"old data here")
    await ost.commit()
    assert cl.read(1) == b"old data here"
    cl.call("destroy", {"oids": [1]})
    cl.write(1, 4, b"new")
    assert cl.read(1) == b"\0\0\0\0new"
    await ost.commit()
    assert cl.read(1) == b"\0\0\0\0new"
    assert object_path(ost.objects_dir, 1).read_bytes() == b"\0\0\0\0new"


async def test_fd_cache_is_bounded(ost: OST, cl: Client) -> None:
    ost._fds.capacity = 8
    for oid in range(20):
        cl.write(oid, 0, b"%d" % oid)
    await ost.commit()
    for oid in range(20):
        assert cl.read(oid) == b"%d" % oid
    assert len(ost._fds) == 8


# -- getattrs, statfs, sync -----------------------------------------------------------------
async def test_getattrs_for_glimpses(cl: Client) -> None:
    w = cl.write(1, 0, b"abc")
    r = cl.call("getattrs", {"oids": [1, 2]})
    assert r.status is None
    assert r.data["attrs"][1]["size"] == 3 and r.data["attrs"][1]["version"] == w.transno
    assert r.data["attrs"][2] == {"size": 0, "version": 0, "blocks": 0}
    meta, bulk = m.encode(r)
    back = m.decode(meta, bulk)
    assert isinstance(back, m.Reply) and back.data["attrs"][1]["size"] == 3


async def test_statfs_numbers_are_sane(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"x" * 1000)
    cl.write(2, 10, b"y" * 10)
    r = cl.call("statfs", {})
    assert r.status is None
    d = r.data
    assert d["objects"] == 2 and d["used_bytes"] == 1020
    assert d["blocks"] > 0 and 0 <= d["bavail"] <= d["bfree"] <= d["blocks"]
    assert 0 <= d["ffree"] <= d["files"]
    total = shutil.disk_usage(ost.device).total
    assert d["bsize"] * d["blocks"] == total
    cl.call("destroy", {"oids": [1]})
    assert cl.call("statfs", {}).data["objects"] == 1


async def test_sync_asks_for_a_commit(ost: OST) -> None:
    reply, ctx = ost.handle("c", m.Request(1, "sync", NAME, {}))
    assert reply.status is None and reply.data == {}
    assert ctx is not None and ctx.force_commit


# -- resend and replay ----------------------------------------------------------------------
async def test_resent_write_is_reconstructed_not_redone(ost: OST, cl: Client) -> None:
    first = cl.write(1, 0, b"AAAA", xid=10)
    cl.write(1, 0, b"BB", xid=11)
    again = cl.write(1, 0, b"AAAA", xid=10, flags=m.FLAG_RESEND)
    assert again.transno == first.transno and again.data == first.data
    assert ost.stats["reconstructed"] == 1
    assert cl.read(1) == b"BBAA"  # not overwritten a second time
    await ost.commit()
    o = reopen(ost)
    try:
        r, _ = o.handle(cl.uuid, m.Request(11, "write", NAME,
                                           {"oid": 1, "offset": 0},
                                           m.FLAG_RESEND, bulk=b"BB"))
        assert r.transno == make_transno(ost.epoch, 2) and o.stats["reconstructed"] == 1
        assert o.last_transno == o.last_committed  # nothing new was done
    finally:
        o._close_db()


async def test_replay_keeps_its_transno_as_the_version(ost: OST, cl: Client) -> None:
    old = make_transno(ost.epoch - 1 if ost.epoch > 1 else 0, 77)
    r, _ = ost.handle(cl.uuid, m.Request(50, "write", NAME,
                                         {"oid": 8, "offset": 0},
                                         m.FLAG_REPLAY, old, bulk=b"r"))
    assert r.transno == old
    assert cl.getattr(8)["version"] == old


# -- commits ----------------------------------------------------------------------------------
async def test_reads_during_an_inflight_commit(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"a" * 100)
    await ost.commit()
    cl.write(1, 50, b"b" * 100)
    task = asyncio.create_task(ost.commit())
    await asyncio.sleep(0)  # the commit has swapped its log out and its thread runs
    assert ost._inflight and not ost._log
    cl.call("punch", {"oid": 1, "size": 120})
    cl.write(1, 130, b"c")
    want = b"a" * 50 + b"b" * 70 + bytes(10) + b"c"
    assert cl.read(1) == want
    assert ost.dirty_bytes() == 101
    await task
    assert cl.read(1) == want
    await ost.commit()
    assert object_path(ost.objects_dir, 1).read_bytes() == want


async def test_cancelled_commit_finishes_its_thread(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"data")
    task = asyncio.create_task(ost.commit())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ost._inflight  # the thread finished before the task gave up
    assert object_path(ost.objects_dir, 1).read_bytes() == b"data"
    cl.write(2, 0, b"more")
    assert await ost.commit() == ost.last_transno


async def test_failed_commit_keeps_everything_pending(ost: OST, cl: Client) -> None:
    cl.write(0x101, 0, b"first")
    await ost.commit()
    cl.write(0x101, 2, b"XY")
    cl.write(0x201, 0, b"other")
    fanout = ost.objects_dir / "01"
    shutil.move(fanout, ost.device / "aside")
    fanout.write_bytes(b"")  # a file where the directory was: opening objects fails
    committed = ost.last_committed
    with pytest.raises(OSError):
        await ost.commit()
    assert ost.last_committed == committed
    cl.write(0x101, 6, b"!")
    assert cl.read(0x201) == b"other"  # all of it pending: no file needed
    r = cl.call("read", {"oid": 0x101, "offset": 0, "length": 10})
    assert r.status == "EIO"  # its committed bytes are out of reach
    fanout.unlink()
    shutil.move(ost.device / "aside", fanout)
    assert cl.read(0x101) == b"fiXYt\0!"
    await ost.commit()
    assert ost.last_committed == ost.last_transno
    assert object_path(ost.objects_dir, 0x101).read_bytes() == b"fiXYt\0!"
    assert object_path(ost.objects_dir, 0x201).read_bytes() == b"other"


async def test_dirty_bytes_past_the_limit_kicks_a_commit(ost: OST, cl: Client) -> None:
    ost.max_dirty_bytes = 1000  # type: ignore[misc]
    cl.write(1, 0, bytes(600))
    assert not ost._kick.is_set()
    cl.write(1, 600, bytes(600))
    assert ost._kick.is_set()


async def test_tail_left_by_a_crashed_commit_never_shows(ost: OST, cl: Client) -> None:
    cl.write(1, 0, b"committed")
    await ost.commit()
    # a commit that wrote and fsynced the file but died before its database COMMIT
    with open(object_path(ost.objects_dir, 1), "r+b") as f:
        f.seek(200)
        f.write(b"GHOST")
    o = reopen(ost)
    try:
        c2 = Client(o, "client-2")
        assert c2.getattr(1)["size"] == 9
        assert c2.read(1, 0, 4096) == b"committed"
        c2.write(1, 300, b"new")
        assert c2.read(1, 0, 4096) == b"committed" + bytes(291) + b"new"
        await o.commit()
        assert c2.read(1, 0, 4096) == b"committed" + bytes(291) + b"new"
        assert object_path(o.objects_dir, 1).read_bytes() == b"committed" + bytes(291) + b"new"
    finally:
        o._close_db()


# -- crash --------------------------------------------------------------------------------------
CRASHER = textwrap.dedent("""
    import asyncio, os, sys
    from shoal.protocol.messages import Request
    from shoal.target.ost import OST

    async def main() -> None:
        o = OST("scratch-OST0000", sys.argv[1], fs="scratch", commit_interval=3600)
        o.format()
        await o.start()
        def write(xid, oid, off, data):
            r, _ = o.handle("c", Request(xid, "write", "scratch-OST0000",
                            {"oid": oid, "offset": off}, bulk=data))
            assert r.status is None
        write(1, 1, 0, b"A" * 5000)
        write(2, 2, 0, b"gone?")
        await o.commit()
        write(3, 1, 2000, b"B" * 5000)       # overwrite and extend: uncommitted
        o.handle("c", Request(4, "destroy", "scratch-OST0000", {"oids": [2]}))
        write(5, 3, 0, b"new object")
        print(o.epoch, o.last_committed, flush=True)
        os._exit(0)

    asyncio.run(main())
""")


def test_crash_loses_exactly_the_uncommitted_tail(tmp_path: Path) -> None:
    dev = tmp_path / "ost0"
    out = subprocess.run([sys.executable, "-c", CRASHER, str(dev)], check=True,
                         capture_output=True, text=True, timeout=30).stdout.split()
    epoch, committed = int(out[0]), int(out[1])
    o = reopen(OST(NAME, dev, fs="scratch"))
    try:
        assert o.epoch == epoch + 1
        assert o.last_committed == committed and epoch_of(committed) == epoch
        c = Client(o, "c2")
        assert c.read(1, 0, 1 << 20) == b"A" * 5000
        assert c.read(2) == b"gone?"
        assert c.getattr(3) == {"size": 0, "version": 0, "blocks": 0}
        assert c.getattr(1)["size"] == 5000
        assert o.known_clients == ["c"]
        row = o.db.execute("SELECT COUNT(*) FROM reply_data WHERE client='c'").fetchone()
        assert row == (2,)
    finally:
        o._close_db()


# -- health -----------------------------------------------------------------------------------
async def test_health_note_when_objects_dir_is_unusable(ost: OST) -> None:
    assert ost.check_device() is None
    shutil.move(ost.objects_dir, ost.device / "objects.aside")
    ost.objects_dir.write_bytes(b"")
    why = ost.check_device()
    assert why is not None and "objects" in why and "OST" in why


async def test_label_mismatch_is_refused(ost: OST) -> None:
    other = OST("scratch-OST0001", ost.device, fs="scratch")
    with pytest.raises(NoDevice, match="holds scratch/scratch-OST0000"):
        other.open(create=True)


def test_objects_table_created_on_format(tmp_path: Path) -> None:
    o = OST(NAME, tmp_path / "d", fs="scratch", index=3)
    o.open(create=True)
    try:
        assert o._info("index") == 3
        assert (tmp_path / "d" / "objects").is_dir()
        db = sqlite3.connect(tmp_path / "d" / "target.db")
        cols = [r[1] for r in db.execute("PRAGMA table_info(objects)")]
        db.close()
        assert cols == ["oid", "size", "version", "blocks", "uid", "gid", "projid", "owned"]
    finally:
        o._close_db()


async def test_a_sync_destroy_keeps_no_replay_state_and_waits_for_the_commit(
        ost: OST, cl: Client) -> None:
    """FLAG_SYNC (the MDT's own destroys, node/osp.py): answered after the commit, with no
    last_rcvd slot (no window waits for an MDT) and no reply data (a resend redoes it)."""
    assert cl.write(7, 0, b"orphan").status is None
    await ost.commit()
    reply, ctx = ost.handle("osp-nid00060", m.Request(1, "destroy", NAME, {"oids": [7]},
                                                      flags=m.FLAG_SYNC))
    assert reply.status is None and reply.data == {"destroyed": 1}
    assert ctx is not None and ctx.force_commit
    assert "osp-nid00060" not in ost.known_clients
    again, _ = ost.handle("osp-nid00060", m.Request(1, "destroy", NAME, {"oids": [7]},
                                                    flags=m.FLAG_SYNC))
    assert again.status is None and again.data == {"destroyed": 0}  # redone: nothing left
    await ost.commit()
    assert ost.last_committed >= reply.transno
    # a change that cannot be done twice is refused without replay state, and not done
    assert cl.write(8, 0, b"kept").status is None
    bad, _ = ost.handle("osp-nid00060", m.Request(2, "write", NAME, {"oid": 8, "offset": 0},
                                                  bulk=b"gone", flags=m.FLAG_SYNC))
    assert bad.status == "EINVAL"
    assert cl.read(8) == b"kept"


async def test_a_connect_is_answered_only_once_its_own_slot_is_on_disk(ost: OST) -> None:
    """A client evicted (its slot freed) that connects again while the commit writing the
    free slot is under way must wait for the commit that writes its new slot: answered by
    the first, it would find the disk still saying "free" after a crash."""
    await ost.client_connected("c1")
    ost.forget_client("c1")  # kicks the commit loop: it takes the freed slot
    await asyncio.sleep(0)
    seen: list[dict[str, int]] = []
    again = asyncio.create_task(ost.client_connected("c1"))
    again.add_done_callback(lambda _: seen.append(dict(ost.db.execute(
        "SELECT client, last_transno FROM last_rcvd").fetchall())))
    await asyncio.wait_for(again, 10)
    await asyncio.sleep(0)
    assert seen == [{"c1": 0}], "answered while the disk said the slot was free"
