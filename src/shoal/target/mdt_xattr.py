"""Extended attributes on the MDT: stored with the inode, changed in the same transaction as
any other metadata (so an MDS failover replays them), gone with the inode.

Names travel and are stored as bytes, as the kernel hands them over. The namespaces are
Linux's: `user.`, `trusted.`, `security.` and the two POSIX ACLs (`system.posix_acl_access`,
`system.posix_acl_default`); any other name is EOPNOTSUPP, as on ext4. The limits are the
VFS's: a name of 1-255 bytes (ERANGE otherwise), a value of at most 64 KiB (E2BIG), and all
of an inode's names together at most 64 KiB (what listxattr can return; ENOSPC past it).
Who may read or change which namespace (trusted. needs CAP_SYS_ADMIN, user. only on regular
files and directories, write permission for a change) is checked by the client's kernel
before the request comes, as for any permission on a mount with default_permissions.

A change gives the inode a new version and ctime, as a setattr does (VBR: a replayed setxattr
whose inode a lost client changed meanwhile fails, EOVERFLOW). The two ACL names go through
target/mdt_acl.py: checked, and an access ACL sets the mode.
"""

from __future__ import annotations

import time
from typing import Any

from shoal.errors import (
    Exists,
    InvalidArgument,
    NoData,
    NoSpace,
    OutOfRange,
    TooBig,
    Unsupported,
)
from shoal.protocol.xattr_names import ACL_NAMES
from shoal.target import mdt_acl
from shoal.target.base import OpContext, OpResult
from shoal.target.mdt_namespace import Namespace
from shoal.target.mdt_ops import MetadataOps

NAME_MAX = 255  # XATTR_NAME_MAX
SIZE_MAX = 65536  # XATTR_SIZE_MAX: one value
LIST_MAX = 65536  # XATTR_LIST_MAX: every name of an inode, each with its NUL
PREFIXES = (b"user.", b"trusted.", b"security.")
XATTR_CREATE, XATTR_REPLACE = 1, 2


def check_xattr_name(name: Any) -> bytes:
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    if not isinstance(name, bytes):
        raise InvalidArgument(f"an xattr name must be bytes, not {type(name).__name__}")
    if not name or len(name) > NAME_MAX:
        raise OutOfRange(f"xattr name of {len(name)} bytes (1-{NAME_MAX})")
    if b"\0" in name:
        raise InvalidArgument("xattr name contains NUL")
    if name in ACL_NAMES or any(name.startswith(p) and len(name) > len(p) for p in PREFIXES):
        return name
    if name in PREFIXES:
        raise InvalidArgument(f"{name!r}: a namespace without a name")
    raise Unsupported(f"{name!r}: no such xattr namespace here")


class XattrOps:
    def __init__(self, meta: MetadataOps) -> None:
        self.meta = meta

    @property
    def ns(self) -> Namespace:
        return self.meta.ns  # attached when the device opens

    def _ino(self, args: dict[str, Any]) -> int:
        # an xattr call names the inode itself, a final symlink included (l*xattr)
        ino = self.ns.target_ino(args, follow=bool(args.get("follow", False)))
        self.ns.inode(ino)  # ENOENT for an inode that is gone
        return ino

    def getxattr(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ino = self._ino(args)
        name = check_xattr_name(args.get("name"))
        row = self.ns.sql("SELECT value FROM xattrs WHERE ino=? AND name=?",
                          (ino, name)).fetchone()
        if row is None:
            raise NoData(f"inode {ino}: no xattr {name!r}")
        return {"value": bytes(row[0])}, None

    def listxattr(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ino = self._ino(args)
        rows = self.ns.sql("SELECT name FROM xattrs WHERE ino=? ORDER BY name",
                           (ino,)).fetchall()
        return {"names": [bytes(r[0]) for r in rows]}, None

    def setxattr(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ns = self.ns
        ino = self._ino(args)
        row = ns.inode(ino)
        # the version first (VBR): a replay whose inode a lost client changed must fail as
        # such (EOVERFLOW, the client evicted), not as the EEXIST or ENODATA of a flag check
        ctx.touched(row[9])
        name = check_xattr_name(args.get("name"))
        value = args.get("value")
        if not isinstance(value, bytes):
            raise InvalidArgument("an xattr value must be bytes")
        if len(value) > SIZE_MAX:
            raise TooBig(f"xattr value of {len(value)} bytes (at most {SIZE_MAX})")
        flags = args.get("flags", 0)
        if type(flags) is not int or flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise InvalidArgument(f"setxattr flags {flags!r}")
        names = [bytes(r[0]) for r in ns.sql("SELECT name FROM xattrs WHERE ino=?", (ino,))]
        exists = name in names
        if exists and flags & XATTR_CREATE:
            raise Exists(f"inode {ino}: xattr {name!r} exists")
        if not exists and flags & XATTR_REPLACE:
            raise NoData(f"inode {ino}: no xattr {name!r}")
        if not exists and sum(len(n) + 1 for n in names) + len(name) + 1 > LIST_MAX:
            raise NoSpace(f"inode {ino}: its xattr names would pass {LIST_MAX} bytes")
        fields: dict[str, Any] = {"ctime": time.time(), "version": ctx.transno}
        if name in ACL_NAMES:
            mode = mdt_acl.set_acl(ns, ino, row[1], name, value)
            if mode is not None:
                fields["mode"] = mode
        else:
            ns.sql("INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?,?,?)",
                   (ino, name, value))
        ns.set_fields(ino, **fields)
        return {}, None

    def removexattr(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ino = self._ino(args)
        ctx.touched(self.ns.inode(ino)[9])  # first, as setxattr's
        name = check_xattr_name(args.get("name"))
        if self.ns.sql("SELECT 1 FROM xattrs WHERE ino=? AND name=?",
                       (ino, name)).fetchone() is None:
            raise NoData(f"inode {ino}: no xattr {name!r}")
        self.ns.sql("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name))
        self.ns.set_fields(ino, ctime=time.time(), version=ctx.transno)
        return {}, None
