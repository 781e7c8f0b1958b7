"""MDT: layouts and setstripe, open/close with orphans, setattr."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.protocol import messages as m
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client

NAME = "scratch-MDT0002"
MIB = 1 << 20



@pytest.fixture
def mdt(tmp_path: Path) -> Iterator[MDT]:
    t = MDT(NAME, tmp_path / "mdt2", fs="scratch", index=2, ost_count=4, commit_interval=3600)
    t.open(create=True)
    yield t
    t._close_db()


@pytest.fixture
def c(mdt: MDT) -> Client:
    return Client(mdt)


# -- layouts ----------------------------------------------------------------------------------
def test_default_layout_stripes_over_every_ost_round_robin(c: Client) -> None:
    layouts = [c("create", path=f"/f{i}")["layout"] for i in range(5)]
    starts = [lay["osts"][0] for lay in layouts]
    assert starts == [0, 1, 2, 3, 0]
    for lay in layouts:
        assert lay["pattern"] == "raid0" and lay["stripe_count"] == 4
        assert lay["stripe_size"] == MIB and sorted(lay["osts"]) == [0, 1, 2, 3]
    f = c("getattr", path="/f1")
    assert f["layout"] == layouts[1]
    assert f["layout"]["oid"] == (2 << 48) | f["ino"]


def test_explicit_stripes_and_their_limits(c: Client) -> None:
    lay = c("create", path="/a", stripe_count=2, stripe_size=128 << 10, stripe_offset=3)["layout"]
    assert (lay["stripe_count"], lay["stripe_size"], lay["osts"]) == (2, 128 << 10, [3, 0])
    assert c("create", path="/b", stripe_count=9)["layout"]["stripe_count"] == 4  # clamped
    assert c("create", path="/c", stripe_count=1)["layout"]["stripe_size"] == MIB
    for bad in ({"stripe_size": 100_000}, {"stripe_size": 0}, {"stripe_size": -65536},
                {"stripe_offset": 4}, {"stripe_count": -2}, {"stripe_count": "2"}):
        assert c.err("create", path="/bad", **bad) == "EINVAL", bad
    assert c.err("getattr", path="/bad") == "ENOENT"


def test_directory_default_layout_is_inherited(c: Client) -> None:
    c("mkdir", path="/a")
    c("mkdir", path="/a/b")
    c("mkdir", path="/a/b/c")
    plain = c("create", path="/a/b/c/before")["layout"]
    assert plain["stripe_count"] == 4
    d = c("setstripe", path="/a", stripe_count=2, stripe_size=4 * MIB, stripe_offset=-1)
    assert d["default_layout"] == {"stripe_count": 2, "stripe_size": 4 * MIB,
                                   "stripe_offset": -1}
    deep = c("create", path="/a/b/c/after")["layout"]
    assert (deep["stripe_count"], deep["stripe_size"]) == (2, 4 * MIB)
    # explicit arguments win field by field over the inherited default
    mixed = c("create", path="/a/b/m", stripe_count=1)["layout"]
    assert (mixed["stripe_count"], mixed["stripe_size"]) == (1, 4 * MIB)
    c("setstripe", path="/a/b", stripe_count=3)
    assert c("create", path="/a/b/c/nearer")["layout"]["stripe_count"] == 3
    # moving a directory changes what it inherits
    c("mkdir", path="/z")
    c("rename", src="/a/b/c", dst="/z/c")
    assert c("create", path="/z/c/moved")["layout"]["stripe_count"] == 4
    c("setstripe", path="/a/b", delete=True)
    assert "default_layout" not in c("getattr", path="/a/b")
    assert c("create", path="/a/b/again")["layout"]["stripe_count"] == 2
    c("create", path="/file")
    assert c.err("setstripe", path="/file", stripe_count=1) == "EINVAL"
    assert c.err("setstripe", path="/a", stripe_size=1000) == "EINVAL"
    assert c.err("setstripe", path="/a") == "EINVAL"


def test_ost_count_zero_and_defaults(tmp_path: Path) -> None:
    t = MDT(NAME, tmp_path / "m", fs="scratch", index=2, ost_count=2, default_stripe_count=1,
            default_stripe_size=256 << 10)
    t.open(create=True)
    try:
        lay = Client(t)("create", path="/f")["layout"]
        assert (lay["stripe_count"], lay["stripe_size"]) == (1, 256 << 10)
    finally:
        t._close_db()


# -- open / close -----------------------------------------------------------------------------
def test_open_create_and_flags(c: Client) -> None:
    r = c("open", path="/f", flags=os.O_CREAT | os.O_WRONLY, mode=0o600, stripe_count=1)
    assert r["created"] is True and r["attr"]["layout"]["stripe_count"] == 1
    assert r["attr"]["mode"] == stat.S_IFREG | 0o600
    again = c("open", path="/f", flags=os.O_CREAT | os.O_RDWR)
    assert again["created"] is False and again["attr"]["ino"] == r["attr"]["ino"]
    assert again["handle"] != r["handle"]
    assert c.err("open", path="/f", flags=os.O_CREAT | os.O_EXCL) == "EEXIST"
    assert c.err("open", path="/nope", flags=os.O_RDONLY) == "ENOENT"
    assert c.err("open", path="/nope/x", flags=os.O_CREAT) == "ENOENT"
    c("mkdir", path="/d")
    assert c("open", path="/d", flags=os.O_RDONLY | os.O_DIRECTORY)["attr"]["type"] == "d"
    assert c.err("open", path="/d", flags=os.O_WRONLY) == "EISDIR"
    assert c.err("open", path="/d", flags=os.O_CREAT) == "EISDIR"
    assert c.err("open", path="/f", flags=os.O_DIRECTORY) == "ENOTDIR"
    assert c.err("open", path="/new/", flags=os.O_CREAT) == "EISDIR"
    c("symlink", path="/l", target="f")
    assert c("open", path="/l", flags=os.O_RDONLY)["attr"]["ino"] == r["attr"]["ino"]
    assert c.err("open", path="/l", flags=os.O_RDONLY | os.O_NOFOLLOW) == "ELOOP"
    assert c("open", ino=r["attr"]["ino"], flags=os.O_RDONLY)["attr"]["type"] == "f"
    assert c.mdt.open_handles == 5


def test_open_trunc_and_close_size(c: Client) -> None:
    h = c("open", path="/f", flags=os.O_CREAT | os.O_WRONLY)["handle"]
    assert c("close", handle=h, size=5000) == {"destroy": None}
    assert c("getattr", path="/f")["size"] == 5000
    h = c("open", path="/f", flags=os.O_WRONLY)["handle"]
    c("close", handle=h, size=100, mtime=1234.5)  # size only grows at close
    f = c("getattr", path="/f")
    assert f["size"] == 5000 and f["mtime"] == 1234.5
    r = c.req("open", {"path": "/f", "flags": os.O_WRONLY | os.O_TRUNC})
    assert r.data["attr"]["size"] == 0 and r.pre_versions == [f["version"]]
    assert c("getattr", path="/f")["size"] == 0
    assert c("getattr", path="/f")["version"] == r.transno
    c("close", handle=r.data["handle"])
    assert c.err("close", handle=r.data["handle"]) == "EBADF"
    assert c.err("close", handle=424242) == "EBADF"
    assert c.err("close", handle="x") == "EBADF"
    assert c.mdt.open_handles == 0


def test_handles_belong_to_their_client(mdt: MDT, c: Client) -> None:
    h = c("open", path="/f", flags=os.O_CREAT)["handle"]
    other = Client(mdt, "client-2")
    assert other.err("close", handle=h) == "EBADF"
    c("close", handle=h)


def test_unlinked_open_file_lives_until_last_close(c: Client) -> None:
    a = c("open", path="/f", flags=os.O_CREAT | os.O_RDWR)
    b = c("open", path="/f", flags=os.O_RDONLY)
    ino, layout = a["attr"]["ino"], a["attr"]["layout"]
    assert c("unlink", path="/f") == {"destroy": None}
    assert c.err("getattr", path="/f") == "ENOENT"
    orphan = c("getattr", ino=ino)
    assert orphan["nlink"] == 0
    assert c("close", handle=a["handle"], size=10) == {"destroy": None}
    assert c("getattr", ino=ino)["size"] == 10
    assert c("close", handle=b["handle"]) == {"destroy": layout}
    assert c.err("getattr", ino=ino) == "ENOENT"


def test_rename_over_open_file_leaves_an_orphan(c: Client) -> None:
    h = c("open", path="/victim", flags=os.O_CREAT)
    c("create", path="/new")
    assert c("rename", src="/new", dst="/victim") == {"destroy": None}
    assert c("close", handle=h["handle"]) == {"destroy": h["attr"]["layout"]}


async def test_drop_client_closes_its_handles(mdt: MDT, c: Client) -> None:
    h = c("open", path="/f", flags=os.O_CREAT)
    c("open", path="/g", flags=os.O_CREAT)
    c("unlink", path="/f")
    assert mdt.drop_client("client-1") == 1
    assert mdt.open_handles == 0
    assert c.err("getattr", ino=h["attr"]["ino"]) == "ENOENT"
    # the orphan's objects wait in the destroy log for an OST to confirm them (node/osp.py),
    # and are handed out only once the log (and the file's removal) is committed
    layout = h["attr"]["layout"]
    assert mdt.unsaved and mdt.pending_destroys(10) == {}
    await mdt.commit()
    assert mdt.pending_destroys(10) == {ost: [layout["oid"]] for ost in layout["osts"]}
    mdt.destroys_done(layout["osts"][0], [layout["oid"]])
    assert layout["osts"][0] not in mdt.pending_destroys(10)
    assert mdt.unsaved  # the deletion goes with the next commit, no transno needed
    await mdt.commit()
    assert not mdt.unsaved


async def test_sweep_after_recovery_destroys_what_a_crash_left(tmp_path: Path) -> None:
    """An orphan whose handle went without a close (its holder's eviction was lost in the
    crash, or its handle row with it) has no name and no handle: the sweep removes it."""
    mdt = MDT("scratch-MDT0000", tmp_path / "mdt", fs="scratch", ost_count=2,
              commit_interval=3600)
    mdt.open(create=True)
    c = Client(mdt)
    h = c("open", path="/f", flags=os.O_CREAT)
    kept = c("open", path="/kept", flags=os.O_CREAT)
    c("unlink", path="/f")
    c("unlink", path="/kept")
    mdt.db.execute("DELETE FROM open_handles WHERE handle=?", (h["handle"],))
    await mdt.commit()
    mdt._close_db()
    mdt = MDT("scratch-MDT0000", tmp_path / "mdt", fs="scratch", ost_count=2,
              commit_interval=3600)
    mdt.open(create=True)
    assert mdt.sweep_orphans() == 1  # /kept is still open: it stays
    await mdt.commit()
    layout = h["attr"]["layout"]
    assert mdt.pending_destroys(10) == {ost: [layout["oid"]] for ost in layout["osts"]}
    assert Client(mdt, "r").err("getattr", ino=h["attr"]["ino"]) == "ENOENT"
    assert Client(mdt, "r")("getattr", ino=kept["attr"]["ino"])["nlink"] == 0
    assert mdt.sweep_orphans() == 0
    await mdt.commit()
    mdt._close_db()


def test_open_directory_removed_then_closed(c: Client) -> None:
    h = c("open", path="/d", flags=os.O_CREAT | os.O_EXCL)["handle"]
    c("close", handle=h)
    c("mkdir", path="/dir")
    h = c("open", path="/dir", flags=os.O_RDONLY)["handle"]
    c("rmdir", path="/dir")
    assert c("close", handle=h) == {"destroy": None}


# -- setattr ----------------------------------------------------------------------------------
def test_setattr(c: Client) -> None:
    f = c("create", path="/f", mode=0o644)
    r = c.req("setattr", {"path": "/f", "mode": 0o4700 | stat.S_IFDIR})
    assert r.data["mode"] == stat.S_IFREG | 0o4700  # chmod keeps the type bits
    assert r.pre_versions == [f["version"]] and r.data["version"] == r.transno
    assert r.data["ctime"] >= f["ctime"]
    g = c("setattr", path="/f", uid=10, gid=20, atime=1.5, mtime=2.5)
    assert (g["uid"], g["gid"], g["atime"], g["mtime"]) == (10, 20, 1.5, 2.5)
    assert c("setattr", path="/f", size=1000)["size"] == 1000
    assert c("setattr", path="/f", size=10)["size"] == 10
    assert c("setattr", ino=f["ino"], grow_to=5)["size"] == 10
    assert c("setattr", ino=f["ino"], grow_to=50)["size"] == 50
    c("mkdir", path="/d")
    assert c.err("setattr", path="/d", size=0) == "EISDIR"
    assert c.err("setattr", path="/f", size=-1) == "EINVAL"
    assert c.err("setattr", path="/f", mtime="now") == "EINVAL"
    assert c("getattr", path="/f")["size"] == 50
    assert c("setattr", path="/d", mode=0o700)["mode"] == stat.S_IFDIR | 0o700
    c("symlink", path="/l", target="f")
    assert c("setattr", path="/l", mode=0o600)["type"] == "f"  # follows, as chmod(2)
    assert c.err("setattr", path="/nope", mode=0o600) == "ENOENT"


def test_append_reserves_distinct_ranges_at_the_end(mdt: MDT, c: Client) -> None:
    """O_APPEND's offset is decided on the MDT: two writers (one opened before the other
    appended) never get the same bytes."""
    a = c("open", path="/log", flags=os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    b = c("open", path="/log", flags=os.O_WRONLY | os.O_APPEND)
    other = Client(mdt, "client-2", xid=1000)
    o = other("open", path="/log", flags=os.O_WRONLY | os.O_APPEND)
    got = [c("append", handle=a["handle"], length=3), c("append", handle=b["handle"], length=5),
           other("append", handle=o["handle"], length=2)]
    assert [g["offset"] for g in got] == [0, 3, 8]
    assert c("getattr", path="/log")["size"] == 10
    version = c("getattr", path="/log")["version"]
    r = c.req("append", {"handle": a["handle"], "length": 1})
    assert r.pre_versions == []  # appends commute: no VBR check, no new version
    assert c("getattr", path="/log")["version"] == version
    ro = c("open", path="/log", flags=os.O_RDONLY)
    assert c.err("append", handle=ro["handle"], length=1) == "EBADF"
    assert other.err("append", handle=a["handle"], length=1) == "EBADF"  # not its handle
    assert c.err("append", handle=a["handle"], length=-1) == "EINVAL"
    assert c("getattr", path="/log")["size"] == 11


def test_an_append_replay_keeps_its_offset(tmp_path: Path) -> None:
    mdt = MDT("scratch-MDT0000", tmp_path / "mdt", fs="scratch", ost_count=2,
              commit_interval=3600)
    mdt.open(create=True)
    c = Client(mdt)
    h = c("open", path="/log", flags=os.O_CREAT | os.O_WRONLY)
    t = mdt.next_transno() + 5
    r = mdt.handle("client-1", m.Request(99, "append", mdt.name,
                                         {"handle": h["handle"], "length": 4, "offset": 6},
                                         m.FLAG_REPLAY, t))[0]
    assert r.status is None and r.data == {"offset": 6, "size": 10}
    assert c("getattr", path="/log")["size"] == 10
    mdt._close_db()
