"""The MDT's namespace operations (all but rename and open/close, which have their own files).

Every handler takes (ctx, args, bulk) and returns (data, None). Modifying handlers run in a
savepoint (MDT._apply): they check everything first and change the database after, and they
touch in-memory state (handle table, caches) only once nothing can fail any more.

VBR follows Lustre's mdt_reint_* rules. A name operation records (ctx.touched) the version of
the parent directory, then of the object the name leads to (0: no such name), and gives
ctx.transno as the new version to the object it changes: the new inode of a create or mkdir,
the inode whose nlink a link or unlink moves. The parent's version is not set by a name
operation (its mtime, ctime and nlink are), only by a change to the directory itself
(setattr, setstripe, a rename that moves it). So independent names in one directory commute
on replay: a create whose neighbour's create was lost still replays, while a create of a
name a lost client had unlinked finds the old object at its version and fails (EOVERFLOW).
"""

from __future__ import annotations

import math
import stat as st
import time
from typing import TYPE_CHECKING, Any

import msgpack

from shoal.errors import (
    Busy,
    CrossDevice,
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
)
from shoal.target import mdt_acl
from shoal.target.base import OpContext, OpResult
from shoal.target.mdt_handles import HandleTable
from shoal.target.mdt_layout import LayoutPolicy, StripeArgs
from shoal.target.mdt_namespace import (
    MAX_PATH,
    PROJINHERIT,
    ROOT_INO,
    Found,
    Namespace,
    attr_of,
    check_ino,
    check_int,
    check_name,
    type_of,
)

MAX_INO = (1 << 48) - 1  # object ids keep the MDT index above bit 48
MAX_TIME = 1e15  # seconds; anything past this is garbage, not a time
READDIR_MAX = 10_000
SPECIAL = (st.S_IFIFO, st.S_IFSOCK, st.S_IFCHR, st.S_IFBLK)  # what mknod makes
_MISSING: Any = object()

if TYPE_CHECKING:
    from shoal.target.mdt_quota import MdtQuota


def int_arg(args: dict[str, Any], key: str, default: int) -> int:
    v = args.get(key)
    return default if v is None else check_int(v, key)


def time_arg(args: dict[str, Any], key: str) -> float | None:
    v = args.get(key)
    if v is None:
        return None
    if type(v) is not float and type(v) is not int:
        raise InvalidArgument(f"{key} must be a number, not {v!r}")
    t = float(v) if -MAX_TIME < v < MAX_TIME else math.nan
    if not math.isfinite(t):
        raise InvalidArgument(f"{key} must be a finite time, not {v!r}")
    return t


def new_ino(transno: int) -> int:
    if not 0 < transno <= MAX_INO:
        raise NoSpace(f"inode numbers exhausted (transno {transno:#x} past 48 bits)")
    return transno


def absent(ns: Namespace, f: Found, what: str) -> NotFound:
    """The error for a name that is not there: ENOTDIR/ENOENT for a bad parent first."""
    ns.dir_row(f.parent)
    return NotFound(f"{what}: no such file or directory")


class MetadataOps:
    def __init__(self, policy: LayoutPolicy) -> None:
        self.policy = policy
        self.ns: Namespace
        self.handles: HandleTable
        self._inherit: dict[int, StripeArgs | None] = {}  # dir -> effective default layout
        self.quota: MdtQuota  # the MDT's (target/mdt_quota.py): owners' changes reach it

    def attach(self, ns: Namespace, handles: HandleTable) -> None:
        self.ns = ns
        self.handles = handles
        self._inherit = {}

    def forget_inherited(self) -> None:
        self._inherit.clear()

    def name_versions(self, ctx: OpContext, f: Found) -> None:
        """VBR of a name operation: the parent's version, then the named object's (0: the
        name is free). Called before a create refuses an existing name, so that a replay
        whose name a lost transaction left in place fails on versions (EOVERFLOW)."""
        ctx.touched(self.ns.dir_row(f.parent)[1])
        ctx.touched(self.ns.inode(f.ino)[9] if f.ino else 0)

    # -- reads ---------------------------------------------------------------------------
    def getattr(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        # lstat by default: a client walking a path itself must see the link
        ino = self.ns.target_ino(args, follow=bool(args.get("follow")))
        return attr_of(self.ns.inode(ino)), None

    def lookup(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        parent = check_ino(args.get("parent"))
        name = args.get("name")
        if name == ".":
            self.ns.dir_row(parent)
            ino = parent
        elif name == "..":
            ino = self.ns.dir_row(parent)[3]
        else:
            row = self.ns.entry(parent, check_name(name))
            if row is None:
                raise absent(self.ns, Found(parent, name, 0, ""), name)
            ino = row[0]
        return attr_of(self.ns.inode(ino)), None

    def readlink(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        row = self.ns.inode(self.ns.target_ino(args))
        if row[1] & 0o170000 != st.S_IFLNK:
            raise InvalidArgument("not a symbolic link")
        return {"target": row[12]}, None

    def readdir(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ino = self.ns.target_ino(args, follow=True)
        cookie = int_arg(args, "cookie", 0)
        count = int_arg(args, "count", 1000)
        if cookie < 0 or count <= 0:
            raise InvalidArgument("readdir: cookie must be >= 0 and count > 0")
        self.ns.dir_row(ino)
        entries, nxt = self.ns.readdir(ino, cookie, min(count, READDIR_MAX),
                                       plus=bool(args.get("plus")))
        return {"entries": entries, "cookie": nxt}, None

    # -- creations -----------------------------------------------------------------------
    def mkdir(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ns = self.ns
        f = ns.where(args)
        name = check_name(f.name)
        self.name_versions(ctx, f)
        if f.ino:
            raise Exists(f"{name}: file exists")
        mode = st.S_IFDIR | (int_arg(args, "mode", 0o755) & 0o7777)
        uid, gid = int_arg(args, "uid", 0), int_arg(args, "gid", 0)
        mode, acls = mdt_acl.inherited(ns, f.parent, mode)
        t = ctx.transno
        ino = new_ino(t)
        now = time.time()
        ns.add_entry(f.parent, name, ino, "d")
        project = ns.project_of(f.parent, True)
        ns.add_inode(ino, mode, 2, uid, gid, 0, now, t, f.parent, None, None, project=project)
        mdt_acl.store(ns, ino, acls)
        ns.touch_dir(f.parent, now, 1)
        out = {"ino": ino, "type": "d", "mode": mode, "nlink": 2, "uid": uid, "gid": gid,
               "size": 0, "atime": now, "mtime": now, "ctime": now, "version": t,
               "parent": f.parent}
        if project[0]:
            out.update(projid=project[0], projinherit=True)
        return out, None

    def create(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        exclusive = args.get("exclusive", True)
        stripe = self.policy.parse(args)
        # O_CREAT without O_EXCL follows a final symlink, as open(2) does
        f = self.ns.where(args, follow=not exclusive)
        if f.ino:
            if exclusive:
                self.name_versions(ctx, f)
                raise Exists(f"{f.name}: file exists")
            if f.type == "d":
                raise IsADirectory(f"{f.name}: is a directory")
            return attr_of(self.ns.inode(f.ino)), None
        if f.must_dir:
            raise IsADirectory(f"{f.name}: a path ending in / names a directory")
        return self.create_file(ctx, f.parent, f.name, args, stripe), None

    def create_file(self, ctx: OpContext, parent: int, name: str, args: dict[str, Any],
                    stripe: StripeArgs | None) -> dict[str, Any]:
        """Create regular file `name` in `parent` (known absent); returns its attr."""
        ns = self.ns
        check_name(name)
        mode = st.S_IFREG | (int_arg(args, "mode", 0o644) & 0o7777)
        uid, gid = int_arg(args, "uid", 0), int_arg(args, "gid", 0)
        _, pver, pdefault, pparent, *_ = ns.dir_row(parent)
        mode, acls = mdt_acl.inherited(ns, parent, mode)
        ctx.touched(pver)
        ctx.touched(0)  # the name is free (the callers checked)
        t = ctx.transno
        ino = new_ino(t)
        layout = self.policy.replayed(ino, args.get("layout")) if ctx.replay else None
        if layout is None:
            inherited = self._inherited(parent, pdefault, pparent)
            layout = self.policy.make(ino, stripe.over(inherited) if stripe else inherited)
        now = time.time()
        ns.add_entry(parent, name, ino, "f")
        project = ns.project_of(parent, False)
        ns.add_inode(ino, mode, 1, uid, gid, 0, now, t, 0, layout, None, blocks=0,
                     project=project)
        mdt_acl.store(ns, ino, acls)
        ns.touch_dir(parent, now)
        out = {"ino": ino, "type": "f", "mode": mode, "nlink": 1, "uid": uid, "gid": gid,
               "size": 0, "atime": now, "mtime": now, "ctime": now, "version": t,
               "layout": layout, "blocks": 0}
        if project[0]:
            out["projid"] = project[0]  # whose quota its objects count in
        return out

    def _inherited(self, parent: int, blob: bytes | None, up: int) -> StripeArgs | None:
        """The default layout of the nearest directory, from `parent` up, that has one."""
        if blob is not None:
            return StripeArgs.from_dict(self.unpack(blob))
        if parent == ROOT_INO:
            return None
        cached = self._inherit.get(parent, _MISSING)
        if cached is not _MISSING:
            return cached
        found: StripeArgs | None = None
        ino = up
        for _ in range(1 << 16):
            cached = self._inherit.get(ino, _MISSING)
            if cached is not _MISSING:
                found = cached
                break
            _, _, blob, up, *_ = self.ns.dir_row(ino)
            if blob is not None:
                found = StripeArgs.from_dict(self.unpack(blob))
                break
            if ino == ROOT_INO:
                break
            ino = up
        if len(self._inherit) > 1 << 16:
            self._inherit.clear()
        self._inherit[parent] = found
        return found

    @staticmethod
    def unpack(blob: bytes) -> dict[str, Any]:
        return dict(msgpack.unpackb(blob))

    def free_name(self, ctx: OpContext, args: dict[str, Any]) -> tuple[Found, str]:
        """Where a new non-directory goes, its name checked and free (EEXIST otherwise)."""
        f = self.ns.where(args)
        name = check_name(f.name)
        self.name_versions(ctx, f)
        if f.ino:
            raise Exists(f"{name}: file exists")
        if f.must_dir:
            raise NotFound(f"{name}: a path ending in / names a directory")
        return f, name

    def symlink(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ns = self.ns
        target = args.get("target")
        if not isinstance(target, str) or "\0" in target:
            raise InvalidArgument("symlink target must be a string without NUL")
        if not target:
            raise NotFound("empty symlink target")
        size = len(target.encode("utf-8", "surrogatepass"))
        if size >= MAX_PATH:
            raise NameTooLong(f"symlink target longer than {MAX_PATH} bytes")
        f, name = self.free_name(ctx, args)
        t = ctx.transno
        ino = new_ino(t)
        now = time.time()
        mode = st.S_IFLNK | 0o777
        uid, gid = int_arg(args, "uid", 0), int_arg(args, "gid", 0)
        ns.add_entry(f.parent, name, ino, "l")
        ns.add_inode(ino, mode, 1, uid, gid, size, now, t, 0, None, target,
                     project=ns.project_of(f.parent, False))
        ns.touch_dir(f.parent, now)
        return {"ino": ino, "type": "l", "mode": mode, "nlink": 1, "uid": uid, "gid": gid,
                "size": size, "atime": now, "mtime": now, "ctime": now, "version": t}, None

    def mknod(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """A FIFO, a socket or a device node: an inode of the MDT alone (mode, rdev), whose
        I/O the client's kernel does itself (a pipe, a socket, a driver)."""
        ns = self.ns
        mode = int_arg(args, "mode", 0)
        fmt = mode & 0o170000
        if fmt not in SPECIAL or not 0 <= mode <= 0o177777:
            raise InvalidArgument(f"mknod: mode {mode:#o} is not a FIFO, socket or device node")
        rdev = int_arg(args, "rdev", 0) if fmt in (st.S_IFCHR, st.S_IFBLK) else 0
        if not 0 <= rdev < 1 << 63:
            raise InvalidArgument(f"mknod: device number {rdev} out of range")
        f, name = self.free_name(ctx, args)
        t = ctx.transno
        ino = new_ino(t)
        now = time.time()
        mode, acls = mdt_acl.inherited(ns, f.parent, fmt | (mode & 0o7777))
        uid, gid = int_arg(args, "uid", 0), int_arg(args, "gid", 0)
        ns.add_entry(f.parent, name, ino, type_of(mode))
        ns.add_inode(ino, mode, 1, uid, gid, 0, now, t, 0, None, None, rdev,
                     project=ns.project_of(f.parent, False))
        mdt_acl.store(ns, ino, acls)
        ns.touch_dir(f.parent, now)
        return attr_of(ns.inode(ino)), None

    def link(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ns = self.ns
        if args.get("ino") is not None:
            src = check_ino(args["ino"])
        else:
            sf = ns.walk(args.get("src"))
            if not sf.ino:
                raise absent(ns, sf, str(args.get("src")))
            src = sf.ino
        f = ns.where(args)
        name = check_name(f.name)
        if f.ino:
            raise Exists(f"{name}: file exists")
        if f.must_dir:
            raise NotFound(f"{name}: a path ending in / names a directory")
        row = ns.inode(src)
        mode, nlink, version = row[1], row[2], row[9]
        if mode & 0o170000 == st.S_IFDIR:
            raise NotPermitted("hard links to directories are not allowed")
        if nlink == 0:
            raise NotFound(f"inode {src} was unlinked")
        prow = ns.dir_row(f.parent)
        if prow[5] & PROJINHERIT and prow[4] != row[15]:
            raise CrossDevice(f"{name}: a link into project {prow[4]} of an inode of project "
                              f"{row[15]}")
        pver = prow[1]
        t = ctx.transno
        now = time.time()
        ctx.touched(pver)
        ctx.touched(version)
        ns.add_entry(f.parent, name, src, type_of(mode))
        ns.touch_dir(f.parent, now)
        ns.set_fields(src, nlink=nlink + 1, ctime=now, version=t)
        return attr_of(ns.inode(src)), None

    # -- removals ------------------------------------------------------------------------
    def drop_link(self, ino: int, nlink: int, layout: bytes | None, now: float,
                  t: int) -> dict[str, Any] | None:
        """One name of a non-directory is gone; returns its layout if the inode is too."""
        if nlink > 1:
            self.ns.set_fields(ino, nlink=nlink - 1, ctime=now, version=t)
            return None
        if self.handles.is_open(ino):
            # an orphan: the last close destroys it
            self.ns.set_fields(ino, nlink=0, ctime=now, version=t)
            return None
        self.ns.drop_inode(ino)
        return self.unpack(layout) if layout is not None else None

    def unlink(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ns = self.ns
        f = ns.where(args)
        if f.name in ("", ".", ".."):
            raise IsADirectory(f"{f.name!r}: is a directory")
        if not f.ino:
            raise absent(ns, f, f.name)
        if f.type == "d":
            raise IsADirectory(f"{f.name}: is a directory")
        if f.must_dir:
            raise NotADirectory(f"{f.name}: not a directory")
        row = ns.inode(f.ino)
        pver = ns.dir_row(f.parent)[1]
        t = ctx.transno
        now = time.time()
        ctx.touched(pver)
        ctx.touched(row[9])
        ns.del_entry(f.parent, f.name)
        ns.touch_dir(f.parent, now)
        return {"destroy": self.drop_link(f.ino, row[2], row[11], now, t)}, None

    def rmdir(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ns = self.ns
        f = ns.where(args)
        if f.name == "":
            raise Busy("cannot remove the root directory")
        if f.name == ".":
            raise InvalidArgument("cannot remove '.'")
        if f.name == "..":
            raise NotEmpty("cannot remove '..'")
        if not f.ino:
            raise absent(ns, f, f.name)
        if f.type != "d":
            raise NotADirectory(f"{f.name}: not a directory")
        if not ns.is_empty(f.ino):
            raise NotEmpty(f"{f.name}: directory not empty")
        version = ns.dir_row(f.ino)[1]
        pver = ns.dir_row(f.parent)[1]
        ctx.touched(pver)
        ctx.touched(version)
        ns.del_entry(f.parent, f.name)
        ns.drop_inode(f.ino)
        ns.touch_dir(f.parent, time.time(), -1)
        ns.forget_paths()
        return {}, None
