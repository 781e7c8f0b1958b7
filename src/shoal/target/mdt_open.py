"""open(2) and close on the MDT: handles, O_CREAT/O_EXCL/O_TRUNC, and orphan destruction.

An open is a modifying request (it gets a transno and the client keeps it for replay until
it closes) even when it changes no inode: the handle itself is state. O_TRUNC sets the size
to 0 here; the client punches the OST objects. A file unlinked while open stays, nlink 0,
until its last handle closes: that close returns the layout for the client to destroy.
"""

from __future__ import annotations

import os
import stat as st
import time
from typing import Any

import msgpack

from shoal.errors import (
    BadFileHandle,
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    TooManyLinks,
)
from shoal.protocol.xattr_names import CAPS
from shoal.target.base import OpContext, OpResult
from shoal.target.mdt_namespace import attr_of, check_ino, count_blocks
from shoal.target.mdt_ops import MetadataOps, absent, int_arg, time_arg

_WRITE = os.O_WRONLY | os.O_RDWR
_HAS_CAPS = "SELECT 1 FROM xattrs WHERE ino=? AND name=?"


class OpenOps:
    def __init__(self, meta: MetadataOps) -> None:
        self.meta = meta

    def open(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        meta = self.meta
        ns = meta.ns
        flags = int_arg(args, "flags", 0)
        stripe = meta.policy.parse(args)
        created = False
        if args.get("ino") is not None:
            row = ns.inode(check_ino(args["ino"]))
            if row[2] == 0 and not meta.handles.is_open(row[0]):
                raise NotFound(f"inode {row[0]} was unlinked")
        else:
            excl = bool(flags & os.O_CREAT and flags & os.O_EXCL)
            f = ns.where(args, follow=not (excl or flags & os.O_NOFOLLOW))
            if f.ino:
                if excl:
                    raise Exists(f"{f.name}: file exists")
                if f.must_dir and f.type != "d":
                    raise NotADirectory(f"{f.name}: not a directory")
                row = ns.inode(f.ino)
            elif flags & os.O_CREAT:
                if f.must_dir or f.name in ("", ".", ".."):
                    raise IsADirectory(f"{f.name}: a path ending in / names a directory")
                attr = meta.create_file(ctx, f.parent, f.name, args, stripe)
                created = True
            else:
                raise absent(ns, f, f.name)
        if not created:
            fmt = row[1] & 0o170000
            if fmt == st.S_IFLNK:
                raise TooManyLinks(f"inode {row[0]} is a symbolic link (O_NOFOLLOW)")
            if fmt == st.S_IFDIR:
                if flags & (_WRITE | os.O_CREAT | os.O_TRUNC):
                    raise IsADirectory("cannot open a directory for writing")
            elif flags & os.O_DIRECTORY:
                raise NotADirectory("not a directory")
            attr = attr_of(row)
            if flags & os.O_TRUNC and fmt == st.S_IFREG:
                now = time.time()
                ctx.touched(row[9])
                ns.set_fields(row[0], size=0, mtime=now, ctime=now, version=ctx.transno)
                attr.update(size=0, mtime=now, ctime=now, version=ctx.transno)
        if flags & _WRITE and ns.sql(_HAS_CAPS, (attr["ino"], CAPS)).fetchone() is not None:
            attr["caps"] = True  # the writer's first write removes them (mount/fs.py)
        handle = ctx.transno
        meta.handles.add(handle, attr["ino"], ctx.client, flags)
        return {"handle": handle, "attr": attr, "created": created}, None

    def close(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        meta = self.meta
        ns = meta.ns
        handle = args.get("handle")
        of = meta.handles.get(handle, ctx.client)
        size = int_arg(args, "size", -1)
        mtime = time_arg(args, "mtime")
        wrote = int_arg(args, "wrote_pages", 0)
        if wrote < 0:
            raise InvalidArgument("wrote_pages must be >= 0")
        row = ns.sql("SELECT size, version, nlink, layout, blocks FROM inodes WHERE ino=?",
                            (of.ino,)).fetchone()
        destroy = None
        if row is not None:  # None: a directory removed while open
            fields: dict[str, Any] = {}
            if size > row[0]:
                fields["size"] = size
            if mtime is not None:
                fields["mtime"] = mtime
            if wrote:
                fields["blocks"] = count_blocks(row[4], max(size, row[0]), wrote)
            if fields:
                ctx.touched(row[1])
                fields["ctime"] = time.time()
                fields["version"] = ctx.transno
                ns.set_fields(of.ino, **fields)
            if row[2] == 0 and meta.handles.opens[of.ino] == 1:
                ns.drop_inode(of.ino)
                destroy = msgpack.unpackb(row[3]) if row[3] is not None else None
        meta.handles.remove(handle)  # type: ignore[arg-type]  # get() checked it
        return {"destroy": destroy}, None

    def append(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """Reserve the next `length` bytes at the end of a file opened for writing: the
        offset an O_APPEND write lands at, decided here where every appender's reservation
        is seen, so appends from any number of processes and clients never overlap (POSIX:
        the offset is set to the end of file and the write done as one step). The size
        moves now; the data follows from the client to the OSTs.

        A replay carries the offset its first execution handed out (the client wrote there)
        and only makes the size cover it again. Appends commute, so they are not checked by
        version (VBR) and set none: a file's version moves when its writer reports at close.
        A writer on another client that has not reported its size yet is not seen: appends
        are atomic among appenders (Lustre would glimpse the OSTs under its lock)."""
        ns = self.meta.ns
        of = self.meta.handles.get(args.get("handle"), ctx.client)
        if not of.flags & _WRITE:
            raise BadFileHandle(f"handle {args.get('handle')!r} is not open for writing")
        length = int_arg(args, "length", -1)
        if length < 0:
            raise InvalidArgument("append: length must be >= 0")
        row = ns.sql("SELECT size FROM inodes WHERE ino=?", (of.ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {of.ino} is gone")
        offset = int_arg(args, "offset", row[0]) if ctx.replay else row[0]
        if offset + length > row[0]:
            ns.set_fields(of.ino, size=offset + length)
        return {"offset": offset, "size": max(row[0], offset + length)}, None

    def drop_client(self, client: str) -> list[dict[str, Any]]:
        """Close every handle of an evicted client; the layouts of orphans it destroyed.

        A handle it had open for writing moves its file's ctime: the client may have
        written to the OSTs and never reported it (close and fsync do), and a mount that
        kept the file's pages checks ctime beside the version (mount/handles.py). Not the
        version: this is no request and has no transno, and a version no replay can
        reproduce would fail the VBR check of the next replay that touches the file."""
        meta = self.meta
        gone: list[dict[str, Any]] = []
        now = time.time()
        for handle in meta.handles.of_client(client):
            of = meta.handles.handles[handle]
            row = meta.ns.sql("SELECT nlink, layout FROM inodes WHERE ino=?",
                              (of.ino,)).fetchone()
            if row is not None and row[0] == 0 and meta.handles.opens[of.ino] == 1:
                meta.ns.drop_inode(of.ino)
                if row[1] is not None:
                    gone.append(msgpack.unpackb(row[1]))
            elif row is not None and of.flags & _WRITE:
                meta.ns.set_fields(of.ino, ctime=now)
            meta.handles.remove(handle)
        return gone
