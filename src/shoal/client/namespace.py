"""Metadata operations: everything that goes to the MDT (the llite/mdc half of a client)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat as stat_mod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.client import md_extras as extras
from shoal.client.data_locks import under_lock
from shoal.client.layout import Layout, file_size_from_objects, object_size
from shoal.client.md_calls import made_attr, make_call, md_call, setattr_call
from shoal.errors import InvalidArgument, NoData, NotFound
from shoal.protocol.ldlm import Mode
from shoal.protocol.messages import ROOT_INO

if TYPE_CHECKING:
    from shoal.client.background import Destroyer
    from shoal.client.imports import Import
    from shoal.client.md_locks import MetadataLocks

READDIR_PAGE = 1000  # entries per readdir request
TYPE_BITS = {"f": stat_mod.S_IFREG, "d": stat_mod.S_IFDIR, "l": stat_mod.S_IFLNK,
             "p": stat_mod.S_IFIFO, "s": stat_mod.S_IFSOCK, "c": stat_mod.S_IFCHR,
             "b": stat_mod.S_IFBLK}


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    type: str  # a TYPE_BITS letter
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime: float
    mtime: float
    ctime: float
    version: int
    layout: dict[str, Any] | None = None
    default_layout: dict[str, Any] | None = None
    rdev: int = 0  # a device node's device number
    blocks: int | None = None  # a regular file's 512-byte blocks in use (None: not counted)
    # another client has it open for writing: its size is its objects' (NamespaceOps.sized)
    writers: bool = False
    projid: int = 0  # its project (quotas)
    projinherit: bool = False  # a directory whose new inodes take its project id

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attr:
        return cls(d["ino"], d["type"], d["mode"], d["nlink"], d.get("uid", 0), d.get("gid", 0),
                   d.get("size", 0), d.get("atime", 0.0), d.get("mtime", 0.0),
                   d.get("ctime", 0.0), d.get("version", 0), d.get("layout"),
                   d.get("default_layout"), d.get("rdev", 0), d.get("blocks"),
                   bool(d.get("writers", False)), d.get("projid", 0),
                   bool(d.get("projinherit", False)))

    def to_dict(self) -> dict[str, Any]:
        """What from_dict takes, sharing the layout dicts (dataclasses.asdict copies them
        deeply: a fifth of the mount's work for a kept open)."""
        return {name: getattr(self, name) for name in ATTR_FIELDS}

    @property
    def is_dir(self) -> bool:
        return self.type == "d"

    @property
    def is_file(self) -> bool:
        return self.type == "f"


ATTR_FIELDS = tuple(f.name for f in dataclasses.fields(Attr))


def _xname(name: str | bytes) -> bytes:
    return name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name


def _stripe_args(stripe_count: int | None, stripe_size: int | None,
                 stripe_offset: int | None) -> dict[str, int]:
    args: dict[str, int] = {}
    if stripe_count is not None:
        args["stripe_count"] = stripe_count
    if stripe_size is not None:
        args["stripe_size"] = stripe_size
    if stripe_offset is not None:
        args["stripe_offset"] = stripe_offset
    return args


class NamespaceOps:
    """The namespace operations of a client (client/client.py builds on them): its MDT
    import `mdt`, its OST imports, and the destroyer of unlinked files' objects."""

    mdt: Import
    osts: dict[int, Import]
    destroyer: Destroyer
    owner: dict[str, int]  # uid and gid of what it creates (client/client.py)

    async def _md(self, op: str, **args: Any) -> dict[str, Any]:
        return await md_call(self.mdt, op, args)

    async def _setattr(self, **args: Any) -> Attr:
        return Attr.from_dict(await setattr_call(self.mdt, args))

    async def stat(self, path: str) -> Attr:
        """Attributes of what path names, following a final symlink (as os.stat)."""
        if (a := await self._walk(path, follow=True)) is not None:
            return a
        return await self.sized(Attr.from_dict(await self._md("getattr", path=path,
                                                              follow=True)))

    async def lstat(self, path: str) -> Attr:
        """Attributes of path itself, a symlink included (as os.lstat)."""
        if (a := await self._walk(path, follow=False)) is not None:
            return a
        return await self.sized(Attr.from_dict(await self._md("getattr", path=path)))

    async def sized(self, a: Attr) -> Attr:
        """`a`, with the size a file another client has open for writing has now: its
        writer tells the MDT only at close, flush or fsync, so the OSTs are asked for the
        sizes of its objects (Lustre's glimpse). They call back the writers' locks first,
        and a writer lands what it buffered and reports its size before it lets go."""
        if not a.writers or not a.layout:
            return a
        layout = Layout.from_dict(a.layout)
        replies = await asyncio.gather(*(self.osts[o].call("getattr", {"oid": layout.oid})
                                         for o in layout.osts))
        size = file_size_from_objects(layout, [int(r.data.get("size", 0)) for r in replies])
        return a if size <= a.size else dataclasses.replace(a, size=size)

    async def _walk(self, path: str, *, follow: bool) -> Attr | None:
        """With the lock cache: `path` resolved a name at a time, from what the cache keeps
        where it can (the lookups that miss go to the MDT and ask for locks). None where the
        MDT must resolve it: no cache, "." or "..", or a symlink on the way."""
        names = [p for p in path.split("/") if p]
        if not names:
            return await self.getattr(ROOT_INO) if self.mdt.md_locks is not None else None
        where = await self._walk_dir(names[:-1])
        if where is None:
            return None
        attr = await self.lookup(where, names[-1])
        return None if attr.type == "l" and follow else attr

    async def _walk_dir(self, names: list[str]) -> int | None:
        """The directory `names` lead to from the root, by the names kept under LOOKUP locks
        (no directory's attributes are needed on the way, so a directory that changes as
        we go costs nothing); a name not kept is looked up, asking for its LOOKUP lock only.
        None without the cache, or where the MDT must resolve: "." or "..", a symlink, or
        something that is not a directory."""
        md = self.mdt.md_locks
        if md is None or any(n in (".", "..") for n in names):
            return None
        if not md.ready:
            await md.usable()
        cur = ROOT_INO
        for name in names:
            child = md.child(cur, name)
            kind = md.kind(child) if child is not None else None
            if child is None or kind is None:
                gen = md.generation
                data = await self._md("lookup", parent=cur, name=name, lock=["name"])
                md.learn(gen, data, parent=cur, name=name)
                child, kind = data["ino"], data["type"]
            if kind != "d":
                return None  # a symlink (the MDT follows it), or the MDT's ENOTDIR
            cur = child
        return cur

    async def getattr(self, ino: int) -> Attr:
        return await self.sized(await self._getattr(ino))

    async def _getattr(self, ino: int) -> Attr:
        md = self.mdt.md_locks
        if md is None:
            return Attr.from_dict(await self._md("getattr", ino=ino))
        if not md.ready:
            await md.usable()
        kept = md.attrs(ino)
        if kept is not None:
            return _kept_attr(kept)
        gen = md.generation
        data = await self._md("getattr", ino=ino, lock=[] if md.holds(ino) else ["self"])
        md.learn(gen, data)
        return Attr.from_dict(data)

    async def lookup(self, parent: int, name: str) -> Attr:
        return await self.sized(await self._lookup(parent, name))

    async def _lookup(self, parent: int, name: str) -> Attr:
        md = self.mdt.md_locks
        if md is None:
            return Attr.from_dict(await self._md("lookup", parent=parent, name=name))
        if name in (".", ".."):
            return await self._dot(md, parent, name)
        if not md.ready:
            await md.usable()
        child = md.child(parent, name)
        kept = md.attrs(child) if child is not None else None
        if kept is not None:
            return _kept_attr(kept)
        if child is None and md.absent(parent, name):
            raise NotFound(f"no {name!r} in directory {parent}")
        gen = md.generation
        want = ["self"] if child is None or not md.holds(child) else []
        if child is None:
            want += ["name", "absent"]
        try:
            data = await self._md("lookup", parent=parent, name=name, lock=want)
        except NotFound as exc:
            md.learn_absent(gen, parent, name, exc.reply_data.get("parent_lock"))
            raise
        md.learn(gen, data, parent=parent, name=name)
        return Attr.from_dict(data)

    async def _dot(self, md: MetadataLocks, parent: int, name: str) -> Attr:
        """"." or ".." of directory `parent`, from its attributes (a directory's carry its
        parent, and a move of it calls its lock back): never from the names kept in it, for
        a listing has neither and ".." does not name the directory it is in."""
        here = await self.getattr(parent)
        kept = md.attrs(parent)
        up = kept.get("parent") if kept is not None and here.is_dir else None
        if not isinstance(up, int):  # not kept (or not a directory): the MDT answers
            return Attr.from_dict(await self._md("lookup", parent=parent, name=name))
        return here if name == "." else await self.getattr(up)

    async def entries(self, ino: int) -> list[tuple[str, int, str]]:
        """Every entry of directory `ino` (name, inode, type; no "." or ".."), in pages of
        READDIR_PAGE; kept under the directory's lock when the client caches."""
        md = self.mdt.md_locks
        if md is not None and not md.ready:
            await md.usable()
        kept = md.listing(ino) if md is not None else None
        if kept is not None:
            return list(kept)  # a copy: an own create appends to the kept one (md_carry.py)
        gen = md.generation if md is not None else 0
        before = md.attr_lock(ino) if md is not None else None  # what the pages come under
        lock = ["self"] if md is not None and not md.holds(ino) else []
        out: list[tuple[str, int, str]] = []
        cookie, handle = 0, None
        while True:
            args: dict[str, Any] = {"ino": ino, "cookie": cookie, "count": READDIR_PAGE}
            if md is not None:  # each entry's attributes, kept under locks (statahead)
                args["plus"] = True
                args["lock"] = [*(lock if not cookie else []), "children"]
            elif lock and not cookie:
                args["lock"] = lock
            data = await self._md("readdir", **args)
            if not cookie:
                handle = data.get("lock")
            out.extend((e[0], int(e[1]), e[2]) for e in data["entries"])
            if md is not None:
                attrs = {e[1]: e[3] for e in data["entries"] if len(e) > 3}
                names = {e[1]: e[0] for e in data["entries"]}
                for child, h, *named in data.get("child_locks", []):
                    if child in attrs and named:  # the name too (node/locks.py)
                        md.learn(gen, {**attrs[child], "lock": h, "name_lock": h},
                                 parent=ino, name=names[child])
                    elif child in attrs:
                        md.learn(gen, {**attrs[child], "lock": h})
            cookie = data.get("cookie", 0)
            if not cookie:
                break
        if md is not None:
            md.learn_listing(gen, ino, handle, out, before)
        return out

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except NotFound:
            return False
        return True

    async def mkdir(self, path: str, mode: int = 0o755) -> Attr:
        return await self._make("mkdir", path, mode=mode)

    async def _make(self, op: str, path: str, **args: Any) -> Attr:
        """A create of some kind at `path`. With the lock cache, in the directory found by a
        walk, asking for locks on what it makes (an intent: node/locks.py), so that the
        next stat of it is answered here."""
        args = {**self.owner, **args}
        md = self.mdt.md_locks
        names = [p for p in path.split("/") if p]
        where = (await self._walk_dir(names[:-1])
                 if md is not None and names and names[-1] not in (".", "..") else None)
        if where is None:
            return Attr.from_dict(await self._md(op, path=path, **args))
        return Attr.from_dict(made_attr(await make_call(
            self.mdt, op, {"parent": where, "name": names[-1], **args})))

    async def makedirs(self, path: str, mode: int = 0o755) -> None:
        from shoal.errors import Exists

        parts = [p for p in path.split("/") if p]
        cur = ""
        for part in parts:
            cur += "/" + part
            try:
                await self.mkdir(cur, mode)
            except Exists:
                pass

    async def create(self, path: str, mode: int = 0o644, *, exclusive: bool = True,
                     stripe_count: int | None = None, stripe_size: int | None = None,
                     stripe_offset: int | None = None) -> Attr:
        args = _stripe_args(stripe_count, stripe_size, stripe_offset)
        return await self._make("create", path, mode=mode, exclusive=exclusive, **args)

    async def unlink(self, path: str) -> None:
        data = await self._md("unlink", path=path)
        if data.get("destroy"):
            self.destroyer.queue(data["destroy"])

    async def rmdir(self, path: str) -> None:
        await self._md("rmdir", path=path)

    async def rename(self, src: str, dst: str) -> None:
        data = await self._md("rename", src=src, dst=dst)
        if data.get("destroy"):
            self.destroyer.queue(data["destroy"])

    async def link(self, src: str, dst: str) -> Attr:
        return Attr.from_dict(await self._md("link", src=src, path=dst))

    async def symlink(self, target: str, path: str) -> Attr:
        return Attr.from_dict(await self._md("symlink", path=path, target=target,
                                                 **self.owner))

    async def mknod(self, path: str, mode: int, rdev: int = 0) -> Attr:
        """A FIFO, socket or device node (mode carries the file type, as mknod(2)'s)."""
        return Attr.from_dict(await self._md("mknod", path=path, mode=mode, rdev=rdev,
                                             **self.owner))

    # -- extended attributes (of the inode itself, a final symlink included: l*xattr) ----
    async def getxattr(self, path: str, name: str | bytes) -> bytes:
        return bytes((await self._md("getxattr", path=path, name=_xname(name)))["value"])

    async def getxattr_inode(self, ino: int, name: bytes) -> bytes:
        """Extended attribute `name` of inode `ino`: kept with its attributes under their
        lock (a writer's kernel asks for security.capability before every write)."""
        md = self.mdt.md_locks
        before = None
        if md is not None:
            if not md.ready:
                await md.usable()
            kept = extras.xattr(md, ino, name)
            if kept is False:
                raise NoData(f"inode {ino}: no xattr {name!r}")
            if isinstance(kept, bytes):
                return kept
            before = md.attr_lock(ino)
        try:
            value = bytes((await self._md("getxattr", ino=ino, name=name))["value"])
        except NoData:
            if md is not None:
                extras.learn_xattr(md, before, ino, name, False)
            raise
        if md is not None:
            extras.learn_xattr(md, before, ino, name, value)
        return value

    async def listxattr(self, path: str) -> list[bytes]:
        return [bytes(n) for n in (await self._md("listxattr", path=path))["names"]]

    async def setxattr(self, path: str, name: str | bytes, value: bytes, flags: int = 0
                       ) -> None:
        """flags: os.XATTR_CREATE (EEXIST if it exists), os.XATTR_REPLACE (ENODATA if not)."""
        await self._md("setxattr", path=path, name=_xname(name), value=bytes(value),
                       flags=flags)

    async def removexattr(self, path: str, name: str | bytes) -> None:
        await self._md("removexattr", path=path, name=_xname(name))

    async def readlink(self, path: str) -> str:
        if self.mdt.md_locks is not None:
            attr = await self._walk(path, follow=False)
            if attr is not None:
                if attr.type != "l":
                    raise InvalidArgument(f"{path}: not a symbolic link")
                return await self.readlink_inode(attr.ino)
        return str((await self._md("readlink", path=path))["target"])

    async def readlink_inode(self, ino: int) -> str:
        """The target of symbolic link `ino`: kept with its attributes (a link's target
        never changes, and the lock goes with the inode)."""
        md = self.mdt.md_locks
        if md is not None and not md.ready:
            await md.usable()
        if md is not None and (kept := extras.link_target(md, ino)) is not None:
            return kept
        before = md.attr_lock(ino) if md is not None else None
        target = str((await self._md("readlink", ino=ino))["target"])
        if md is not None:
            extras.learn_target(md, before, ino, target)
        return target

    async def readdir(self, path: str) -> list[tuple[str, int, str]]:
        """(name, ino, type) for every entry, paging through large directories."""
        out: list[tuple[str, int, str]] = []
        cookie = 0
        while True:
            data = await self._md("readdir", path=path, cookie=cookie, count=1000)
            out.extend((e[0], e[1], e[2]) for e in data["entries"])
            cookie = data.get("cookie", 0)
            if not cookie:
                return out

    async def listdir(self, path: str) -> list[str]:
        return [name for name, _, _ in await self.readdir(path)]

    async def chmod(self, path: str, mode: int) -> Attr:
        return await self._setattr(path=path, mode=mode)

    async def chown(self, path: str, uid: int, gid: int) -> Attr:
        return await self._setattr(path=path, uid=uid, gid=gid)

    async def utime(self, path: str, atime: float, mtime: float) -> Attr:
        return await self._setattr(path=path, atime=atime, mtime=mtime)

    async def truncate(self, path: str, size: int) -> Attr:
        # what others buffered before it lands first, and reports its size before the MDT
        # takes the new one (the glimpse of a file written elsewhere: `sized`)
        await self.stat(path)
        attr = await self._setattr(path=path, size=size)
        if attr.layout:
            await self.punch_objects(attr.layout, size)
        return attr

    async def punch_objects(self, layout_d: dict[str, Any], size: int) -> None:
        layout = Layout.from_dict(layout_d)
        await asyncio.gather(*(
            self.osts[ost].call("punch", under_lock(
                self.osts[ost].data_locks,
                {"oid": layout.oid, "size": object_size(layout, size, stripe)}, Mode.PW))
            for stripe, ost in enumerate(layout.osts)))

    async def setstripe(self, path: str, *, stripe_count: int = -1, stripe_size: int = 1 << 20,
                        stripe_offset: int = -1) -> None:
        """On a directory: its default layout. On a new path: create an empty striped file."""
        try:
            attr = await self.stat(path)
        except NotFound:
            await self.create(path, stripe_count=stripe_count, stripe_size=stripe_size,
                              stripe_offset=stripe_offset)
            return
        if not attr.is_dir:
            from shoal.errors import Exists

            raise Exists(f"{path}: file exists (a file's layout is fixed at creation)")
        await self._md("setstripe", path=path, stripe_count=stripe_count,
                       stripe_size=stripe_size, stripe_offset=stripe_offset)

    async def getstripe(self, path: str) -> dict[str, Any] | None:
        attr = await self.stat(path)
        return attr.layout if attr.is_file else attr.default_layout

    async def statfs(self) -> dict[str, Any]:
        """Per-target space (as `lfs df` shows it) and the file system totals."""
        mdt_task = self.mdt.call("statfs", {})
        ost_tasks = [imp.call("statfs", {}) for imp in self.osts.values()]
        results = await asyncio.gather(mdt_task, *ost_tasks)
        mdt = dict(results[0].data)
        # as statvfs counts them: `files` the total, `ffree` the free (the MDT says how
        # many are in use)
        mdt["files"] = int(mdt.get("files", 0)) + int(mdt.get("ffree", 0))
        osts = {imp.target: r.data for imp, r in zip(self.osts.values(), results[1:], strict=True)}
        bsize = next(iter(osts.values()))["bsize"] if osts else os.sysconf("SC_PAGE_SIZE")
        total = {
            "bsize": bsize,
            "blocks": sum(o["blocks"] for o in osts.values()),
            "bfree": sum(o["bfree"] for o in osts.values()),
            "bavail": sum(o["bavail"] for o in osts.values()),
            "files": mdt["files"],
            "ffree": mdt.get("ffree", 0),
        }
        return {"mdt": {self.mdt.target: mdt}, "osts": osts, "total": total}


def _kept_attr(kept: dict[str, Any]) -> Attr:
    """The Attr of attributes kept under a lock, made once (a cached stat is the hot path,
    and Attr is immutable)."""
    a = kept.get("_attr")
    if not isinstance(a, Attr):
        a = kept["_attr"] = Attr.from_dict(kept)
    return a
