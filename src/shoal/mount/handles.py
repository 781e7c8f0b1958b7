"""Open files and directories of a mount, and what it knows of every inode it has open.

Only open inodes have state here. Shoal inode numbers are never reused, so the kernel's inode
numbers are Shoal's as they are and lookups need no table; what an open inode needs is its
size as this client knows it. The MDT learns a file's size when a writer reports it (flush,
fsync, close), so while writes are buffered or unreported the MDT's size is behind, and every
attribute reply is merged with the local size before the kernel sees it (a smaller size would
make the kernel drop the tail of its page cache). An MDT reply older than one already seen
(its inode version is lower: it raced with our own report) is not allowed to shrink anything.

The kernel's pages of a file outlive its last close. An open keeps them (FUSE keep_cache) when
the MDT shows the inode at the version and ctime they were read at: the close-to-open check
NFS makes with its change attribute. Every change to a file moves its MDT version (a writer
reports its size and mtime at fsync and close), and a writer that died before it reported
moves its ctime when the MDT evicts it (target/mdt_open.py), so a program started again
from the mount, or a job reading the same input twice, reads its pages from memory instead
of from the OSSs, and still sees any change another client closed or died with. Pages read
while the file changed, or from writes of this client, are not kept: the version they
belong to is not known.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

from shoal.client.client import Client
from shoal.client.fileio import File
from shoal.client.layout import Layout, pages_touched
from shoal.client.namespace import Attr
from shoal.errors import BadFileHandle
from shoal.mount.cache import ReadAhead, WriteBehind
from shoal.mount.options import MountOptions

MAX_CACHED = 1 << 16  # closed inodes whose page version is remembered
MAX_LISTED = 64  # directories read part way, without an open (HandleTable.listed_dir)

Stamp = tuple[int, float]  # (MDT inode version, ctime): what the kernel's pages belong to


def stamp(a: Attr) -> Stamp:
    return a.version, a.ctime


@dataclass(eq=False)
class Node:
    """An inode with at least one open file handle in this mount."""

    ino: int
    layout: Layout | None
    size: int
    stamp: Stamp  # the newest MDT stamp seen (an eviction moves its ctime alone)
    mtime: float  # newest mtime: the MDT's, or the time of our last write
    reader: ReadAhead
    writer: WriteBehind
    dirty: bool = False  # written since the size was last reported to the MDT
    ctime: float = 0.0  # the time of our last write (it moves ctime too), 0.0: none yet
    wrote_pages: int = 0  # 4 KiB pages written since then (the MDT counts them as blocks)
    # the end of the furthest write since then: what the size report grows the file to. Not
    # `size`, which may be from before another client's truncate (the report would undo it)
    wrote_end: int = 0
    # held while a size report is on its way to the MDT: a flush that finds nothing left
    # to report waits for the one another request sent (its close must not overtake it)
    report_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    writes: int = 0  # write()s through this mount since it was first opened
    opens: int = 0
    seen: tuple[float, int] = (0.0, 0)  # (mtime, size) the MDT last showed
    # the MDT stamp the kernel's pages of this inode belong to; None: unknown (changed
    # while open, or written here)
    cache_stamp: Stamp | None = None


@dataclass(eq=False)
class Handle:
    fh: int
    node: Node
    file: File
    append: bool = False  # O_APPEND: every write's offset is reserved at the MDT
    # opened for writing by a process that may not keep setuid/setgid bits (not root, so
    # no CAP_FSETID): its first write clears them, as the kernel's own file systems do
    kill_privs: bool = False
    kill_caps: bool = False  # the file has capabilities: the first write drops them


Listing = list[tuple[int, str, int]]  # (offset, name, inode), in offset order (mount/dirs.py)


@dataclass(eq=False)
class DirHandle:
    ino: int
    entries: Listing | None = None  # snapshot taken at offset 0
    attrs: dict[int, Attr] = field(default_factory=dict)  # by offset: fetched, not replied


class HandleTable:
    def __init__(self, client: Client, opts: MountOptions) -> None:
        self.client = client
        self.opts = opts
        self.nodes: dict[int, Node] = {}
        self.files: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.listed: OrderedDict[int, DirHandle] = OrderedDict()  # by inode (listed_dir)
        self._fh = itertools.count(1)
        # inodes no longer open -> the stamp their kernel pages belong to (newest last)
        self.cached: OrderedDict[int, Stamp] = OrderedDict()

    # -- lookups -------------------------------------------------------------------------
    def file(self, fh: int) -> Handle:
        h = self.files.get(fh)
        if h is None:
            raise BadFileHandle(f"no open file {fh}")
        return h

    def dir(self, fh: int) -> DirHandle:
        d = self.dirs.get(fh)
        if d is None:
            raise BadFileHandle(f"no open directory {fh}")
        return d

    # -- attributes ----------------------------------------------------------------------
    def observe(self, a: Attr) -> tuple[int, float, float]:
        """The (size, mtime, ctime) to show for an MDT attribute reply."""
        node = self.nodes.get(a.ino)
        if node is None:
            return a.size, a.mtime, a.ctime
        ctime = max(a.ctime, node.ctime)  # the size report carries our writes' ctime
        if a.version < node.stamp[0]:
            return node.size, node.mtime, ctime  # older than a reply already applied
        if stamp(a) != node.stamp:
            node.stamp = stamp(a)
            node.cache_stamp = None  # changed since the pages were read
        seen = (a.mtime, a.size)
        if seen != node.seen:
            # the inode changed on the MDT (another client, or our own report): what was
            # read ahead may be stale
            node.seen = seen
            node.reader.drop()
        if node.dirty or node.writer.pending or node.report_lock.locked():
            node.size = max(node.size, a.size)
            node.mtime = max(node.mtime, a.mtime)
        else:
            node.size, node.mtime = a.size, a.mtime
        return node.size, node.mtime, ctime

    def truncated(self, node: Node, size: int) -> None:
        node.size = size
        node.wrote_end = min(node.wrote_end, size)
        node.cache_stamp = None
        node.reader.drop()
        for h in self.files.values():
            if h.node is node:
                h.file.size = size

    # -- opening and closing -------------------------------------------------------------
    def open_file(self, f: File, *, append: bool = False) -> tuple[Handle, bool]:
        """The new handle, and whether the kernel may keep its pages of the file."""
        node = self.nodes.get(f.attr.ino)
        now = stamp(f.attr)
        if node is None:
            keep = self.cached.pop(f.attr.ino, None) == now
            layout = f.layout
            stripes = (layout.stripe_size, layout.stripe_count) if layout else (1 << 20, 1)
            chunk = self.opts.chunk_bytes(*stripes)
            mib = 1 << 20
            node = Node(
                f.attr.ino, layout, f.attr.size, now, f.attr.mtime,
                ReadAhead(self.client, self.opts.read_chunk_bytes(*stripes),
                          self.opts.readahead_mb * mib),
                WriteBehind(self.client, chunk, max(chunk, self.opts.writebehind_mb * mib)),
                seen=(f.attr.mtime, f.attr.size), cache_stamp=now)
            self.nodes[node.ino] = node
        else:
            self.observe(f.attr)
            keep = node.cache_stamp == now
            # a new open sees what other clients closed: close-to-open, as NFS
            node.reader.drop()
        if not keep:
            # the kernel drops its pages now (or has them stored anew with this open:
            # mount/early_read.py): what it caches from here on is of this stamp
            node.cache_stamp = None if node.dirty or node.writer.pending else now
        node.opens += 1
        h = Handle(next(self._fh), node, f, append)
        self.files[h.fh] = h
        return h, keep

    def written(self, node: Node, offset: int, length: int) -> None:
        node.dirty = True
        node.wrote_end = max(node.wrote_end, offset + length)
        node.wrote_pages += pages_touched(offset, length)
        node.cache_stamp = None

    def closed(self, h: Handle) -> None:
        self.files.pop(h.fh, None)
        node = h.node
        node.opens -= 1
        if node.opens <= 0 and self.nodes.get(node.ino) is node:
            del self.nodes[node.ino]
            node.reader.drop()
            if node.cache_stamp is not None and not node.dirty:
                self.cached[node.ino] = node.cache_stamp
                self.cached.move_to_end(node.ino)
                while len(self.cached) > MAX_CACHED:
                    self.cached.popitem(last=False)

    def open_dir(self, ino: int) -> int:
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(ino)
        return fh

    def listed_dir(self, ino: int) -> DirHandle:
        """The listing state of directory `ino` when the kernel opens directories itself:
        one per directory, shared by its readers, the snapshot taken at offset 0."""
        d = self.listed.get(ino)
        if d is None:
            d = self.listed[ino] = DirHandle(ino)
            while len(self.listed) > MAX_LISTED:
                self.listed.popitem(last=False)
        else:
            self.listed.move_to_end(ino)
        return d
