"""Extended attributes and POSIX ACLs on the MDT (issue 19): Linux's limits and errnos, the
mode kept in step with the access ACL, default ACLs handed down, and all of it replayed."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from shoal.protocol import messages as m
from shoal.protocol.posix_acl import (
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    USER,
    USER_OBJ,
    Entry,
    decode,
    encode,
)
from shoal.target.mdt import MDT
from tests.unit.mdt_client import Client, open_mdt

ACCESS, DEFAULT = b"system.posix_acl_access", b"system.posix_acl_default"
# user::rwx user:1000:rw- group::r-x mask::rwx other::r-x
ACL = encode([Entry(USER_OBJ, 7), Entry(USER, 6, 1000), Entry(GROUP_OBJ, 5), Entry(MASK, 7),
              Entry(OTHER, 5)])




def test_set_get_list_remove(c: Client) -> None:
    c("create", path="/f", mode=0o644)
    v0 = c("getattr", path="/f")["version"]
    c("setxattr", path="/f", name=b"user.color", value=b"blue")
    c("setxattr", path="/f", name=b"trusted.x", value=b"")  # an empty value is a value
    c("setxattr", path="/f", name=b"security.selinux", value=b"system_u:object_r:t\0")
    assert c("getxattr", path="/f", name=b"user.color") == {"value": b"blue"}
    assert c("getxattr", path="/f", name=b"trusted.x") == {"value": b""}
    assert c("listxattr", path="/f")["names"] == [b"security.selinux", b"trusted.x",
                                                  b"user.color"]
    a = c("getattr", path="/f")
    assert a["version"] > v0 and a["mode"] == stat.S_IFREG | 0o644  # a change, as setattr's
    c("setxattr", path="/f", name=b"user.color", value=b"red")
    assert c("getxattr", path="/f", name=b"user.color")["value"] == b"red"
    c("removexattr", path="/f", name=b"user.color")
    assert c.err("getxattr", path="/f", name=b"user.color") == "ENODATA"
    assert c.err("removexattr", path="/f", name=b"user.color") == "ENODATA"


@pytest.mark.parametrize(("name", "value", "errno_name"), [
    (b"user.x", b"v" * 65537, "E2BIG"),
    (b"user." + b"n" * 251, b"v", "ERANGE"),  # 256 bytes
    (b"", b"v", "ERANGE"),
    (b"os2.x", b"v", "EOPNOTSUPP"),  # a namespace Linux has, ext4 does not
    (b"system.nfs4_acl", b"v", "EOPNOTSUPP"),
    (b"user.", b"v", "EINVAL"),  # a prefix alone names nothing
    (b"user.a\0b", b"v", "EINVAL"),
    ("user.text-is-fine-too", 12, "EINVAL"),  # a value must be bytes
    (ACCESS, b"\x02\x00\x00\x00\x01", "EINVAL"),  # not whole entries
    (ACCESS, encode([Entry(USER_OBJ, 7), Entry(USER, 6, 0xFFFFFFFF), Entry(GROUP_OBJ, 5),
                     Entry(MASK, 7), Entry(OTHER, 5)]), "EINVAL"),  # a user without an id
])
def test_limits_and_errnos_change_nothing(c: Client, name: object, value: object,
                                          errno_name: str) -> None:
    c("create", path="/f", mode=0o644)
    before = c("getattr", path="/f")
    assert c.err("setxattr", path="/f", name=name, value=value) == errno_name
    assert c("getattr", path="/f") == before
    assert c("listxattr", path="/f")["names"] == []


def test_create_and_replace_flags(c: Client) -> None:
    c("mkdir", path="/d")
    assert c.err("setxattr", path="/d", name=b"user.a", value=b"1", flags=2) == "ENODATA"
    c("setxattr", path="/d", name=b"user.a", value=b"1", flags=1)
    assert c.err("setxattr", path="/d", name=b"user.a", value=b"2", flags=1) == "EEXIST"
    c("setxattr", path="/d", name=b"user.a", value=b"2", flags=2)
    assert c("getxattr", path="/d", name=b"user.a")["value"] == b"2"
    assert c.err("setxattr", path="/d", name=b"user.a", value=b"2", flags=4) == "EINVAL"


def test_an_inodes_names_stop_at_64_kib(c: Client) -> None:
    c("create", path="/f", mode=0o644)
    name = b"user." + b"n" * 250  # 255 bytes, 256 with its NUL: 256 of them fill 64 KiB
    for i in range(256):
        c("setxattr", path="/f", name=name[:-3] + b"%03d" % i, value=b"")
    assert c.err("setxattr", path="/f", name=b"user.one-more", value=b"") == "ENOSPC"
    c("setxattr", path="/f", name=name[:-3] + b"000", value=b"x")  # a replace still fits


def test_xattrs_go_with_their_inode_and_keep_to_it(mdt: MDT, c: Client) -> None:
    c("create", path="/f", mode=0o644)
    c("setxattr", path="/f", name=b"user.a", value=b"1")
    c("link", src="/f", path="/g")
    assert c("getxattr", path="/g", name=b"user.a")["value"] == b"1"  # one inode
    ino = c("getattr", path="/f")["ino"]
    c("unlink", path="/f")
    c("unlink", path="/g")
    assert mdt.db.execute("SELECT COUNT(*) FROM xattrs WHERE ino=?", (ino,)).fetchone()[0] == 0
    c("symlink", path="/l", target="/nowhere")
    c("setxattr", path="/l", name=b"trusted.a", value=b"on the link itself")
    assert c("getxattr", path="/l", name=b"trusted.a")["value"] == b"on the link itself"


def test_an_access_acl_sets_the_mode_and_a_chmod_moves_the_acl(c: Client) -> None:
    c("create", path="/f", mode=0o600)
    c("setxattr", path="/f", name=ACCESS, value=ACL)
    assert c("getattr", path="/f")["mode"] == stat.S_IFREG | 0o775  # mask rwx -> group
    c("setattr", path="/f", mode=0o640)
    got = decode(c("getxattr", path="/f", name=ACCESS)["value"])
    assert got == [Entry(USER_OBJ, 6), Entry(USER, 6, 1000), Entry(GROUP_OBJ, 5),
                   Entry(MASK, 4), Entry(OTHER, 0)]
    # an ACL of the base entries only is the mode: kept as the mode alone
    c("setxattr", path="/f", name=ACCESS, value=encode(
        [Entry(USER_OBJ, 6), Entry(GROUP_OBJ, 4), Entry(OTHER, 0)]))
    assert c("getattr", path="/f")["mode"] == stat.S_IFREG | 0o640
    assert c.err("getxattr", path="/f", name=ACCESS) == "ENODATA"
    # a default ACL belongs to directories only
    assert c.err("setxattr", path="/f", name=DEFAULT, value=ACL) == "EACCES"


def test_a_default_acl_is_handed_down(c: Client) -> None:
    c("mkdir", path="/shared", mode=0o755)
    default = encode([Entry(USER_OBJ, 7), Entry(GROUP_OBJ, 5), Entry(GROUP, 7, 100),
                      Entry(MASK, 7), Entry(OTHER, 5)])
    c("setxattr", path="/shared", name=DEFAULT, value=default)
    f = c("create", path="/shared/f", mode=0o666)
    assert f["mode"] == stat.S_IFREG | 0o664
    assert decode(c("getxattr", path="/shared/f", name=ACCESS)["value"]) == [
        Entry(USER_OBJ, 6), Entry(GROUP_OBJ, 5), Entry(GROUP, 7, 100), Entry(MASK, 6),
        Entry(OTHER, 4)]
    assert c.err("getxattr", path="/shared/f", name=DEFAULT) == "ENODATA"
    d = c("mkdir", path="/shared/sub", mode=0o777)
    assert d["mode"] == stat.S_IFDIR | 0o775
    assert c("getxattr", path="/shared/sub", name=DEFAULT)["value"] == default
    n = c("mknod", path="/shared/sub/fifo", mode=stat.S_IFIFO | 0o600)
    assert n["mode"] == stat.S_IFIFO | 0o600  # the mask cut to ---: group bits none
    c("setxattr", path="/shared", name=DEFAULT, value=b"\x02\x00\x00\x00")  # no entries:
    assert c.err("getxattr", path="/shared", name=DEFAULT) == "ENODATA"  # removed, as Linux
    c("setxattr", path="/shared", name=DEFAULT, value=default)
    c("setxattr", path="/shared", name=DEFAULT, value=b"")  # an empty value removes it
    assert c("create", path="/shared/g", mode=0o640)["mode"] == stat.S_IFREG | 0o640
    assert c.err("getxattr", path="/shared/g", name=ACCESS) == "ENODATA"


def test_xattrs_and_acls_are_replayed(tmp_path: Path) -> None:
    """Set, not committed, the server dies: the client's replays redo them whole."""
    device = tmp_path / "mdt"
    t = open_mdt(device)
    c = Client(t)
    c("mkdir", path="/d")
    asyncio.run(t.commit())
    reqs = [("setxattr", {"path": "/d", "name": b"user.a", "value": b"1"}),
            ("setxattr", {"path": "/d", "name": DEFAULT, "value": ACL}),
            ("create", {"path": "/d/f", "mode": 0o644}),
            ("removexattr", {"path": "/d", "name": b"user.a"})]
    transnos = []
    for op, args in reqs:
        r = c.req(op, args)
        assert r.status is None, r
        transnos.append(r.transno)
    t._close_db()  # a crash: nothing of it was committed
    t = open_mdt(device, create=False)
    try:
        c2 = Client(t, xid=c.xid)
        assert c2.err("getxattr", path="/d", name=DEFAULT) == "ENODATA"
        for (op, args), transno in zip(reqs, transnos, strict=True):
            r = c2.req(op, args, flags=m.FLAG_REPLAY, transno=transno)
            assert r.status is None, r
        assert c2("getxattr", path="/d", name=DEFAULT)["value"] == ACL
        assert c2.err("getxattr", path="/d", name=b"user.a") == "ENODATA"
        assert decode(c2("getxattr", path="/d/f", name=ACCESS)["value"])[1] == Entry(
            USER, 6, 1000)
    finally:
        t._close_db()
