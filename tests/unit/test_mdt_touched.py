"""What an MDT operation changed under the clients' locks (MDT.take_touched): every inode
whose attributes, entries or xattrs moved, noted by the database's own triggers; nothing
for reads, a failed change, or an atime."""

from __future__ import annotations

from pathlib import Path

from tests.unit.mdt_client import Client, open_mdt

ROOT = 1


def test_each_change_names_the_inodes_it_moved(tmp_path: Path) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    c = Client(mdt)
    d = c("mkdir", path="/d")["ino"]
    assert mdt.take_touched() == [ROOT]  # a new name in /, and its mtime
    f = c("create", path="/d/f")["ino"]
    assert mdt.take_touched() == [d]
    assert mdt.take_touched() == []
    c("getattr", ino=f)
    c("lookup", parent=d, name="f")
    c("readdir", ino=d, cookie=0, count=10)
    assert mdt.take_touched() == []  # reads change nothing
    c("setattr", path="/d/f", mode=0o600)
    assert mdt.take_touched() == [f]
    c("setxattr", ino=f, name=b"user.k", value=b"v", flags=0)
    assert mdt.take_touched() == [f]
    c("rename", src="/d/f", dst="/f2")
    assert sorted(mdt.take_touched()) == sorted({ROOT, d, f})
    c("unlink", path="/f2")
    assert sorted(mdt.take_touched()) == sorted({ROOT, f})


def test_a_failed_change_and_an_atime_touch_nothing(tmp_path: Path) -> None:
    mdt = open_mdt(tmp_path / "mdt")
    c = Client(mdt)
    c("create", path="/f")
    mdt.take_touched()
    assert c.err("mkdir", path="/f") == "EEXIST"
    assert mdt.take_touched() == []
    f = c("getattr", path="/f")["ino"]
    mdt.ns.set_fields(f, atime=12345.0)
    assert mdt.take_touched() == []
