"""MDT durability: resends, replays, group commit, and what a crash keeps and loses."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shoal.protocol import messages as m
from shoal.protocol.transno import epoch_of, make_transno
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client

NAME = "scratch-MDT0000"



def make(device: Path) -> MDT:
    t = MDT(NAME, device, fs="scratch", ost_count=3, commit_interval=3600)
    t.open(create=True)
    return t


def test_resend_is_reconstructed_not_redone(tmp_path: Path) -> None:
    mdt = make(tmp_path / "mdt")
    c = Client(mdt)
    first = c.req("mkdir", {"path": "/a"})
    again = c.req("mkdir", {"path": "/a"}, xid=first.xid, flags=m.FLAG_RESEND)
    assert again.status is None and again.transno == first.transno and again.data == first.data
    assert mdt.stats["reconstructed"] == 1
    f = c.req("create", {"path": "/a/f"})
    unlinked = c.req("unlink", {"path": "/a/f"})
    resent = c.req("unlink", {"path": "/a/f"}, xid=unlinked.xid, flags=m.FLAG_RESEND)
    assert resent.status is None and resent.data == {"destroy": f.data["layout"]}
    assert c("getattr", path="/")["nlink"] == 3
    mdt._close_db()


def test_replay_uses_the_given_transno(tmp_path: Path) -> None:
    mdt = make(tmp_path / "mdt")
    c = Client(mdt)
    t = make_transno(mdt.epoch, 50)
    layout = {"pattern": "raid0", "stripe_count": 2, "stripe_size": 1 << 20, "osts": [2, 0],
              "oid": 0}
    r = c.req("create", {"path": "/f", "layout": layout}, flags=m.FLAG_REPLAY, transno=t)
    assert r.status is None and r.transno == t
    # the inode number is the transno and the layout is the one first handed out
    assert r.data["ino"] == t and r.data["layout"]["osts"] == [2, 0]
    assert r.data["layout"]["oid"] == t
    assert c("getattr", path="/f")["version"] == t
    nxt = c.req("mkdir", {"path": "/d"})
    assert nxt.transno == make_transno(mdt.epoch, 51)
    mdt._close_db()


async def test_commit_makes_changes_and_reply_data_survive_restart(tmp_path: Path) -> None:
    mdt = make(tmp_path / "mdt")
    c = Client(mdt)
    d = c.req("mkdir", {"path": "/d"})
    c("create", path="/d/f")
    assert mdt.last_committed < d.transno
    assert await mdt.commit() == mdt.last_transno
    epoch = mdt.epoch
    await mdt.stop()
    mdt = make(tmp_path / "mdt")
    assert mdt.epoch == epoch + 1
    c = Client(mdt, xid=c.xid)
    assert c("getattr", path="/d/f")["type"] == "f"
    resent = c.req("mkdir", {"path": "/d"}, xid=d.xid, flags=m.FLAG_RESEND)
    assert resent.status is None and resent.transno == d.transno and resent.data == d.data
    later = c.req("mkdir", {"path": "/e"})
    assert later.transno > d.transno and epoch_of(later.transno) == epoch + 1
    mdt._close_db()


async def test_close_without_commit_loses_exactly_the_tail(tmp_path: Path) -> None:
    mdt = make(tmp_path / "mdt")
    c = Client(mdt)
    c("mkdir", path="/kept")
    await mdt.commit()
    c("mkdir", path="/lost")
    c("create", path="/kept/lost")
    c("setattr", path="/kept", mode=0o700)
    mdt._close_db()  # the process died: the open transaction never committed
    mdt = make(tmp_path / "mdt")
    c = Client(mdt, xid=c.xid)
    kept = c("getattr", path="/kept")
    assert kept["mode"] == 0o40755 and kept["nlink"] == 2
    assert c("readdir", path="/kept")["entries"] == []
    assert [e[0] for e in c("readdir", path="/")["entries"]] == ["kept"]
    assert c("statfs")["files"] == 2
    mdt._close_db()


def _crashing_child(device: str, conn: Connection) -> None:
    """Do work, commit, do more, report, and die without committing."""

    async def main() -> None:
        mdt = make(Path(device))
        c = Client(mdt)
        out: dict[str, Any] = {"epoch": mdt.epoch}
        for key, op, args in [("a", "mkdir", {"path": "/a"}),
                              ("f", "create", {"path": "/a/f"}),
                              ("h", "open", {"path": "/a/f", "flags": os.O_RDWR})]:
            r = c.req(op, args)
            out[key] = (r.xid, r.transno, r.data)
        assert await mdt.commit() == out["h"][1]
        c("unlink", path="/a/f")  # lost: the file is linked again after the crash
        for key, op, args in [("b", "mkdir", {"path": "/b"}),
                              ("g", "open", {"path": "/a/g", "flags": os.O_CREAT})]:
            r = c.req(op, args)
            out[key] = (r.xid, r.transno, r.data)
        conn.send(out)
        conn.close()
        os._exit(0)

    asyncio.run(main())


async def test_killed_process_loses_uncommitted_and_replays_rebuild_it(tmp_path: Path) -> None:
    device = tmp_path / "mdt"
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_crashing_child, args=(str(device), child))
    proc.start()
    assert parent.poll(30)
    done = parent.recv()
    proc.join(10)
    assert proc.exitcode == 0

    mdt = make(device)
    c = Client(mdt, xid=100)
    assert mdt.epoch == done["epoch"] + 1
    assert mdt.last_committed == done["h"][1]
    f = c("getattr", path="/a/f")
    assert f["nlink"] == 1 and f["ino"] == done["f"][2]["ino"]
    assert c.req("getattr", {"path": "/b"}).status == "ENOENT"
    assert c.req("getattr", {"path": "/a/g"}).status == "ENOENT"
    # a committed request resent after the restart is answered from the reply data
    xid, transno, data = done["a"]
    r = c.req("mkdir", {"path": "/a"}, xid=xid, flags=m.FLAG_RESEND)
    assert (r.status, r.transno, r.data) == (None, transno, data)
    # the committed open handle is still there
    assert mdt.open_handles == 1
    # uncommitted requests replayed with their transnos come back as they were
    for key, op, args in [("b", "mkdir", {"path": "/b"}),
                          ("g", "open", {"path": "/a/g", "flags": os.O_CREAT,
                                         "layout": done["g"][2]["attr"]["layout"]})]:
        xid, transno, data = done[key]
        r = c.req(op, args, xid=xid, flags=m.FLAG_REPLAY, transno=transno)
        assert r.status is None and r.transno == transno
        if key == "b":
            assert r.data["ino"] == data["ino"]
        else:
            assert r.data["handle"] == data["handle"]
            assert r.data["attr"]["layout"] == data["attr"]["layout"]
    new = c.req("mkdir", {"path": "/c"})
    assert new.transno > max(v[1] for k, v in done.items() if k != "epoch")
    assert epoch_of(new.transno) == mdt.epoch
    c("close", handle=done["h"][2]["handle"])
    c("close", handle=done["g"][2]["handle"])
    assert mdt.open_handles == 0
    mdt._close_db()


async def test_orphan_survives_restart_until_closed(tmp_path: Path) -> None:
    mdt = make(tmp_path / "mdt")
    c = Client(mdt)
    h = c("open", path="/f", flags=os.O_CREAT | os.O_WRONLY)
    c("unlink", path="/f")
    await mdt.commit()
    mdt._close_db()
    mdt = make(tmp_path / "mdt")
    c = Client(mdt, xid=c.xid)
    assert c("getattr", ino=h["attr"]["ino"])["nlink"] == 0
    assert c("close", handle=h["handle"]) == {"destroy": h["attr"]["layout"]}
    assert c.req("getattr", {"ino": h["attr"]["ino"]}).status == "ENOENT"
    mdt._close_db()


async def test_commit_loop_and_sync(tmp_path: Path) -> None:
    mdt = MDT(NAME, tmp_path / "mdt", fs="scratch", ost_count=1, commit_interval=0.05)
    mdt.format()
    await mdt.start()
    c = Client(mdt)
    r = c.req("mkdir", {"path": "/d"})
    s = c.req("sync", {})
    assert s.status is None and s.transno == 0
    await asyncio.wait_for(mdt.wait_committed(r.transno), 5)
    assert mdt.last_committed >= r.transno
    await mdt.stop()
    mdt = make(tmp_path / "mdt")
    assert Client(mdt)("getattr", path="/d")["type"] == "d"
    mdt._close_db()
