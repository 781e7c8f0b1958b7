"""Directories through the mount: listings, and where a reader is in one.

An entry's offset (what telldir returns, and where the kernel asks a listing to go on
from) is a hash of its name, and a listing is served in the order of those offsets: going
on after offset s means the entries whose offset is above s, in whatever listing the mount
has now. An entry that did not change is then listed exactly once even if the directory
changed meanwhile, or if the listing went on from a newer copy: the kernel opens
directories itself (kernel_cache.py) and readers of one directory share its listing, so a
position in one copy must mean the same in any other. (As ext4's hashed directories do;
"." and ".." come first, at 1 and 2.)

With locks the kernel keeps what readdir answered in the directory's pages; the mount drops
them when the directory's lock goes. A reply on its way while that happens would fill the
pages again with the older listing, so the kernel cache is told when listings start and
end (`listing`), and drops the pages once more after one that overlapped a drop.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import hashlib
from typing import TYPE_CHECKING

import pyfuse3
from pyfuse3 import EntryAttributes, FUSEError, ReaddirToken, RequestContext

from shoal.client.namespace import Attr
from shoal.errors import NotFound, ShoalError
from shoal.mount.fuse_op import fuse_op
from shoal.mount.handles import DirHandle, HandleTable, Listing
from shoal.mount.kernel_cache import KernelCache

if TYPE_CHECKING:
    from shoal.client.client import Client

READDIR_BATCH = 64  # attributes fetched at once for readdirplus
AHEAD_DIRS = 64  # listings asked ahead and not yet here, at most
AHEAD_FLIGHT = 8  # of those, asked at once
AHEAD_DEPTH = 2  # levels below a listing the kernel asked for: its subdirectories' too
_DOTS = {".": 1, "..": 2}


def offset_of(name: str) -> int:
    """Where entry `name` is in any listing of its directory: 1 and 2 for "." and "..",
    else 3 and up (63 bits, as telldir's long must stay positive)."""
    fixed = _DOTS.get(name)
    if fixed is not None:
        return fixed
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return 3 + (int.from_bytes(digest, "big") >> 2)


def in_offset_order(entries: list[tuple[str, int, str]]) -> Listing:
    return sorted((offset_of(name), name, ino) for name, ino, _type in entries)


class ListingsAhead:
    """Listings asked for before the kernel asks (Lustre's statahead, two levels down): a
    directory the kernel lists has its subdirectories' listings asked for in the
    background, and theirs, so that a walk (find, du, diff -r, rsync) that goes into them
    finds them in the client's cache, kept under their locks, instead of waiting for one
    MDT round trip per directory in turn. A walk goes depth first: one level ahead, the
    first subdirectory it enters is still on its way. Only with the lock cache (without
    it nothing is kept)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._flight = asyncio.Semaphore(AHEAD_FLIGHT)
        self._asked: dict[int, asyncio.Task[None]] = {}

    def cold(self, ino: int) -> bool:
        """Whether directory `ino`'s listing would come from the MDT."""
        md = self.client.mdt.md_locks
        return md is not None and md.listing(ino) is None

    def ask(self, entries: list[tuple[str, int, str]], depth: int = 1) -> None:
        for _name, ino, kind in entries:
            if len(self._asked) >= AHEAD_DIRS:
                break
            if kind == "d" and ino not in self._asked and self.cold(ino):
                task = asyncio.get_running_loop().create_task(self._list(ino, depth))
                self._asked[ino] = task
                task.add_done_callback(lambda _t, i=ino: self._asked.pop(i, None))

    async def wait(self, ino: int) -> None:
        """A listing of `ino` asked ahead and still on its way: waited for, not asked twice."""
        task = self._asked.get(ino)
        if task is not None:
            await asyncio.shield(task)

    async def _list(self, ino: int, depth: int) -> None:
        async with self._flight:
            try:
                entries = await self.client.entries(ino)
            except ShoalError:
                return  # removed meanwhile, or the MDT away: the kernel's own readdir will say
        if depth < AHEAD_DEPTH:
            self.ask(entries, depth + 1)

    def cancel(self) -> None:
        for task in list(self._asked.values()):
            task.cancel()


class DirOps:
    """The FUSE directory requests of ShoalFS (which supplies the rest)."""

    client: Client
    table: HandleTable
    kernel: KernelCache
    kernel_opens_dirs: bool
    ahead: ListingsAhead

    def _entry(self, a: Attr, parent: int | None = None, name: str = "") -> EntryAttributes:
        raise NotImplementedError

    @fuse_op
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        if self.kernel_opens_dirs:  # then readdir gets the inode (kernel_cache.py)
            raise FUSEError(errno.ENOSYS)
        return self.table.open_dir(inode)

    async def _listing(self, ino: int) -> Listing:
        # ENOENT from here must mean the directory is gone: glibc's readdir takes it for the
        # end of a removed directory, so the program sees an empty one and no error
        up = await self.client.lookup(ino, "..")
        await self.ahead.wait(ino)
        entries = await self.client.entries(ino)
        self.ahead.ask(entries)  # those kept already are not asked again
        return in_offset_order([(".", ino, "d"), ("..", up.ino, "d"), *entries])

    async def _attr_or_none(self, ino: int) -> Attr | None:
        try:
            return await self.client.getattr(ino)
        except NotFound:
            return None  # removed since the listing was taken

    @fuse_op
    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        d = self.table.listed_dir(fh) if self.kernel_opens_dirs else self.table.dir(fh)
        with self.kernel.listing(d.ino):
            await self._reply(d, start_id, token)

    async def _reply(self, d: DirHandle, start_id: int, token: ReaddirToken) -> None:
        if d.entries is None or start_id == 0:
            d.entries = await self._listing(d.ino)  # rewinddir sees a fresh listing
            d.attrs = {}  # a new one: another reader of the directory may use the old
        entries, attrs = d.entries, d.attrs
        i = bisect.bisect_right(entries, start_id, key=lambda e: e[0])  # first past it
        if i == len(entries) and self.kernel_opens_dirs:
            # the kernel asks once more past the last entry sent, and is told the end: the
            # listing is all in its pages from here on (kept until then, not made again)
            self.table.listed.pop(d.ino, None)
            return
        while i < len(entries):
            batch = entries[i:i + READDIR_BATCH]
            want = [e for e in batch if e[0] not in attrs]
            got = await asyncio.gather(*(self._attr_or_none(e[2]) for e in want))
            for e, a in zip(want, got, strict=True):
                if a is not None:
                    attrs[e[0]] = a
            for offset, name, ino in batch:
                # taken by another reader of the directory meanwhile: asked again
                a = attrs.pop(offset, None) or await self._attr_or_none(ino)
                if a is None:
                    continue  # removed since the listing was taken
                if not pyfuse3.readdir_reply(token, name.encode(),
                                             self._entry(a, d.ino, name), offset):
                    attrs[offset] = a
                    return  # the kernel's buffer is full; it asks again from here
            i += READDIR_BATCH

    @fuse_op
    async def releasedir(self, fh: int) -> None:
        self.table.dirs.pop(fh, None)

    @fuse_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.client.mdt.sync()
