"""The FUSE operations: the kernel's requests, by inode number, turned into Shoal calls.

Every request is a coroutine on the one event loop the Shoal client runs on (pyfuse3 in its
asyncio mode), and pyfuse3 keeps up to `max_tasks` of them in service at once: a request
waiting on a slow or failing-over target blocks only itself. The MDT takes inode numbers and
(parent, name) pairs as well as paths, so nearly every request is one MDT RPC, and Shoal
inode numbers (never reused) are the kernel's inode numbers as they are.

Errors: a Shoal error carries its errno name and reaches the program as that errno; transport
and recovery failures (eviction, protocol errors, a target gone) reach it as EIO, as Lustre
reports them. Any other exception is a bug: it is logged and becomes EIO, and the mount
stays up.

Everything this module needs is imported when it loads: nothing in a request path may read
a file, least of all from this mount (DESIGN.md, invariant 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import time
from collections import Counter
from typing import Any

import pyfuse3
from pyfuse3 import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

from shoal.client.client import Client
from shoal.client.fileio import File
from shoal.client.layout import Layout
from shoal.client.md_calls import made_attr, make_call, md_call, setattr_call, unname_call
from shoal.client.namespace import Attr
from shoal.errors import NoData, NotFound, ShoalError
from shoal.mount import fuse_asyncio  # noqa: F401 - pyfuse3 on asyncio, its wait mended
from shoal.mount.cache import Served
from shoal.mount.dirs import DirOps, ListingsAhead
from shoal.mount.early_read import EarlyReads
from shoal.mount.fuse_op import fuse_op
from shoal.mount.handles import Handle, HandleTable, Node
from shoal.mount.kept_data import KeptData
from shoal.mount.kernel_cache import KernelCache, forget_attr
from shoal.mount.modes import _killed_mode, _write_only, file_info
from shoal.mount.options import MountOptions
from shoal.mount.xattrs import XattrOps
from shoal.protocol.ldlm import Mode
from shoal.protocol.xattr_names import CAPS

log = logging.getLogger(__name__)

def _name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # the MDT keeps names as UTF-8 text
        raise FUSEError(errno.EILSEQ) from None


def _ns(t: float) -> int:
    # whole microseconds: a float holds no more at today's epoch, and rounding keeps what
    # utimes() set at microseconds coming back exactly
    return round(t * 1_000_000) * 1000


class ShoalFS(DirOps, XattrOps, pyfuse3.Operations):
    enable_writeback_cache = False  # the kernel would trust its own sizes over other clients'

    def __init__(self, client: Client, opts: MountOptions) -> None:
        super().__init__()
        self.client = client
        self.opts = opts
        self.requests: Counter[str] = Counter()  # by operation (fuse_op counts them)
        self.request_seconds: Counter[str] = Counter()
        # the kernel opens directories itself and keeps their listings, which the locks
        # keep coherent (kernel_cache.py); not without locks, nor with an unpatched pyfuse3
        self.kernel_opens_dirs = opts.locks and getattr(
            pyfuse3, "READDIR_INODE_WITHOUT_OPENDIR", False)
        self.table = HandleTable(client, opts)
        self.kernel = KernelCache(client.mdt.md_locks, opts)
        self.ahead = ListingsAhead(client)
        self.initialized = asyncio.Event()
        self.early = EarlyReads(client, opts)  # small files' reads sent with their opens
        self.data = (KeptData(client, self.table, self.kernel, self._report) if opts.locks
                     else None)  # file data under the OSTs' locks

    def init(self) -> None:
        # called while the kernel's INIT request is handled; the kernel applies the reply
        # (and resets the mount's read-ahead with it) once this returns
        asyncio.get_running_loop().call_soon(self.initialized.set)

    async def _md(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await md_call(self.client.mdt, op, args)

    async def _attr(self, op: str, args: dict[str, Any]) -> Attr:
        return Attr.from_dict(await self._md(op, args))

    async def _setattr(self, args: dict[str, Any]) -> Attr:
        return Attr.from_dict(await setattr_call(self.client.mdt, args))

    async def _made(self, op: str, args: dict[str, Any]) -> EntryAttributes:
        """The entry of what a create of some kind made: kept by the kernel while the
        locks its intent brought are held."""
        a = Attr.from_dict(made_attr(await make_call(self.client.mdt, op, args)))
        return self._entry(a, args["parent"], args["name"])

    def _entry(self, a: Attr, parent: int | None = None, name: str = "") -> EntryAttributes:
        size, mtime, ctime = self.table.observe(a)
        e = EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout, e.attr_timeout = self.kernel.timeouts(a.ino, parent, name)
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_size = size
        # cp, tar and friends size their buffers by st_blksize: a stripe is a good request
        e.st_blksize = int(a.layout["stripe_size"]) if a.layout else 4096
        # a regular file's blocks as its writers reported them (a sparse file's holes use
        # none); an inode older than the count shows its size
        e.st_blocks = a.blocks if a.blocks is not None else (size + 511) // 512
        e.st_rdev = a.rdev
        e.st_atime_ns = _ns(a.atime)
        e.st_mtime_ns = _ns(mtime)
        e.st_ctime_ns = _ns(ctime)
        return e

    def _destroy(self, data: dict[str, Any]) -> None:
        if data.get("destroy"):
            self.client.destroyer.queue(data["destroy"])

    # -- names ---------------------------------------------------------------------------
    @fuse_op
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: RequestContext | None = None) -> EntryAttributes:
        text = _name(name)
        try:
            return self._entry(await self.client.lookup(parent_inode, text), parent_inode, text)
        except NotFound:
            negative = self.kernel.absent_timeout(parent_inode, text)
            if negative is None:
                raise
        e = EntryAttributes()  # st_ino 0: the kernel keeps the name's absence (negative)
        e.entry_timeout = negative
        return e

    @fuse_op
    async def getattr(self, inode: int, ctx: RequestContext | None = None) -> EntryAttributes:
        return self._entry(await self.client.getattr(inode))

    @fuse_op
    async def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                      fh: int | None, ctx: RequestContext) -> EntryAttributes:
        args: dict[str, Any] = {"ino": inode}
        if fields.update_mode:
            args["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            args["uid"] = attr.st_uid
        if fields.update_gid:
            args["gid"] = attr.st_gid
        if fields.update_atime:
            args["atime"] = attr.st_atime_ns / 1e9
        if fields.update_mtime:
            args["mtime"] = attr.st_mtime_ns / 1e9
        node = self.table.nodes.get(inode)
        if fields.update_mtime and node is not None:
            # an explicit mtime (tar's futimens before close) outlives the writes before it:
            # the size report at close must carry it, not the time of the last write
            node.mtime = args["mtime"]
        if fields.update_size:
            if node is not None:
                await node.writer.drain()  # the writes before a truncate land before it
            # and other clients' (a file written elsewhere is glimpsed: NamespaceOps.sized)
            await self.client.getattr(inode)
            args["size"] = attr.st_size
            if ctx.uid != 0 and "mode" not in args:
                # truncate(2) by a process without CAP_FSETID clears setuid/setgid
                mode = (await self._attr("getattr", {"ino": inode})).mode
                if _killed_mode(mode) != mode:
                    args["mode"] = stat.S_IMODE(_killed_mode(mode))
        folded = (await self._report(node, args)
                  if node is not None and not fields.update_size else None)
        a = folded or await self._setattr(args)
        if fields.update_size:
            if a.layout:
                await self.client.punch_objects(a.layout, attr.st_size)
            if node is not None:
                self.table.truncated(node, attr.st_size)
        return self._entry(a)

    @fuse_op
    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        return (await self.client.readlink_inode(inode)).encode()

    def _new(self, parent: int, name: bytes, ctx: RequestContext, **extra: Any) -> dict[str, Any]:
        return {"parent": parent, "name": _name(name), "uid": ctx.uid, "gid": ctx.gid, **extra}

    @fuse_op
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        if stat.S_ISREG(mode):
            return await self._made("create", self._new(
                parent_inode, name, ctx, mode=stat.S_IMODE(mode), exclusive=True))
        # FIFOs, sockets, device nodes: the MDT keeps mode and rdev, this kernel does the I/O
        return await self._made("mknod", self._new(
            parent_inode, name, ctx, mode=mode, rdev=rdev))

    @fuse_op
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: RequestContext) -> EntryAttributes:
        return await self._made("mkdir", self._new(
            parent_inode, name, ctx, mode=stat.S_IMODE(mode)))

    @fuse_op
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: RequestContext) -> EntryAttributes:
        return await self._made("symlink", self._new(
            parent_inode, name, ctx, target=_name(target)))

    @fuse_op
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: RequestContext) -> EntryAttributes:
        return self._entry(await self._attr("link", {"ino": inode, "parent": new_parent_inode,
                                                     "name": _name(new_name)}))

    @fuse_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        # an open file stays (nlink 0) on the MDT until its last handle closes
        self._destroy(await unname_call(self.client.mdt, "unlink",
                                        {"parent": parent_inode, "name": _name(name)}))

    @fuse_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        await unname_call(self.client.mdt, "rmdir", {"parent": parent_inode, "name": _name(name)})

    @fuse_op
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: RequestContext) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise FUSEError(errno.EINVAL)  # RENAME_EXCHANGE / WHITEOUT: not on this MDT
        dst = _name(name_new)
        if flags & pyfuse3.RENAME_NOREPLACE:
            try:
                await self._md("lookup", {"parent": parent_inode_new, "name": dst})
            except NotFound:
                pass
            else:
                raise FUSEError(errno.EEXIST)
        self._destroy(await self._md("rename", {
            "src_parent": parent_inode_old, "src_name": _name(name_old),
            "dst_parent": parent_inode_new, "dst_name": dst}))

    # -- files ---------------------------------------------------------------------------
    async def _opened(self, data: dict[str, Any], flags: int) -> tuple[Handle, bool]:
        a = await self.client.sized(Attr.from_dict(data["attr"]))  # written elsewhere?
        layout = Layout.from_dict(a.layout) if a.layout else None
        # offsets come from the kernel, or for O_APPEND from the MDT (write() asks it): File
        # must not move them
        f = File(self.client, f"<inode {a.ino}>", a, int(data["handle"]),
                 flags & ~os.O_APPEND, a.size, layout)
        h, keep = self.table.open_file(f, append=bool(flags & os.O_APPEND))
        if flags & os.O_TRUNC and a.layout and not data.get("created"):
            try:
                await self.client.punch_objects(a.layout, 0)
            except BaseException:
                await self._release(h)
                raise
            self.table.truncated(h.node, 0)
            keep = False
        return h, keep

    @fuse_op
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self.table.nodes.get(inode)
        if flags & os.O_TRUNC and node is not None:
            await node.writer.settle()  # earlier writes must not land after the truncate
        early = (self.early.start(inode, flags, self.table.cached.get(inode))
                 if node is None and self.data else None)
        try:
            data = await self.client.open_inode(inode, flags)
            h, keep = await self._opened(data, flags)
        except BaseException:
            if early is not None:
                self.early.drop(early)
            raise
        if early is not None:
            try:
                keep = await self.early.hand_over(early, h.node, keep=keep) or keep
            except BaseException:  # cancelled: the kernel never learns of the handle
                await self._release(h)
                raise
        h.kill_caps = bool(data["attr"].get("caps"))  # only for an open that may write
        if flags & os.O_ACCMODE != os.O_RDONLY and ctx.uid != 0:
            h.kill_privs = True
            if flags & os.O_TRUNC:
                await self._kill_privs(h)
        # without keep_cache the kernel drops its pages at open, so an open sees what other
        # clients closed (close-to-open); they stay when the file is as they were read
        # (mount/handles.py)
        return file_info(h.fh, flags, keep)

    @fuse_op
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        args = self._new(parent_inode, name, ctx, mode=stat.S_IMODE(mode),
                         flags=flags | os.O_CREAT)
        data = await make_call(self.client.mdt, "open", args)
        h, _ = await self._opened(data, flags)
        return (file_info(h.fh, flags, False),
                self._entry(h.file.attr, args["parent"], args["name"]))

    @fuse_op
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        h = self.table.file(fh)
        node = h.node
        if node.writer.pending:
            await node.writer.settle()
        h.file.size = node.size
        end = min(off + size, node.size)  # the bytes the kernel will keep pages of
        if self.data is not None and not self.data.covered(node, Mode.PR, off, end):
            # the OSTs grant the locks with the reads where nothing conflicts
            served: Served = {}
            got = await node.reader.read(h.file, off, size, served=served)
            if self.data.current(node, served, off, end):
                return got
            # read under no lock of ours: one is asked for, and the bytes read again under
            # it (the read-ahead may go on to the end of the file)
            await self.data.hold(node, Mode.PR, off, max(off + size, node.size))
            node.reader.drop()
        return await node.reader.read(h.file, off, size)

    @fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.table.file(fh)
        node = h.node
        if h.kill_privs:
            await self._kill_privs(h)
        if h.kill_caps:
            # any write drops file capabilities, root's too (Linux's file_remove_privs)
            h.kill_caps = False
            with contextlib.suppress(NoData):
                await self._md("removexattr", {"ino": node.ino, "name": CAPS})
        if h.append:
            # the kernel's offset is the end of file as this mount last knew it: another
            # process or client may have appended since (a shell's `>>` opens, appends and
            # closes each time), so the MDT reserves the bytes where the end really is
            off = await self.client.append_offset(h.file, len(buf))
        node.writes += 1
        if node.reader.chunks:
            node.reader.drop()
        if (self.data is not None and node.writes == 1 and not node.writer.pending
                and (h.append or _write_only(h.file.flags))
                and not self.data.covered(node, Mode.PW, off, off + len(buf))):
            # the first write of a file, past the kernel's pages: sent as it is (the OST
            # takes a lock for it if anyone keeps these bytes) rather than buffered under a
            # lock asked for first. A small file written once (an untar) costs one RPC,
            # not two; a second write asks for the lock and buffers.
            await self.client.pwrite(h.file, buf, off)
        else:
            if self.data is not None:
                await self.data.hold(node, Mode.PW, off, off + len(buf))
            await node.writer.write(h.file, off, buf)
        node.size = max(node.size, off + len(buf))
        node.mtime = node.ctime = time.time()
        self.table.written(node, off, len(buf))
        return len(buf)

    async def _kill_privs(self, h: Handle) -> None:
        """Clear S_ISUID, and S_ISGID where it means setgid-on-exec (S_IXGRP), once per
        handle: a write or truncate by a process without CAP_FSETID must not leave a
        privileged program it changed (write-only opens bypass the kernel, which would
        otherwise do this itself)."""
        h.kill_privs = False
        mode = h.file.attr.mode
        killed = _killed_mode(mode)
        if killed != mode:
            a = await self._setattr({"ino": h.file.attr.ino, "mode": stat.S_IMODE(killed)})
            h.file.attr = a

    async def _report(self, node: Node, change: dict[str, Any] | None = None) -> Attr | None:
        """Land the buffered writes and tell the MDT the size and mtime they made: alone, or
        with a setattr of the inode (`change`; its reply is returned, None if there was no
        report to carry it). tar's futimens after its writes then carries the report, and
        the flush at close has none left to send: a round trip less a file. A setattr
        carries none where a write was refused since the last report (the flush tells the
        program) or where more than a chunk is still to land (a chmod of a file being
        streamed does not wait for its stream)."""
        w = node.writer
        if change is not None and (w.error is not None
                                   or w.inflight_bytes + w.buf_len > w.chunk):
            return None
        try:
            await (w.settle() if change is not None else w.drain())
        except ShoalError:
            self._refused(node)
            raise
        async with node.report_lock:
            a = await self._send_report(node, change)
        if a is not None:
            self.table.observe(a)  # the MDT has the size now: its reply is the truth
        return a

    async def _send_report(self, node: Node, change: dict[str, Any] | None) -> Attr | None:
        if not node.dirty or node.writer.error is not None:
            return None
        node.dirty = False
        wrote, node.wrote_pages = node.wrote_pages, 0
        end, node.wrote_end = node.wrote_end, 0
        # until the MDT has the size (the report lock is held), a getattr that overtakes the
        # report must not show the kernel the MDT's older size: it would move O_APPEND's
        # end of file back (HandleTable.observe).
        # The writes' own ctime, not the report's: what an fstat showed before the close
        # stays (git compares ctime; its checkout fstats before closing). A setattr moves
        # ctime to its own time.
        wrote_at = node.ctime if change is None else 0.0
        try:
            a = await self._setattr({"ino": node.ino, "grow_to": end,
                                     "mtime": node.mtime, "wrote_pages": wrote,
                                     **({"ctime": wrote_at} if wrote_at else {}),
                                     **(change or {})})
        except BaseException:
            node.dirty = True
            node.wrote_pages += wrote
            node.wrote_end = max(node.wrote_end, end)
            raise
        if not node.dirty:  # what the MDT kept; a write since keeps its own time
            node.ctime = a.ctime
        return a

    def _refused(self, node: Node) -> None:
        """Buffered writes were refused (EDQUOT, ENOSPC, EIO) after the program was told
        they were done, and it is being told now: the file ends where the furthest write
        that landed does, as on NFS and Lustre, not past the refused bytes (which would
        read as zeros)."""
        end = max(node.seen[1], node.writer.landed_end)
        if node.size > end:
            self.table.truncated(node, end)
            forget_attr(node.ino)

    @fuse_op
    async def flush(self, fh: int) -> None:
        await self._report(self.table.file(fh).node)

    @fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.table.file(fh)
        await self._report(h.node)
        h.file.size, h.file.dirty = h.node.size, False
        await self.client.fsync(h.file)

    async def _release(self, h: Handle) -> None:
        node = h.node
        try:
            await self._report(node)
        except ShoalError as exc:
            log.warning("inode %d: writes lost at close: %s", node.ino, exc)
        finally:
            self.table.closed(h)
            h.file.size, h.file.dirty = node.size, False
            await self.client.close_file(h.file)

    @fuse_op
    async def release(self, fh: int) -> None:
        await self._release(self.table.file(fh))

    # -- the file system -----------------------------------------------------------------
    @fuse_op
    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        s = await self.client.statfs()
        total = s["total"]
        mdt = next(iter(s["mdt"].values()), {})
        sv = StatvfsData()
        sv.f_bsize = sv.f_frsize = int(total["bsize"])
        sv.f_blocks = int(total["blocks"])
        sv.f_bfree = int(total["bfree"])
        sv.f_bavail = int(total["bavail"])
        sv.f_files = int(total["files"])
        sv.f_ffree = sv.f_favail = int(total["ffree"])
        sv.f_namemax = int(mdt.get("namelen", 255))
        return sv

    async def close_all(self) -> None:
        """At unmount: land every buffered write and close every handle on the MDT."""
        self.ahead.cancel()
        for h in list(self.table.files.values()):
            try:
                await self._release(h)
            except ShoalError as exc:
                log.warning("closing inode %d at unmount: %s", h.node.ino, exc)
