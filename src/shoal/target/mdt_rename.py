"""rename(2) on the MDT, with Linux's rules and Linux's order of checks.

The order matters because callers compare errors with a local file system: both parents are
resolved first (ENOENT/ENOTDIR from either path), then the source must exist, then a
non-directory source refuses trailing slashes (ENOTDIR), then a directory may not move into
its own subtree (EINVAL) and the target may not be an ancestor of the source (ENOTEMPTY),
then a rename onto the same inode (itself, or another hard link of it) does nothing, then
the kinds must agree (ENOTDIR / EISDIR) and a replaced directory must be empty (ENOTEMPTY).
The replaced entry goes away in the same transaction, so the swap is atomic.
"""

from __future__ import annotations

import time
from typing import Any

from shoal.errors import (
    Busy,
    CrossDevice,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
)
from shoal.target.base import OpContext, OpResult
from shoal.target.mdt_namespace import PROJINHERIT, check_name
from shoal.target.mdt_ops import MetadataOps, absent


def rename(meta: MetadataOps, ctx: OpContext, args: dict[str, Any],
           bulk: bytes | None) -> OpResult:
    ns = meta.ns
    s = ns.where(args, "src", "src_parent", "src_name")
    d = ns.where(args, "dst", "dst_parent", "dst_name")
    for f in (s, d):
        if f.name == "":
            raise Busy("cannot rename the root directory")
        if f.name in (".", ".."):
            raise InvalidArgument(f"cannot rename {f.name!r}")
    check_name(d.name)
    if not s.ino:
        raise absent(ns, s, s.name)
    if s.type != "d" and (s.must_dir or d.must_dir):
        raise NotADirectory(f"{s.name}: not a directory")
    if s.parent != d.parent:
        if s.type == "d" and ns.is_ancestor(s.ino, d.parent):
            raise InvalidArgument(f"cannot move {s.name} into its own subtree")
        if d.type == "d" and ns.is_ancestor(d.ino, s.parent):
            raise NotEmpty(f"{d.name}: is an ancestor of the source")
    if d.ino == s.ino:
        return {"destroy": None}, None
    if d.ino:
        if s.type == "d" and d.type != "d":
            raise NotADirectory(f"{d.name}: not a directory")
        if s.type != "d" and d.type == "d":
            raise IsADirectory(f"{d.name}: is a directory")
        if d.type == "d" and not ns.is_empty(d.ino):
            raise NotEmpty(f"{d.name}: directory not empty")

    dparent = ns.dir_row(d.parent)
    if dparent[5] & PROJINHERIT and dparent[4] != ns.inode(s.ino)[15]:
        # ext4 and Lustre refuse it too; mv copies instead, and the usage moves with it
        raise CrossDevice(f"{d.name}: a move into project {dparent[4]}")
    t = ctx.transno
    now = time.time()
    # VBR (Lustre's mdt_reint_rename): both parents, the source, the name it replaces (0:
    # none), always four, so a replay that finds another state at the target fails
    ctx.touched(ns.dir_row(s.parent)[1])
    ctx.touched(ns.dir_row(d.parent)[1])
    ctx.touched(ns.inode(s.ino)[9])
    drow = ns.inode(d.ino) if d.ino else None
    ctx.touched(drow[9] if drow is not None else 0)
    destroy = None
    src_delta = dst_delta = 0  # parents' nlink: one per subdirectory
    if drow is not None:
        ns.del_entry(d.parent, d.name)
        if d.type == "d":
            ns.drop_inode(d.ino)
            dst_delta -= 1
        else:
            destroy = meta.drop_link(d.ino, drow[2], drow[11], now, t)
    ns.del_entry(s.parent, s.name)
    ns.add_entry(d.parent, d.name, s.ino, s.type)
    if s.type == "d":
        src_delta -= 1
        dst_delta += 1
        ns.set_fields(s.ino, parent=d.parent, ctime=now, version=t)
    else:
        ns.set_fields(s.ino, ctime=now, version=t)
    if d.parent == s.parent:
        ns.touch_dir(s.parent, now, src_delta + dst_delta)
    else:
        ns.touch_dir(s.parent, now, src_delta)
        ns.touch_dir(d.parent, now, dst_delta)
    if s.type == "d" or d.type == "d":
        ns.forget_paths()
        meta.forget_inherited()
    return {"destroy": destroy}, None
