"""setattr and setstripe on the MDT: an inode's attributes and a directory's default layout.

setattr follows a final symlink by default, as chmod(2), chown(2), truncate(2) and utimes(2)
do; chmod keeps the type bits. A size given exactly truncates or extends; `grow_to` only
extends (what a client that wrote past the end reports), `wrote_pages` adds the 4 KiB
pages it wrote to the file's blocks in use (mdt_namespace.count_blocks), and `ctime` is
when it wrote (a write moves ctime; the report is later). setstripe works on
directories only: a file's layout is fixed when it is created.
"""

from __future__ import annotations

import stat as st
import time
from typing import Any

import msgpack

from shoal.errors import InvalidArgument, IsADirectory
from shoal.protocol.xattr_names import CAPS
from shoal.target import mdt_acl
from shoal.target.base import OpContext, OpResult
from shoal.target.mdt_namespace import PROJINHERIT, attr_of, count_blocks
from shoal.target.mdt_ops import MetadataOps, int_arg, time_arg


def set_attr(meta: MetadataOps, ctx: OpContext, args: dict[str, Any],
             bulk: bytes | None) -> OpResult:
    ns = meta.ns
    ino = ns.target_ino(args, follow=bool(args.get("follow", True)))
    row = ns.inode(ino)
    fmt = row[1] & 0o170000
    now = time.time()
    fields: dict[str, Any] = {}
    if args.get("mode") is not None:
        fields["mode"] = fmt | (int_arg(args, "mode", 0) & 0o7777)
    for key in ("uid", "gid", "projid"):
        if args.get(key) is not None:
            fields[key] = int_arg(args, key, 0)
            if not 0 <= fields[key] < 1 << 32:
                raise InvalidArgument(f"{key} must be a 32-bit unsigned integer")
    if args.get("projinherit") is not None:
        if fmt != st.S_IFDIR:
            raise InvalidArgument("only a directory passes its project on")
        fields["flags"] = (row[16] & ~PROJINHERIT) | (PROJINHERIT if args["projinherit"] else 0)
    size, grow = args.get("size"), args.get("grow_to")
    if size is not None or grow is not None:
        if fmt == st.S_IFDIR:
            raise IsADirectory("cannot change the size of a directory")
        if fmt != st.S_IFREG:
            raise InvalidArgument("only a regular file has a settable size")
        new = row[5]
        if size is not None:
            new = int_arg(args, "size", 0)
            fields["mtime"] = now
        if grow is not None:
            grow_to = int_arg(args, "grow_to", 0)
            if grow_to > new:
                new = grow_to
                fields["mtime"] = now
        if new < 0:
            raise InvalidArgument("negative size")
        fields["size"] = new
    wrote = int_arg(args, "wrote_pages", 0)
    if wrote < 0:
        raise InvalidArgument("wrote_pages must be >= 0")
    if (wrote or "size" in fields) and fmt == st.S_IFREG:
        # a writer's report adds its pages; a truncation gives back what it cut off
        fields["blocks"] = count_blocks(row[14], fields.get("size", row[5]), wrote)
    for key in ("atime", "mtime"):
        v = time_arg(args, key)
        if v is not None:
            fields[key] = v
    ctx.touched(row[9])
    # a writer's report says when it wrote (its ctime, shown to its programs since): kept
    # if it is no older than the inode's and not in the future; anything else is now
    wrote_at = time_arg(args, "ctime")
    fields["ctime"] = now if wrote_at is None else max(row[8], min(wrote_at, now))
    fields["version"] = ctx.transno
    ns.set_fields(ino, **fields)
    owner = (fields.get("uid", row[3]), fields.get("gid", row[4]), fields.get("projid", row[15]))
    if fmt == st.S_IFREG and owner != (row[3], row[4], row[15]) and row[11] is not None:
        meta.quota.owner_changed(meta.unpack(row[11]), owner)
    if "mode" in fields:
        mdt_acl.chmod(ns, ino, fields["mode"])
    if fmt != st.S_IFDIR and ("uid" in fields or "gid" in fields or size is not None):
        # a chown or a truncation drops file capabilities, as Linux's ATTR_KILL_PRIV does
        ns.sql("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, CAPS))
    return attr_of(ns.inode(ino)), None


def set_stripe(meta: MetadataOps, ctx: OpContext, args: dict[str, Any],
               bulk: bytes | None) -> OpResult:
    ns = meta.ns
    ino = ns.target_ino(args, follow=True)
    row = ns.inode(ino)
    if row[1] & 0o170000 != st.S_IFDIR:
        raise InvalidArgument("setstripe: a file's layout is fixed when it is created")
    if args.get("delete"):
        blob = None
    else:
        sa = meta.policy.parse(args)
        if sa is None:
            raise InvalidArgument("setstripe: give stripe_count, stripe_size or "
                                  "stripe_offset (or delete)")
        blob = msgpack.packb(sa.as_dict())
    ctx.touched(row[9])
    ns.set_fields(ino, layout=blob, ctime=time.time(), version=ctx.transno)
    meta.forget_inherited()
    return attr_of(ns.inode(ino)), None
