"""File data: open handles, striped parallel reads and writes to the OSTs (the osc half)."""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from shoal.client.data_locks import note_served, under_lock
from shoal.client.layout import Layout, Piece, map_range, pages_touched, split_piece
from shoal.client.md_calls import md_call
from shoal.client.namespace import Attr, NamespaceOps
from shoal.client.open_cache import NOT_KEPT
from shoal.errors import IsADirectory
from shoal.net.frame import HASH_PIECE, BulkHasher, HashedBulk
from shoal.net.sink import BulkSink
from shoal.protocol.ldlm import Mode

if TYPE_CHECKING:
    from shoal.client.background import CommitPressure


@dataclass(eq=False)
class File:
    """An open file. Not safe to share across event loops."""

    ops: FileOps
    path: str
    attr: Attr
    handle: int
    flags: int
    size: int
    layout: Layout | None
    pos: int = 0
    dirty: bool = False
    mtime: float = 0.0  # of the last write through this handle
    wrote_pages: int = 0  # 4 KiB pages written since the last report to the MDT
    closed: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, data: bytes | bytearray | memoryview, offset: int | None = None) -> int:
        off = self.pos if offset is None else offset
        if self.flags & os.O_APPEND:
            off = await self.ops.append_offset(self, len(data))
        n = await self.ops.pwrite(self, data, off)
        if offset is None:
            self.pos = off + n
        return n

    async def read(self, length: int = -1, offset: int | None = None) -> bytes:
        off = self.pos if offset is None else offset
        if length < 0:
            length = max(0, self.size - off)
        data = await self.ops.pread(self, length, off)
        if offset is None:
            self.pos = off + len(data)
        return data

    async def fsync(self) -> None:
        await self.ops.fsync(self)

    async def truncate(self, size: int) -> None:
        attr = await self.ops.truncate(self.path, size)
        self.size = size
        self.attr = attr

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.ops.close_file(self)

    async def __aenter__(self) -> File:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Gather:
    """Buffers read as one run of bytes."""

    __slots__ = ("views", "starts", "size")

    def __init__(self, bufs: Sequence[bytes | bytearray | memoryview]) -> None:
        self.views = [memoryview(b).cast("B") for b in bufs]
        self.starts = list(accumulate((len(v) for v in self.views[:-1]), initial=0))
        self.size = sum(len(v) for v in self.views)

    def copy_into(self, dst: memoryview, start: int) -> None:
        """dst gets the len(dst) bytes from start on."""
        i = bisect_right(self.starts, start) - 1
        pos, want = 0, len(dst)
        while pos < want:
            v = self.views[i]
            s = start + pos - self.starts[i]
            k = min(len(v) - s, want - pos)
            dst[pos:pos + k] = v[s:s + k]
            pos += k
            i += 1


class FileOps(NamespaceOps):
    """Files of a client: opens, reads and writes over the OSTs, on top of its namespace
    operations; under commit pressure (client/background.py) as it writes."""

    max_rpc_bytes: int
    pressure: CommitPressure

    async def open_inode(self, ino: int, flags: int) -> dict[str, Any]:
        """Open inode `ino` on the MDT: the reply's data (`handle`, `attr`). A read-only open
        takes a handle kept past an earlier close (client/open_cache.py) where there is one,
        with the attributes from the cache or fetched under a lock, and otherwise asks for
        an OPEN lock to keep its handle under."""
        mdt = self.mdt
        opens, md = mdt.opens, mdt.md_locks
        if opens is None or md is None or flags & NOT_KEPT:
            return await md_call(mdt, "open", {"ino": ino, "flags": flags})
        if not md.ready:
            await md.usable()
        handle = opens.take(ino)
        if handle is not None:
            try:
                attr = await self.getattr(ino)
            except BaseException:
                if not opens.release(ino, handle):
                    await opens.close_now(handle)
                raise
            return {"handle": handle, "attr": attr.to_dict()}
        gen = md.generation
        want = ["open"] if md.holds(ino) else ["open", "self"]
        data = await md_call(mdt, "open", {"ino": ino, "flags": flags, "lock": want})
        if data.get("lock") is not None:
            md.learn(gen, {**data["attr"], "lock": data["lock"]})
        opens.learn(gen, ino, int(data["handle"]), data.get("open_lock"))
        return data

    async def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644, *,
                   stripe_count: int | None = None, stripe_size: int | None = None,
                   stripe_offset: int | None = None) -> File:
        if self.mdt.opens is not None and not flags & NOT_KEPT:
            # a file found by the cached walk is opened by inode, where its handle may be
            # kept; a symbolic link or a directory is left to the MDT to resolve
            attr = await self.lstat(path)
            if attr.is_file:
                data = await self.open_inode(attr.ino, flags)
                a = await self.sized(Attr.from_dict(data["attr"]))
                return File(self, path, a, int(data["handle"]), flags, a.size,
                            Layout.from_dict(a.layout) if a.layout else None)
        args: dict[str, Any] = {"path": path, "flags": flags, "mode": mode, **self.owner}
        for k, v in (("stripe_count", stripe_count), ("stripe_size", stripe_size),
                     ("stripe_offset", stripe_offset)):
            if v is not None:
                args[k] = v
        # a create or truncate gives this client's own locks on what it changes back with it
        data = await md_call(self.mdt, "open", args)
        attr = await self.sized(Attr.from_dict(data["attr"]))
        if attr.is_dir and flags & (os.O_WRONLY | os.O_RDWR):
            raise IsADirectory(path)
        layout = Layout.from_dict(attr.layout) if attr.layout else None
        f = File(self, path, attr, int(data["handle"]), flags, attr.size, layout)
        if flags & os.O_TRUNC and layout is not None and not data.get("created"):
            await self.punch_objects(attr.layout or {}, 0)
            f.size = 0
        return f

    async def close_file(self, f: File) -> None:
        opens = self.mdt.opens
        if opens is not None and not f.dirty and opens.release(f.attr.ino, f.handle):
            return  # kept for the next open, under its OPEN lock
        args: dict[str, Any] = {"handle": f.handle}
        if f.dirty:
            # the mtime moves the inode's version: a mount that kept its pages of the
            # file sees it changed (mount/handles.py), as POSIX wants a write to show
            args["size"] = f.size
            args["mtime"] = f.mtime
            args["wrote_pages"] = f.wrote_pages
        data = (await self.mdt.call("close", args)).data
        if data.get("destroy"):
            self.destroyer.queue(data["destroy"])

    def _chunk(self, src: Gather, base: int, piece: Piece) -> HashedBulk:
        """The piece's bytes, copied out of the caller's buffers (a request is kept until its
        transno is committed, and replayed from this copy) and hashed as they are copied, a
        run of HASH_PIECE bytes at a time while it is still in the CPU's cache: the frame then
        signs with that digest (net/frame.py) instead of hashing 4 MiB from memory again."""
        out = HashedBulk(piece.length)
        view, h, pos = memoryview(out), BulkHasher(), 0
        for fo, n in piece.file_offsets:
            for k in range(0, n, HASH_PIECE):
                run = view[pos + k: pos + min(n, k + HASH_PIECE)]
                src.copy_into(run, fo - base + k)
                h.update(run)
            pos += n
        out.digest = h.digest()
        return out

    async def append_offset(self, f: File, length: int) -> int:
        """Where an O_APPEND write of `length` bytes goes: the MDT reserves them at the end
        of the file, so appends of other processes and clients never land on them."""
        data = (await self.mdt.call("append", {"handle": f.handle, "length": length})).data
        f.size = max(f.size, int(data["size"]))
        return int(data["offset"])

    async def pwrite(self, f: File, data: bytes | bytearray | memoryview, offset: int) -> int:
        return await self.pwritev(f, [data], offset)

    async def pwritev(self, f: File, bufs: Sequence[bytes | bytearray | memoryview],
                      offset: int) -> int:
        """bufs, one after another, at offset: the mount's write-behind gathers FUSE's 1 MiB
        writes this way, each copied once (into its RPC's bulk), never joined first."""
        if f.layout is None:
            raise IsADirectory(f.path)
        src = Gather(bufs)
        n = src.size
        if n == 0:
            return 0
        layout = f.layout
        calls = []
        # whose quotas the objects this write creates count in (target/ost_quota.py)
        owner = [f.attr.uid, f.attr.gid, f.attr.projid]
        for big in map_range(layout, offset, n):
            for piece in split_piece(big, self.max_rpc_bytes):
                chunk = self._chunk(src, offset, piece)
                imp = self.osts[layout.osts[piece.stripe]]
                args = {"oid": layout.oid, "offset": piece.obj_offset, "owner": owner}
                under_lock(imp.data_locks, args, Mode.PW)
                calls.append(imp.call("write", args, bulk=chunk))
        await asyncio.gather(*calls)
        f.size = max(f.size, offset + n)
        f.dirty = True
        f.mtime = time.time()
        f.wrote_pages += pages_touched(offset, n)
        await self.pressure.relieve()
        return n

    async def pread(self, f: File, length: int, offset: int, *,
                    into: bytearray | None = None,
                    served: dict[int, int | None] | None = None) -> bytes:
        """`length` bytes at `offset` (fewer at the end of the file; holes read as zeros),
        in `into` if given (reused: every byte of the result is written anew) or in a new
        buffer. A new bytearray is zeroed and then faulted in page by page as the replies
        land, which for a stream of 16 MiB reads costs as much as receiving them.
        `served` gets, by OST index, the handle of this client's lock each OST served the
        read under (None: under none of ours)."""
        if f.layout is None:
            raise IsADirectory(f.path)
        if f.attr.writers and offset + length > f.size:
            # written elsewhere, and asked past the end known: where the end is now
            f.size = max(f.size, (await self.sized(f.attr)).size)
        length = max(0, min(length, f.size - offset))
        if length == 0:
            return b""
        layout = f.layout
        if into is not None and len(into) >= length:
            out, stale = into, True
        else:
            out, stale = bytearray(length), False
        mv = memoryview(out)
        pieces = [p for big in map_range(layout, offset, length)
                  for p in split_piece(big, self.max_rpc_bytes)]

        async def fetch(piece: Piece) -> None:
            imp = self.osts[layout.osts[piece.stripe]]
            # the reply's bulk is received where its bytes belong in `out` (net/sink.py); its
            # checksum was verified with its frame (net/frame.py: BLAKE3 under the HMAC)
            sink = BulkSink([mv[fo - offset: fo - offset + n] for fo, n in piece.file_offsets])
            if stale:
                sink.dirty = sink.size  # what no reply fills is zeroed (clear_tail)
            args = {"oid": layout.oid, "offset": piece.obj_offset, "length": piece.length}
            dl = imp.data_locks
            under_lock(dl, args, Mode.PR)
            # a client that keeps data asks for the lock with the read (one RPC, not two)
            asked = "lock" not in args and dl is not None and dl.ask_with_read(layout.oid)
            if asked:
                args["enqueue"] = "PR"
            granted = None
            under = args.get("lock")
            try:
                reply = await imp.call("read", args, reply_into=sink)
                granted = reply.data.get("granted") if asked else None
            finally:
                sink.close()  # a late duplicate reply must not write into `out` from here on
                if asked and dl is not None:
                    under = dl.learn(layout.oid, granted, f.attr.ino)
            if served is not None:
                note_served(served, layout.osts[piece.stripe], under)
            if reply.bulk is sink:
                sink.clear_tail()  # holes past the object's end stay zero
                return
            view = memoryview(reply.bulk or b"")  # a small bulk came in a buffer of its own
            pos = 0
            for fo, n in piece.file_offsets:
                got = view[pos: pos + n]
                out[fo - offset: fo - offset + len(got)] = got  # holes stay zero
                pos += n
            sink.filled = len(view)
            sink.clear_tail()  # what an earlier, rejected reply wrote past this one's end

        await asyncio.gather(*(fetch(p) for p in pieces))
        # a bytearray is bytes-like for every caller; copying 16 MiB into bytes costs 15%
        return out if len(out) == length else mv[:length]  # type: ignore[return-value]

    async def fsync(self, f: File) -> None:
        if f.dirty:
            await self.mdt.call("setattr", {"ino": f.attr.ino, "grow_to": f.size,
                                            "mtime": f.mtime})
        if f.layout is not None:
            await asyncio.gather(*(self.osts[o].sync() for o in set(f.layout.osts)))
        await self.mdt.sync()

    async def write_file(self, path: str, data: bytes, **stripe: Any) -> None:
        f = await self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, **stripe)
        try:
            await f.write(data, 0)
        finally:
            await f.close()

    async def read_file(self, path: str) -> bytes:
        f = await self.open(path, os.O_RDONLY)
        try:
            return await f.read(-1, 0)
        finally:
            await f.close()
