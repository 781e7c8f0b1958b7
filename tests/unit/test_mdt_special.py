"""mknod on the MDT (issue 19): FIFOs, sockets and device nodes, their errors, their replay,
and a device formatted before they existed."""

from __future__ import annotations

import asyncio
import os
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
    {"mode": -(1 << 20) | stat.S_IFIFO | 0o644},  # the low bits say FIFO, the rest nothing
])
def test_what_mknod_does_not_make_is_einval_and_changes_nothing(
        mdt: MDT, args: dict[str, object]) -> None:
    c = Client(mdt)
    before = c("readdir", path="/")["entries"]
    assert c.err("mknod", path="/x", **args) == "EINVAL"
    assert c("readdir", path="/")["entries"] == before
    c("mknod", path="/taken", mode=stat.S_IFIFO | 0o600)
    assert c.err("mknod", path="/taken", mode=stat.S_IFIFO | 0o600) == "EEXIST"


def test_a_device_formatted_before_device_nodes_gets_the_columns(tmp_path: Path) -> None:
    device = tmp_path / "old"
    t = open_mdt(device)
    Client(t)("mkdir", path="/kept")
    Client(t, xid=50)("create", path="/kept/old", mode=0o644)
    asyncio.run(t.commit())
    t._close_db()
    with sqlite3.connect(device / DB_FILE) as db:  # as an older Shoal formatted it
        db.execute("ALTER TABLE inodes DROP COLUMN rdev")
        db.execute("ALTER TABLE inodes DROP COLUMN blocks")
        db.execute("DROP TABLE xattrs")
    t = open_mdt(device, create=False)
    try:
        c = Client(t, xid=100)
        assert c("getattr", path="/kept")["type"] == "d"
        a = c("mknod", path="/kept/null", mode=stat.S_IFCHR | 0o666, rdev=0x0103)
        assert a["rdev"] == 0x0103
        # a file from before the count shows no count (the mount shows its size)
        assert "blocks" not in c("getattr", path="/kept/old")
        assert "blocks" not in c("setattr", path="/kept/old", grow_to=10, wrote_pages=1)
        c("setxattr", path="/kept/old", name=b"user.new", value=b"table")
    finally:
        t._close_db()


def test_blocks_in_use_count_what_was_written_not_the_holes(c: Client) -> None:
    """Issue 19: `truncate -s 1G` showed 2,097,152 blocks (ext4: 0). A file's blocks are
    the 4 KiB pages its writers report, up to what its size can hold."""
    f = c("create", path="/sparse", mode=0o644)
    assert f["blocks"] == 0
    assert c("setattr", path="/sparse", size=1 << 30)["blocks"] == 0  # truncate -s 1G
    a = c("setattr", path="/sparse", grow_to=(1 << 30), wrote_pages=1)  # 4 bytes at 3 MiB
    assert a["blocks"] == 8 and a["size"] == 1 << 30
    c("create", path="/full", mode=0o644)
    a = c("setattr", path="/full", grow_to=1 << 20, wrote_pages=256)  # 1 MiB written
    assert a["blocks"] == 2048
    # written again: no more than the size holds
    assert c("setattr", path="/full", wrote_pages=256)["blocks"] == 2048
    assert c("setattr", path="/full", size=5000)["blocks"] == 16  # cut: two pages left
    assert c.err("setattr", path="/full", wrote_pages=-1) == "EINVAL"
    h = c("open", path="/full", flags=os.O_WRONLY)["handle"]
    c("close", handle=h, size=3 << 20, mtime=1.0, wrote_pages=512)
    assert c("getattr", path="/full")["blocks"] == 16 + 4096
    assert "blocks" not in c("mkdir", path="/d")  # only regular files count theirs
