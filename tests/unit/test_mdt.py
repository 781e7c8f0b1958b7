"""MDT namespace operations and their errors, against a real SQLite device in tmp_path."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from shoal.protocol import messages as m
from shoal.target.base import OpSpec
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client

NAME = "scratch-MDT0000"





def names(c: Client, path: str) -> list[str]:
    return sorted(e[0] for e in c("readdir", path=path)["entries"])


# -- root, getattr, lookup, statfs ------------------------------------------------------------
def test_fresh_device_has_the_root(c: Client) -> None:
    root = c("getattr", path="/")
    assert root["ino"] == 1 and root["type"] == "d"
    assert root["mode"] == stat.S_IFDIR | 0o755 and root["nlink"] == 2
    assert c("getattr", ino=1) == root
    assert c("statfs")["namelen"] == 255


def test_getattr_lookup_and_statfs(c: Client) -> None:
    files = c("statfs")["files"]
    d = c("mkdir", path="/d", mode=0o700, uid=5, gid=6)
    f = c("create", path="/d/f", mode=0o640, uid=7, gid=8)
    assert c("statfs")["files"] == files + 2
    assert c("getattr", path="/d/f") == f
    assert c("getattr", ino=f["ino"]) == f
    assert c("lookup", parent=d["ino"], name="f") == f
    assert c("lookup", parent=d["ino"], name=".")["ino"] == d["ino"]
    assert c("lookup", parent=d["ino"], name="..")["ino"] == 1
    assert (f["uid"], f["gid"], f["mode"]) == (7, 8, stat.S_IFREG | 0o640)
    assert (d["uid"], d["gid"], d["mode"]) == (5, 6, stat.S_IFDIR | 0o700)
    assert c.err("lookup", parent=d["ino"], name="nope") == "ENOENT"
    assert c.err("lookup", parent=f["ino"], name="x") == "ENOTDIR"
    assert c.err("getattr", path="/d/nope") == "ENOENT"
    assert c.err("getattr", ino=999_999) == "ENOENT"
    assert c.err("getattr", path="/d/f/x") == "ENOTDIR"
    assert c.err("getattr", path="/d/f/") == "ENOTDIR"


def test_reads_do_not_write(mdt: MDT, c: Client) -> None:
    c("mkdir", path="/d")
    c("symlink", path="/d/l", target="/d")
    before = mdt.db.total_changes
    for op, args in [("getattr", {"path": "/d"}), ("lookup", {"parent": 1, "name": "d"}),
                     ("readdir", {"path": "/d"}), ("readlink", {"path": "/d/l"}),
                     ("statfs", {}), ("sync", {})]:
        r = c.req(op, args)
        assert r.status is None and r.transno == 0
    assert mdt.db.total_changes == before


@pytest.mark.parametrize("path", ["rel", "", "a/b", 5, None, ["/x"], "/a\0b"])
def test_bad_paths_are_einval(c: Client, path: Any) -> None:
    assert c.err("getattr", path=path) == "EINVAL"
    assert c.err("mkdir", path=path) == "EINVAL"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b", 7])
def test_bad_names_are_einval(c: Client, name: Any) -> None:
    assert c.err("mkdir", parent=1, name=name) == "EINVAL"
    assert c.err("create", parent=1, name=name) == "EINVAL"
    assert c("readdir", path="/")["entries"] == []


def test_name_length_is_counted_in_utf8_bytes(c: Client) -> None:
    c("create", path="/" + "x" * 255)
    assert c.err("create", path="/" + "x" * 256) == "ENAMETOOLONG"
    c("create", path="/" + "é" * 127)  # 254 bytes
    assert c.err("create", path="/" + "é" * 128) == "ENAMETOOLONG"  # 256 bytes
    assert c.err("getattr", path="/" + "y" * 256) == "ENAMETOOLONG"
    assert c.err("mkdir", path="/a" * 2048) == "ENAMETOOLONG"


def test_bad_argument_types_are_einval(c: Client) -> None:
    assert c.err("mkdir", path="/d", mode="rwx") == "EINVAL"
    assert c.err("getattr", ino="1") == "EINVAL"
    assert c.err("getattr", ino=True) == "EINVAL"
    assert c.err("getattr") == "EINVAL"
    assert c.err("readdir", path="/", cookie=-1) == "EINVAL"
    assert c.err("no_such_op") == "EOPNOTSUPP"
    assert c("readdir", path="/")["entries"] == []


@pytest.mark.parametrize("op, args", [
    ("getattr", {"ino": 1 << 70}),
    ("readdir", {"path": "/", "cookie": 1 << 64}),
    ("mkdir", {"path": "/d", "uid": 1 << 63}),
    ("mkdir", {"path": "/d", "gid": -(1 << 64)}),
    ("create", {"path": "/f", "stripe_size": 1 << 80}),
    ("create", {"path": "/f", "stripe_count": True}),
    ("setattr", {"path": "/", "mtime": float("nan")}),
    ("setattr", {"path": "/", "atime": float("inf")}),
    ("setattr", {"path": "/", "mtime": 1e300}),
    ("setattr", {"path": "/", "uid": 2.5}),
])
def test_values_the_database_cannot_hold_are_einval(c: Client, op: str,
                                                    args: dict[str, Any]) -> None:
    root = c("getattr", path="/")
    assert c.err(op, **args) == "EINVAL"
    assert c("getattr", path="/") == root
    assert c("readdir", path="/")["entries"] == []


# -- mkdir / rmdir ----------------------------------------------------------------------------
def test_mkdir_links_times_and_versions(mdt: MDT, c: Client) -> None:
    root0 = c("getattr", path="/")
    r = c.req("mkdir", {"path": "/a", "mode": 0o750})
    a = r.data
    assert r.status is None and a["type"] == "d" and a["nlink"] == 2
    assert a["mode"] == stat.S_IFDIR | 0o750 and a["ino"] == r.transno
    assert a["version"] == r.transno and r.pre_versions == [root0["version"], 0]
    root1 = c("getattr", path="/")
    # a name operation moves the parent's times and nlink, not its version (VBR)
    assert root1["nlink"] == 3 and root1["version"] == root0["version"]
    assert root1["mtime"] >= root0["mtime"] and root1["ctime"] >= root0["ctime"]
    b = c("mkdir", parent=a["ino"], name="b")
    assert c("getattr", path="/a/b") == b
    assert c("getattr", path="/a")["nlink"] == 3
    assert c.err("mkdir", path="/a") == "EEXIST"
    assert c.err("mkdir", path="/nope/x") == "ENOENT"
    assert c.err("mkdir", parent=999, name="x") == "ENOENT"
    c("create", path="/f")
    assert c.err("mkdir", path="/f/x") == "ENOTDIR"
    f = c("getattr", path="/f")
    assert c.err("mkdir", parent=f["ino"], name="x") == "ENOTDIR"
    assert c.err("mkdir", path="/a/.") == "EINVAL"


def test_rmdir(c: Client) -> None:
    c("mkdir", path="/a")
    c("mkdir", path="/a/b")
    c("create", path="/a/f")
    assert c.err("rmdir", path="/a") == "ENOTEMPTY"
    assert c.err("rmdir", path="/a/f") == "ENOTDIR"
    assert c.err("rmdir", path="/a/zz") == "ENOENT"
    assert c.err("rmdir", path="/") in ("EBUSY", "EINVAL")
    assert c.err("rmdir", path="/a/b/.") == "EINVAL"
    assert c("rmdir", path="/a/b") == {}
    assert c("getattr", path="/a")["nlink"] == 2
    assert c.err("getattr", path="/a/b") == "ENOENT"
    c("unlink", path="/a/f")
    a = c("getattr", path="/a")
    c("rmdir", parent=1, name="a")
    assert c.err("getattr", ino=a["ino"]) == "ENOENT"
    assert c("getattr", path="/")["nlink"] == 2


def test_removed_directory_path_is_not_cached(c: Client) -> None:
    c("mkdir", path="/a")
    c("create", path="/a/f")  # puts /a in the path cache
    c("unlink", path="/a/f")
    c("rmdir", path="/a")
    assert c.err("create", path="/a/g") == "ENOENT"
    new = c("mkdir", path="/a")
    assert c("create", path="/a/g")["ino"] == c("lookup", parent=new["ino"], name="g")["ino"]


# -- create / unlink / link -------------------------------------------------------------------
def test_create_and_exclusive(c: Client) -> None:
    f = c("create", path="/f", mode=0o600)
    assert f["type"] == "f" and f["nlink"] == 1 and f["size"] == 0
    assert c.err("create", path="/f") == "EEXIST"
    again = c("create", path="/f", exclusive=False)
    assert again["ino"] == f["ino"]
    c("mkdir", path="/d")
    assert c.err("create", path="/d", exclusive=False) == "EISDIR"
    assert c.err("create", path="/nope/f") == "ENOENT"
    assert c.err("create", path="/f/g") == "ENOTDIR"
    assert c.err("create", path="/g/") == "EISDIR"


def test_unlink_returns_layout_when_last_name_goes(c: Client) -> None:
    f = c("create", path="/f")
    c("mkdir", path="/d")
    linked = c("link", src="/f", path="/d/g")
    assert linked["ino"] == f["ino"] and linked["nlink"] == 2
    assert c("unlink", path="/f") == {"destroy": None}
    assert c("getattr", path="/d/g")["nlink"] == 1
    assert c("unlink", path="/d/g") == {"destroy": f["layout"]}
    assert c.err("getattr", ino=f["ino"]) == "ENOENT"
    assert c.err("unlink", path="/f") == "ENOENT"
    assert c.err("unlink", path="/d") == "EISDIR"
    assert c.err("unlink", path="/nope/x") == "ENOENT"


def test_unlink_updates_parent_and_pre_versions(c: Client) -> None:
    c("mkdir", path="/d")
    f = c("create", path="/d/f")
    d0 = c("getattr", path="/d")
    r = c.req("unlink", {"path": "/d/f"})
    assert r.pre_versions == [d0["version"], f["version"]]
    d1 = c("getattr", path="/d")
    assert d1["version"] == d0["version"] and d1["mtime"] >= d0["mtime"]


def test_link_rules(c: Client) -> None:
    f = c("create", path="/f")
    c("mkdir", path="/d")
    assert c.err("link", src="/d", path="/d2") == "EPERM"
    assert c.err("link", src="/f", path="/d") == "EEXIST"
    assert c.err("link", src="/nope", path="/x") == "ENOENT"
    assert c.err("link", src="/f", path="/nope/x") == "ENOENT"
    by_ino = c("link", ino=f["ino"], parent=1, name="g")
    assert by_ino["nlink"] == 2
    assert c("getattr", path="/g")["ino"] == f["ino"]


def test_symlinks_in_walks(c: Client) -> None:
    c("mkdir", path="/a")
    c("mkdir", path="/a/b")
    f = c("create", path="/a/b/f")
    rel = c("symlink", path="/a/rel", target="b")
    assert rel["type"] == "l" and rel["size"] == 1
    c("symlink", path="/abs", target="/a/b")
    c("symlink", path="/a/b/up", target="../..")
    assert c("readlink", path="/a/rel") == {"target": "b"}
    assert c("getattr", path="/a/rel/f")["ino"] == f["ino"]
    assert c("getattr", path="/abs/f")["ino"] == f["ino"]
    assert c("getattr", path="/abs/up/a/b/f")["ino"] == f["ino"]
    assert c("getattr", path="/abs")["type"] == "l"
    assert c("getattr", path="/abs", follow=True)["type"] == "d"
    assert c("getattr", path="/abs/")["type"] == "d"
    assert c("create", path="/abs/g")["ino"] == c("getattr", path="/a/b/g")["ino"]
    assert c.err("readlink", path="/a") == "EINVAL"
    c("symlink", path="/loop", target="/loop")
    assert c.err("getattr", path="/loop/x") == "ELOOP"
    c("symlink", path="/dangling", target="/nowhere")
    assert c.err("getattr", path="/dangling/x") == "ENOENT"
    # O_CREAT without O_EXCL creates a dangling symlink's target, as open(2) does
    created = c("create", path="/dangling", exclusive=False)
    assert c("getattr", path="/nowhere")["ino"] == created["ino"]
    assert c.err("symlink", path="/abs", target="x") == "EEXIST"
    assert c.err("symlink", path="/e", target="") == "ENOENT"


def test_dots_and_slashes_in_paths(c: Client) -> None:
    c("mkdir", path="/a")
    c("mkdir", path="/a/b")
    b = c("getattr", path="/a/b")
    for p in ("/a/./b", "/a/b/../b", "//a//b", "/a/b/", "/../a/b", "/a/b/."):
        assert c("getattr", path=p)["ino"] == b["ino"], p
    assert c("getattr", path="/a/b/..")["ino"] == c("getattr", path="/a")["ino"]
    assert c("create", path="/a/./b/../b/f")["ino"] == c("getattr", path="/a/b/f")["ino"]


# -- rename -----------------------------------------------------------------------------------
def test_rename_file_replaces_atomically(c: Client) -> None:
    f = c("create", path="/f")
    g = c("create", path="/g")
    assert c("rename", src="/f", dst="/g") == {"destroy": g["layout"]}
    assert c("getattr", path="/g")["ino"] == f["ino"]
    assert c.err("getattr", path="/f") == "ENOENT"
    assert c.err("getattr", ino=g["ino"]) == "ENOENT"
    h = c("create", path="/h")
    c("link", src="/h", path="/h2")
    # the replaced inode has another name: nothing to destroy
    assert c("rename", src="/g", dst="/h") == {"destroy": None}
    assert c("getattr", path="/h2")["nlink"] == 1 and c("getattr", path="/h2")["ino"] == h["ino"]


def test_rename_rules(c: Client) -> None:
    c("mkdir", path="/d")
    c("mkdir", path="/d/sub")
    c("mkdir", path="/e")
    c("create", path="/e/x")
    c("mkdir", path="/empty")
    c("create", path="/f")
    assert c.err("rename", src="/f", dst="/d") == "EISDIR"
    assert c.err("rename", src="/d", dst="/f") == "ENOTDIR"
    assert c.err("rename", src="/d", dst="/e") == "ENOTEMPTY"
    assert c.err("rename", src="/d", dst="/d/sub/x") == "EINVAL"
    assert c.err("rename", src="/d", dst="/d/x") == "EINVAL"
    assert c.err("rename", src="/d/sub", dst="/d") == "ENOTEMPTY"
    assert c.err("rename", src="/e/x", dst="/e") == "ENOTEMPTY"  # not EISDIR: Linux's order
    assert c.err("rename", src="/nope", dst="/x") == "ENOENT"
    assert c.err("rename", src="/f", dst="/nope/x") == "ENOENT"
    assert c.err("rename", src="/f/", dst="/x") == "ENOTDIR"
    assert c.err("rename", src="/", dst="/x") in ("EBUSY", "EINVAL")
    assert c.err("rename", src="/f", dst="/d/.") == "EINVAL"
    assert c("getattr", path="/d/sub")["type"] == "d"  # nothing moved
    assert c("rename", src="/d", dst="/d") == {"destroy": None}
    c("link", src="/f", path="/f2")
    assert c("rename", src="/f", dst="/f2") == {"destroy": None}
    assert c("getattr", path="/f")["nlink"] == 2  # hard links of one inode: a no-op


def test_rename_directory_moves_subtree(c: Client) -> None:
    c("mkdir", path="/a")
    c("mkdir", path="/b")
    c("mkdir", path="/a/d")
    f = c("create", path="/a/d/f")
    c("mkdir", path="/b/empty")
    assert c("getattr", path="/b")["nlink"] == 3
    r = c.req("rename", {"src": "/a/d", "dst": "/b/empty"})
    assert r.status is None and len(r.pre_versions) == 4
    assert c("getattr", path="/b/empty/f")["ino"] == f["ino"]
    assert c("getattr", path="/b/empty/..")["ino"] == c("getattr", path="/b")["ino"]
    assert c("getattr", path="/a")["nlink"] == 2
    assert c("getattr", path="/b")["nlink"] == 3
    assert c.err("getattr", path="/a/d/f") == "ENOENT"  # the cached path went with it
    assert c.err("create", path="/a/d/g") == "ENOENT"
    c("rename", src_parent=1, src_name="b", dst_parent=1, dst_name="c")
    assert c("getattr", path="/c/empty/f")["ino"] == f["ino"]
    assert names(c, "/") == ["a", "c"]


# -- readdir ----------------------------------------------------------------------------------
def test_readdir_entries_and_errors(c: Client) -> None:
    d = c("mkdir", path="/d")
    f = c("create", path="/d/f")
    c("mkdir", path="/d/s")
    c("symlink", path="/d/l", target="f")
    got = c("readdir", ino=d["ino"])
    assert got["cookie"] == 0
    assert sorted(map(tuple, got["entries"])) == sorted(
        [("f", f["ino"], "f"), ("s", c("getattr", path="/d/s")["ino"], "d"),
         ("l", c("getattr", path="/d/l")["ino"], "l")])
    assert c.err("readdir", path="/d/f") == "ENOTDIR"
    assert c.err("readdir", path="/nope") == "ENOENT"


def test_readdir_pages_see_every_survivor_once(c: Client) -> None:
    d = c("mkdir", path="/big")
    n = 5000
    for i in range(n):
        c("create", parent=d["ino"], name=f"f{i:05d}")
    seen: list[str] = []
    removed: set[str] = set()
    removed_unseen: set[str] = set()  # gone before their page came: must never show up
    cookie, pages = 0, 0
    while True:
        page = c("readdir", path="/big", cookie=cookie, count=1000)
        assert len(page["entries"]) <= 1000
        seen += [e[0] for e in page["entries"]]
        pages += 1
        # between pages: remove some names already seen and some still ahead, add new ones
        for i in range(pages * 7, n, 97):
            name = f"f{i:05d}"
            if name not in removed:
                c("unlink", path=f"/big/{name}")
                removed.add(name)
                if name not in seen:
                    removed_unseen.add(name)
        c("create", parent=d["ino"], name=f"new{pages}")
        cookie = page["cookie"]
        if not cookie:
            break
    assert pages >= 5 and removed_unseen
    assert len(seen) == len(set(seen))
    survivors = {f"f{i:05d}" for i in range(n)} - removed
    assert survivors <= set(seen)
    assert not removed_unseen & set(seen)
    assert set(seen) <= survivors | removed | {f"new{p}" for p in range(pages)}


# -- a failed request changes nothing ---------------------------------------------------------
def test_failed_request_rolls_back_its_partial_changes(mdt: MDT, c: Client) -> None:
    existing = c("create", path="/f")
    before = c("getattr", path="/")
    # a replay whose transno is an existing inode number fails after the entry went in
    r = c.req("create", {"path": "/g"}, flags=m.FLAG_REPLAY, transno=existing["ino"])
    assert r.status == "EEXIST"
    assert c.err("getattr", path="/g") == "ENOENT"
    assert c("getattr", path="/") == before
    assert [e[0] for e in c("readdir", path="/")["entries"]] == ["f"]


def test_handler_error_after_writes_rolls_back(mdt: MDT, c: Client) -> None:
    files = c("statfs")["files"]

    def half(ctx: Any, args: dict[str, Any], bulk: bytes | None) -> Any:
        mdt.ns.add_entry(1, "ghost", 12345, "f")
        mdt.ns.add_inode(12345, stat.S_IFREG, 1, 0, 0, 0, 0.0, 1, 0, None, None)
        mdt.ns.touch_dir(1, 0.0, 99, 1)
        raise KeyError("boom")

    mdt.ops["half"] = OpSpec(half, True)
    root = c("lookup", parent=1, name=".")  # the root's row is in the directory cache now
    assert c.err("half") == "EINVAL"
    assert c("readdir", path="/")["entries"] == []
    assert c.err("getattr", path="/ghost") == "ENOENT"
    assert c.err("getattr", ino=12345) == "ENOENT"
    assert c("getattr", path="/") == root
    assert c("statfs")["files"] == files
    # the directory cache forgot the rolled-back version: VBR sees the real one
    assert c.req("mkdir", {"path": "/d"}).pre_versions == [root["version"], 0]
