"""mknod on the MDT (issue 19): FIFOs, sockets and device nodes, their errors, their replay,
and a device formatted before they existed."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from shoal.target.base import DB_FILE
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client, open_mdt


def test_each_kind_of_special_file_and_its_type(mdt: MDT) -> None:
    c = Client(mdt)
    kinds = {"p": stat.S_IFIFO, "s": stat.S_IFSOCK, "c": stat.S_IFCHR, "b": stat.S_IFBLK}
    for letter, fmt in kinds.items():
        a = c("mknod", path=f"/{letter}", mode=fmt | 0o640, rdev=0x0103, uid=7, gid=8)
        assert a["type"] == letter and a["mode"] == fmt | 0o640
        assert (a["uid"], a["gid"], a["size"], a["nlink"]) == (7, 8, 0, 1)
        assert "layout" not in a  # no objects on any OST
        # only device nodes keep a device number
        assert a.get("rdev", 0) == (0x0103 if letter in "cb" else 0)
        assert c("getattr", path=f"/{letter}") == a
    entries = {e[0]: e[2] for e in c("readdir", path="/")["entries"]}
    assert entries == {k: k for k in kinds}
    c("link", src="/p", path="/p2")
    assert c("getattr", path="/p")["nlink"] == 2
    assert {e[0]: e[2] for e in c("readdir", path="/")["entries"]}["p2"] == "p"


@pytest.mark.parametrize("args", [
    {"mode": stat.S_IFREG | 0o644},  # create's
    {"mode": stat.S_IFDIR | 0o755},  # mkdir's
    {"mode": stat.S_IFLNK | 0o777},  # symlink's
    {"mode": 0o644},  # no type at all
    {"mode": stat.S_IFCHR | 0o600, "rdev": -1},
    {"mode": stat.S_IFCHR | 0o600, "rdev": 1 << 63},
    {"mode": stat.S_IFCHR | 0o600, "rdev": "1"},
    {"mode": "fifo"},
])
def test_what_mknod_does_not_make_is_einval_and_changes_nothing(
        mdt: MDT, args: dict[str, object]) -> None:
    c = Client(mdt)
    before = c("readdir", path="/")["entries"]
    assert c.err("mknod", path="/x", **args) == "EINVAL"
    assert c("readdir", path="/")["entries"] == before
    c("mknod", path="/taken", mode=stat.S_IFIFO | 0o600)
    assert c.err("mknod", path="/taken", mode=stat.S_IFIFO | 0o600) == "EEXIST"


def test_a_device_formatted_before_device_nodes_gets_the_column(tmp_path: Path) -> None:
    device = tmp_path / "old"
    t = open_mdt(device)
    Client(t)("mkdir", path="/kept")
    asyncio.run(t.commit())
    t._close_db()
    with sqlite3.connect(device / DB_FILE) as db:  # as an older Shoal formatted it
        db.execute("ALTER TABLE inodes DROP COLUMN rdev")
    t = open_mdt(device, create=False)
    try:
        c = Client(t, xid=100)
        assert c("getattr", path="/kept")["type"] == "d"
        a = c("mknod", path="/kept/null", mode=stat.S_IFCHR | 0o666, rdev=0x0103)
        assert a["rdev"] == 0x0103
    finally:
        t._close_db()
