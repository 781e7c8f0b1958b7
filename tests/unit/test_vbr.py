"""Version-based recovery in the target base, on real MDT and OST devices in tmp_path.

A replay carries the versions its original reply reported; the target redoes it only if the
objects it touches still have them, and otherwise fails it with EOVERFLOW, leaving nothing
behind. Also: which replays are answered without running, and how a client's slot is
given back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from shoal.protocol import messages as m
from shoal.protocol.transno import make_transno
from shoal.target.base import OpContext
from shoal.target.mdt import MDT
from shoal.target.ost import OST

MDT_NAME = "scratch-MDT0000"
OST_NAME = "scratch-OST0000"


def mdt_at(device: Path) -> MDT:
    t = MDT(MDT_NAME, device, fs="scratch", ost_count=2, commit_interval=3600)
    t.open(create=True)
    return t


def ost_at(device: Path) -> OST:
    t = OST(OST_NAME, device, fs="scratch", commit_interval=3600)
    t.open(create=True)
    return t


class Sender:
    """One client's requests, straight to handle() as the node sends them."""

    def __init__(self, svc: MDT | OST, uuid: str, xid: int = 0) -> None:
        self.svc, self.uuid, self.xid = svc, uuid, xid

    def req(self, op: str, args: dict[str, Any], *, bulk: bytes | None = None,
            replay_of: m.Reply | None = None, pre: list[int] | None = None,
            xid: int | None = None) -> tuple[m.Reply, OpContext | None]:
        if xid is None:
            self.xid += 1
            xid = self.xid
        r = m.Request(xid, op, self.svc.name, args, bulk=bulk)
        if replay_of is not None:
            r.flags, r.transno = m.FLAG_REPLAY, replay_of.transno
            r.pre_versions = list(replay_of.pre_versions if pre is None else pre)
        return self.svc.handle(self.uuid, r)

    def ok(self, op: str, **args: Any) -> m.Reply:
        reply, _ = self.req(op, args)
        assert reply.status is None, f"{op}: {reply.status} {reply.message}"
        return reply


def names(mdt: MDT, path: str = "/") -> list[str]:
    return [e[0] for e in Sender(mdt, "reader").ok("readdir", path=path).data["entries"]]


def test_replay_runs_when_versions_match(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a = Sender(mdt, "a")
    d = a.ok("mkdir", path="/d")
    f = a.ok("create", path="/d/f")
    assert f.pre_versions == [d.transno, 0]
    mdt._close_db()  # crash: nothing was committed
    mdt = mdt_at(tmp_path / "mdt")
    a = Sender(mdt, "a", a.xid)
    for orig, op, args in [(d, "mkdir", {"path": "/d"}), (f, "create", {"path": "/d/f"})]:
        reply, _ = a.req(op, args, replay_of=orig, xid=orig.xid)
        assert reply.status is None and reply.transno == orig.transno
        assert reply.pre_versions == orig.pre_versions
    assert names(mdt, "/d") == ["f"]
    mdt._close_db()


async def test_replay_with_moved_versions_fails_and_leaves_nothing(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b = Sender(mdt, "a"), Sender(mdt, "b")
    a.ok("create", path="/f")
    await mdt.commit()  # /f is on disk at its create version
    chmod = a.ok("setattr", path="/f", mode=0o600)  # lost in the crash
    chown = b.ok("setattr", path="/f", uid=7)  # depends on a's chmod
    assert chown.pre_versions == [chmod.transno]
    mdt._close_db()
    mdt = mdt_at(tmp_path / "mdt")
    before = Sender(mdt, "reader").ok("getattr", path="/f").data
    b = Sender(mdt, "b", b.xid)
    reply, _ = b.req("setattr", {"path": "/f", "uid": 7}, replay_of=chown, xid=chown.xid)
    assert reply.status == "EOVERFLOW" and "version" in reply.message
    assert Sender(mdt, "reader").ok("getattr", path="/f").data == before
    assert mdt.stats["err_EOVERFLOW"] == 1
    mdt._close_db()


async def test_independent_names_in_one_directory_replay_across_a_lost_one(
        tmp_path: Path) -> None:
    """replay-vbr 7a / replay-dual 0a: a lost client's create in a directory does not
    take a surviving client's create of another name in it down with it."""
    mdt = mdt_at(tmp_path / "mdt")
    lost, survivor = Sender(mdt, "lost"), Sender(mdt, "survivor")
    d = survivor.ok("mkdir", path="/d7")
    survivor.ok("create", path="/d7/old")
    await mdt.commit()
    lost.ok("create", path="/d7/b")
    lost.ok("mkdir", path="/d7/bdir")
    done = [(op, args, survivor.ok(op, **args)) for op, args in [
        ("create", {"path": "/d7/a"}), ("mkdir", {"path": "/d7/adir"}),
        ("symlink", {"path": "/d7/al", "target": "a"}),
        ("rename", {"src": "/d7/old", "dst": "/d7/new"}),
        ("link", {"src": "/d7/a", "path": "/d7/a2"}), ("unlink", {"path": "/d7/a2"})]]
    assert done[0][2].pre_versions == [d.transno, 0]
    mdt._close_db()  # crash: the lost client never replays
    mdt = mdt_at(tmp_path / "mdt")
    survivor = Sender(mdt, "survivor", survivor.xid)
    for op, args, orig in done:
        reply, _ = survivor.req(op, args, replay_of=orig, xid=orig.xid)
        assert reply.status is None, f"{op} {args}: {reply.status} {reply.message}"
    assert sorted(names(mdt, "/d7")) == ["a", "adir", "al", "new"]
    mdt._close_db()


async def test_create_of_a_name_a_lost_client_unlinked_is_refused(tmp_path: Path) -> None:
    """The dependent case: the name was free only because of the lost unlink."""
    mdt = mdt_at(tmp_path / "mdt")
    lost, survivor = Sender(mdt, "lost"), Sender(mdt, "survivor")
    survivor.ok("mkdir", path="/d7")
    old = survivor.ok("create", path="/d7/x")
    await mdt.commit()
    lost.ok("unlink", path="/d7/x")
    again = survivor.ok("create", path="/d7/x")
    mdt._close_db()
    mdt = mdt_at(tmp_path / "mdt")
    files = mdt.ns.files
    reply, _ = Sender(mdt, "survivor", survivor.xid).req("create", {"path": "/d7/x"},
                                                        replay_of=again, xid=again.xid)
    assert reply.status == "EOVERFLOW" and "version" in reply.message
    assert Sender(mdt, "r").ok("getattr", path="/d7/x").data["ino"] == old.data["ino"]
    assert mdt.ns.files == files
    mdt._close_db()


async def test_create_replay_in_a_directory_a_lost_change_moved_is_refused(
        tmp_path: Path) -> None:
    """A change to the directory itself (chmod) sets its version: a create behind a lost
    one fails, as in Lustre, where the parent's version is checked."""
    mdt = mdt_at(tmp_path / "mdt")
    lost, survivor = Sender(mdt, "lost"), Sender(mdt, "survivor")
    survivor.ok("mkdir", path="/d")
    await mdt.commit()
    chmod = lost.ok("setattr", path="/d", mode=0o700)
    f = survivor.ok("create", path="/d/f")
    assert f.pre_versions == [chmod.transno, 0]
    mdt._close_db()
    mdt = mdt_at(tmp_path / "mdt")
    reply, _ = Sender(mdt, "survivor", survivor.xid).req("create", {"path": "/d/f"},
                                                        replay_of=f, xid=f.xid)
    assert reply.status == "EOVERFLOW"
    assert names(mdt, "/d") == []
    mdt._close_db()


def test_a_name_operation_leaves_the_parent_version_alone(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, r = Sender(mdt, "a"), Sender(mdt, "r")
    d = a.ok("mkdir", path="/d")
    for op, args in [("create", {"path": "/d/f"}), ("mkdir", {"path": "/d/s"}),
                     ("rename", {"src": "/d/f", "dst": "/d/g"}), ("unlink", {"path": "/d/g"}),
                     ("rmdir", {"path": "/d/s"})]:
        before = r.ok("getattr", path="/d").data
        a.ok(op, **args)
        after = r.ok("getattr", path="/d").data
        assert after["version"] == d.transno, op
        assert after["mtime"] >= before["mtime"], op
    assert r.ok("getattr", path="/d").data["nlink"] == 2
    a.ok("setattr", path="/d", mode=0o700)
    assert r.ok("getattr", path="/d").data["version"] > d.transno
    mdt._close_db()


def test_replay_touching_more_or_fewer_objects_than_the_original_fails(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a = Sender(mdt, "a")
    root_v = Sender(mdt, "reader").ok("getattr", path="/").data["version"]
    t = make_transno(mdt.epoch, 40)
    fake = m.Reply(99, transno=t, pre_versions=[root_v])  # mkdir touches 2, not 1
    reply, _ = a.req("mkdir", {"path": "/d"}, replay_of=fake)
    assert reply.status == "EOVERFLOW" and "no object" in reply.message
    assert names(mdt) == []
    # a non-exclusive create that found its file touches nothing; the original created it
    Sender(mdt, "other").ok("create", path="/g")
    root_v = Sender(mdt, "reader").ok("getattr", path="/").data["version"]
    fake = m.Reply(100, transno=t + 1, pre_versions=[root_v, 0])
    reply, _ = a.req("create", {"path": "/g", "exclusive": False}, replay_of=fake)
    assert reply.status == "EOVERFLOW" and "changed 0 objects" in reply.message
    mdt._close_db()


def test_replay_without_versions_is_not_checked(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    Sender(mdt, "other").ok("mkdir", path="/x")
    t = make_transno(mdt.epoch, 50)
    reply, _ = Sender(mdt, "a").req("mkdir", {"path": "/d"}, replay_of=m.Reply(1, transno=t))
    assert reply.status is None and reply.data["ino"] == t
    mdt._close_db()


def test_ost_write_replay_checks_the_object_version(tmp_path: Path) -> None:
    ost = ost_at(tmp_path / "ost")
    a, b = Sender(ost, "a"), Sender(ost, "b")

    def write(s: Sender, data: bytes, **kw: Any) -> tuple[m.Reply, OpContext | None]:
        return s.req("write", {"oid": 5, "offset": 0}, bulk=data,
                     **kw)

    wa, _ = write(a, b"first")
    wb, _ = write(b, b"second")
    assert wb.pre_versions == [wa.transno]
    ost._close_db()
    ost = ost_at(tmp_path / "ost")
    reply, _ = write(Sender(ost, "b", b.xid), b"second", replay_of=wb, xid=wb.xid)
    assert reply.status == "EOVERFLOW"
    assert Sender(ost, "r").ok("getattr", oid=5).data == {"size": 0, "version": 0, "blocks": 0}
    reply, _ = write(Sender(ost, "a", a.xid), b"first", replay_of=wa, xid=wa.xid)
    assert reply.status is None
    reply, _ = write(Sender(ost, "b", b.xid), b"second", replay_of=wb, xid=wb.xid)
    assert reply.status is None
    assert Sender(ost, "r").ok("read", oid=5, offset=0, length=10).bulk == b"second"
    ost._close_db()


def test_ost_destroy_replay_ignores_versions(tmp_path: Path) -> None:
    ost = ost_at(tmp_path / "ost")
    a = Sender(ost, "a")
    a.req("write", {"oid": 1, "offset": 0}, bulk=b"x")
    gone = a.ok("destroy", oids=[1])
    assert len(gone.pre_versions) == 1
    ost._close_db()
    ost = ost_at(tmp_path / "ost")
    reply, _ = Sender(ost, "a", a.xid).req("destroy", {"oids": [1]}, replay_of=gone,
                                          xid=gone.xid)
    assert reply.status is None and reply.data == {"destroyed": 0}
    ost._close_db()


async def test_committed_replay_is_answered_only_for_its_own_client(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a = Sender(mdt, "a")
    d = a.ok("mkdir", path="/d")
    # the client acknowledged the reply (known_xid), so its reply data may go
    a.svc.handle("a", m.Request(a.xid + 1, "getattr", mdt.name, {"path": "/"},
                                known_xid=a.xid + 1))
    a.xid += 1
    await mdt.commit()
    await mdt.stop()
    mdt = mdt_at(tmp_path / "mdt")
    assert d.transno <= mdt.last_committed
    reply, _ = Sender(mdt, "a", a.xid).req("mkdir", {"path": "/d"}, replay_of=d, xid=d.xid)
    assert reply.status is None and reply.transno == d.transno  # not EEXIST: not redone
    assert mdt.stats["replay_committed"] == 1
    reply, _ = Sender(mdt, "b").req("mkdir", {"path": "/d"}, replay_of=d, xid=d.xid)
    assert reply.status == "EOVERFLOW"  # b never had that transaction
    assert not mdt.can_answer_replay("b", m.Request(d.xid, "mkdir", mdt.name, transno=d.transno))
    assert mdt.can_answer_replay("a", m.Request(d.xid, "mkdir", mdt.name, transno=d.transno))
    mdt._close_db()


async def test_forget_client_frees_its_slot_on_disk(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    a, b = Sender(mdt, "a"), Sender(mdt, "b")
    old = a.ok("mkdir", path="/old")
    b.ok("mkdir", path="/b")
    await mdt.commit()
    mdt.forget_client("a")
    assert mdt.known_clients == ["b"]
    # a's resend is now a new request (its reply data is gone): redone, so EEXIST
    reply, _ = a.req("mkdir", {"path": "/old"}, xid=old.xid)
    assert reply.status == "EEXIST"
    new = a.ok("mkdir", path="/new")  # a new export under the same uuid
    await mdt.commit()
    await mdt.stop()
    mdt = mdt_at(tmp_path / "mdt")
    assert mdt.boot_clients == {"a": new.transno, "b": mdt.boot_clients["b"]}
    rows = mdt.db.execute("SELECT xid FROM reply_data WHERE client='a'").fetchall()
    assert rows == [(new.xid,)]
    mdt.forget_client("a")
    mdt.forget_client("nobody")  # nothing kept: nothing to do
    await mdt.commit()
    await mdt.stop()
    mdt = mdt_at(tmp_path / "mdt")
    assert sorted(mdt.boot_clients) == ["b"]
    mdt._close_db()


async def test_a_client_slot_is_on_disk_when_its_connect_is_answered(tmp_path: Path) -> None:
    """Issue 24 (3): a client whose first change comes after the last commit is still known
    to the restarted target, because its slot was committed when it connected."""
    mdt = mdt_at(tmp_path / "mdt")
    await mdt.client_connected("early")
    await mdt.client_connected("early")  # known: nothing more to write
    mdt.no_commit = True  # the barrier: nothing reaches the disk from here on
    early = Sender(mdt, "early")
    early.ok("mkdir", path="/a")  # its first change, never committed
    await mdt.client_connected("late")  # connected behind the barrier: as lost as the rest
    _, ctx = early.req("mkdir", {"path": "/b"})
    assert ctx is not None and not ctx.force_commit  # a change waits for no commit
    mdt._close_db()  # crash
    mdt = mdt_at(tmp_path / "mdt")
    assert mdt.boot_clients == {"early": 0}
    mdt._close_db()


async def test_a_slot_freed_and_connected_again_is_written_again(tmp_path: Path) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    await mdt.client_connected("a")
    mdt.forget_client("a")
    await mdt.client_connected("a")  # a new export under the same uuid
    mdt._close_db()
    mdt = mdt_at(tmp_path / "mdt")
    assert mdt.boot_clients == {"a": 0}
    mdt._close_db()


def test_mdt_changes_record_the_versions_they_depend_on(tmp_path: Path) -> None:
    """Every modifying MDT op reports the pre-versions VBR needs (or none, where it changes
    no versioned object): the audit behind issue 5."""
    mdt = mdt_at(tmp_path / "mdt")
    a = Sender(mdt, "a")
    counts = {
        "mkdir": len(a.ok("mkdir", path="/d").pre_versions),
        "create": len(a.ok("create", path="/d/f").pre_versions),
        "symlink": len(a.ok("symlink", path="/d/l", target="f").pre_versions),
        "link": len(a.ok("link", src="/d/f", path="/h").pre_versions),
        "setattr": len(a.ok("setattr", path="/h", mode=0o600).pre_versions),
        "setstripe": len(a.ok("setstripe", path="/d", stripe_count=1).pre_versions),
        "rename": len(a.ok("rename", src="/h", dst="/d/g").pre_versions),
        "rename_same_dir_over": len(a.ok("rename", src="/d/l", dst="/d/g").pre_versions),
        "create_k": len(a.ok("create", path="/k").pre_versions),
        "rename_over": len(a.ok("rename", src="/d/g", dst="/k").pre_versions),
        "unlink": len(a.ok("unlink", path="/k").pre_versions),
        "open_trunc": len(a.ok("open", path="/d/f", flags=os.O_RDWR | os.O_TRUNC)
                          .pre_versions),
    }
    h = a.ok("open", path="/d/f", flags=os.O_RDWR)
    counts["open"] = len(h.pre_versions)
    counts["close_size"] = len(a.ok("close", handle=h.data["handle"], size=10).pre_versions)
    a.ok("unlink", path="/d/f")
    a.ok("mkdir", path="/e")
    counts["rmdir"] = len(a.ok("rmdir", path="/e").pre_versions)
    assert counts == {"mkdir": 2, "create": 2, "symlink": 2, "link": 2, "setattr": 1,
                      "setstripe": 1, "rename": 4, "rename_same_dir_over": 4, "create_k": 2,
                      "rename_over": 4, "unlink": 2,
                      "open_trunc": 1, "open": 0, "close_size": 1, "rmdir": 2}
    mdt._close_db()


async def test_clients_connecting_at_once_share_a_commit(tmp_path: Path) -> None:
    """A crowd of clients mounting at once (bench failover's 200) waits for one group
    commit, not a commit each: under a write load every commit flushes the journal."""
    mdt = MDT(MDT_NAME, tmp_path / "mdt", fs="scratch", ost_count=2, commit_interval=3600)
    mdt.format()
    await mdt.start()
    try:
        before = mdt.commits
        await asyncio.gather(*(mdt.client_connected(f"c{i}") for i in range(50)))
        assert mdt.commits - before <= 2
        assert len(mdt.known_clients) == 50
    finally:
        await mdt.stop()
    mdt = mdt_at(tmp_path / "mdt")
    assert len(mdt.boot_clients) == 50
    mdt._close_db()


async def test_an_xattr_replay_whose_inode_a_lost_client_changed_fails_by_version(
        tmp_path: Path) -> None:
    """A flag check before the version check answered such a replay EEXIST (or ENODATA),
    which the client only logs: the acknowledged setxattr was gone and nobody evicted."""
    mdt = mdt_at(tmp_path / "mdt")
    lost, survivor = Sender(mdt, "lost"), Sender(mdt, "survivor")
    survivor.ok("create", path="/f")
    survivor.ok("setxattr", path="/f", name=b"user.a", value=b"old")
    await mdt.commit()
    lost.ok("removexattr", path="/f", name=b"user.a")  # lost in the crash
    create = survivor.ok("setxattr", path="/f", name=b"user.a", value=b"new", flags=1)
    replace = survivor.ok("setxattr", path="/f", name=b"user.b", value=b"b")
    mdt._close_db()
    mdt = mdt_at(tmp_path / "mdt")
    survivor = Sender(mdt, "survivor", survivor.xid)
    for orig, args in [(create, {"name": b"user.a", "value": b"new", "flags": 1}),
                       (replace, {"name": b"user.b", "value": b"b"})]:
        reply, _ = survivor.req("setxattr", {"path": "/f", **args}, replay_of=orig,
                                xid=orig.xid)
        assert reply.status == "EOVERFLOW", reply
    mdt._close_db()
