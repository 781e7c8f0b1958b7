"""The namespace on disk: inode and directory-entry tables, name rules and path walks.

Tables (in the target's own target.db, so a namespace change and its reply data commit in
the same SQLite transaction):
  inodes   one row per inode; `parent` is a directory's ".." (0 for other inodes), `layout`
           a file's layout or a directory's default layout (msgpack), `target` a symlink's,
           `rdev` a device node's device number (FIFOs, sockets and device nodes live on the
           MDT alone: no layout, no objects); `blocks` a regular file's 512-byte blocks in
           use, as its writers' reports add them up (NULL: not counted, an inode older than
           the count, which shows its size in blocks).
  xattrs   (ino, name) -> value, an inode's extended attributes (target/mdt_xattr.py); they
           go with the inode.
  dirents  (parent, name) -> ino; WITHOUT ROWID so a lookup is one b-tree descent. `seq` is
           a per-MDT counter: readdir pages by it so a cookie stays valid while entries come
           and go (a name-ordered cookie would need the name; an offset skips entries).

Inode numbers are the transno of the request that created the inode: unique forever (never
reused, so a stale cache entry can only miss), and a replay, which keeps its transno,
recreates the very same inode number the client was first told.

Path walks follow Linux: "." and ".." in any position, empty components ignored, symlinks in
intermediate components followed (relative targets from the directory holding the link,
absolute ones from the root), at most 40 symlinks per walk (ELOOP). The final component is
followed only when asked. Directories reached by plain paths are cached by path; the cache is
dropped whenever a directory is removed or moved, the only events that make a plain path
name a different directory.
"""

from __future__ import annotations

import sqlite3
import stat as st
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from shoal.errors import (
    Exists,
    InvalidArgument,
    NameTooLong,
    NotADirectory,
    NotFound,
    TooManyLinks,
)
from shoal.protocol.messages import ROOT_INO

MAX_NAME = 255  # bytes, UTF-8
PROJINHERIT = 1  # inodes.flags: new inodes in this directory take its project id
MAX_PATH = 4096
MAX_SYMLINKS = 40
INT64_MAX = (1 << 63) - 1
_DCACHE_MAX = 1 << 16
_DIRS_MAX = 1 << 16

XATTR_TABLE = ("CREATE TABLE IF NOT EXISTS xattrs (ino INTEGER NOT NULL, name BLOB NOT NULL, "
               "value BLOB NOT NULL, PRIMARY KEY (ino, name)) WITHOUT ROWID")
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS inodes (
        ino INTEGER PRIMARY KEY, mode INTEGER NOT NULL, nlink INTEGER NOT NULL,
        uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
        atime REAL NOT NULL, mtime REAL NOT NULL, ctime REAL NOT NULL,
        version INTEGER NOT NULL, parent INTEGER NOT NULL, layout BLOB, target TEXT,
        rdev INTEGER NOT NULL DEFAULT 0, blocks INTEGER, projid INTEGER NOT NULL DEFAULT 0,
        flags INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS dirents (
        parent INTEGER NOT NULL, name TEXT NOT NULL, ino INTEGER NOT NULL,
        type TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (parent, name)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS dirents_seq ON dirents (parent, seq)",
    XATTR_TABLE,
)

# column order of every inode SELECT and INSERT; attr_of() unpacks it
INODE_COLS = ("ino, mode, nlink, uid, gid, size, atime, mtime, ctime, version, parent, layout, "
              "target, rdev, blocks, projid, flags")
SQL_INODE = f"SELECT {INODE_COLS} FROM inodes WHERE ino=?"
SQL_LOOKUP = "SELECT ino, type FROM dirents WHERE parent=? AND name=?"
SQL_DIR = "SELECT mode, version, layout, parent, projid, flags FROM inodes WHERE ino=?"
SQL_ADD_ENTRY = "INSERT INTO dirents (parent, name, ino, type, seq) VALUES (?,?,?,?,?)"
SQL_DEL_ENTRY = "DELETE FROM dirents WHERE parent=? AND name=?"
SQL_ADD_INODE = f"INSERT INTO inodes ({INODE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
# ctime moves strictly forward with every change of the entries, even two in one tick of
# the clock: clients take (ctime, nlink) to mean "nothing else changed it" (node/dir_carry.py)
CTIME_STEP = 1e-6
SQL_TOUCH_DIR = ("UPDATE inodes SET mtime=?, ctime=MAX(?, ctime + ?), nlink=nlink+? "
                 "WHERE ino=?")
SQL_HAS_ENTRY = "SELECT 1 FROM dirents WHERE parent=? LIMIT 1"

_unpack = msgpack.unpackb
_pack = msgpack.packb


def check_name(name: Any) -> str:
    """A name that may be created in a directory, or EINVAL / ENAMETOOLONG."""
    if not isinstance(name, str):
        raise InvalidArgument(f"a name must be a string, not {type(name).__name__}")
    if not name or name == "." or name == ".." or "/" in name or "\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")
    # a name of 63 characters is at most 252 bytes: skip the encode for the common case
    if len(name) > 63 and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise NameTooLong(f"name longer than {MAX_NAME} bytes")
    return name


def check_path(path: Any) -> str:
    if not isinstance(path, str):
        raise InvalidArgument(f"a path must be a string, not {type(path).__name__}")
    if path[:1] != "/":
        raise InvalidArgument(f"not an absolute path: {path!r}")
    if "\0" in path:
        raise InvalidArgument("path contains NUL")
    if len(path) >= MAX_PATH:
        raise NameTooLong(f"path longer than {MAX_PATH} bytes")
    return path


def check_int(v: Any, key: str) -> int:
    """An integer argument that SQLite and msgpack can hold (bool is not an integer here)."""
    if type(v) is not int or not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise InvalidArgument(f"{key} must be a 64-bit integer, not {v!r}")
    return v


def check_ino(ino: Any) -> int:
    if type(ino) is not int or not 0 < ino <= INT64_MAX:
        raise InvalidArgument(f"not an inode number: {ino!r}")
    return ino


# the type letter of a directory entry and an attr, by the mode's file type
TYPES = {st.S_IFREG: "f", st.S_IFDIR: "d", st.S_IFLNK: "l", st.S_IFIFO: "p",
         st.S_IFSOCK: "s", st.S_IFCHR: "c", st.S_IFBLK: "b"}


def blocks_cap(size: int) -> int:
    """The most 512-byte blocks a file of `size` bytes uses: all its 4 KiB pages."""
    return -(-size // 4096) * 8


def count_blocks(blocks: int | None, size: int, wrote_pages: int) -> int | None:
    """A regular file's blocks in use after its writer reports `wrote_pages` 4 KiB pages
    written since its last report: each adds its 8 blocks, up to what the size can hold
    (a page written twice is counted once the file is full; a sparse file's holes are
    never counted, so `truncate -s 1G` uses none, as on ext4). NULL stays NULL."""
    if blocks is None:
        return None
    return min(blocks + 8 * wrote_pages, blocks_cap(size))


def type_of(mode: int) -> str:
    return TYPES.get(mode & 0o170000, "f")


def attr_of(row: tuple[Any, ...]) -> dict[str, Any]:
    """The attribute dict of an inode row (INODE_COLS order)."""
    ino, mode, nlink, uid, gid, size, atime, mtime, ctime, version, parent, layout, _t, rdev, \
        blocks, projid, flags = row
    fmt = mode & 0o170000
    a = {"ino": ino, "type": type_of(mode),
         "mode": mode, "nlink": nlink, "uid": uid, "gid": gid, "size": size,
         "atime": atime, "mtime": mtime, "ctime": ctime, "version": version}
    if fmt == st.S_IFDIR:
        # its "..": a client keeps it with the attributes, under the lock a move calls back
        a["parent"] = parent
    if layout is not None:
        a["default_layout" if fmt == st.S_IFDIR else "layout"] = _unpack(layout)
    if rdev:
        a["rdev"] = rdev
    if blocks is not None:
        a["blocks"] = blocks
    if projid:
        a["projid"] = projid
    if flags & PROJINHERIT:
        a["projinherit"] = True
    return a


@dataclass(slots=True)
class Found:
    """Where a walk ended: the directory holding the final name, and what the name is."""

    parent: int
    name: str  # "" when the path named the root
    ino: int  # 0: no such entry (the name can be created)
    type: str  # a TYPES letter; "" when absent
    must_dir: bool = False  # the path ended in "/"


class Namespace:
    """Lookups, walks and the small mutations every metadata operation is made of."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # one cursor for every statement: Connection.execute makes a new cursor each time
        self.sql = db.cursor().execute
        self._dcache: dict[str, int] = {"": ROOT_INO}
        # directory rows (mode, version, default layout, parent), written through
        self._dirs: dict[int, list[Any]] = {}
        columns = {r[1] for r in db.execute("PRAGMA table_info(inodes)")}
        if "rdev" not in columns:  # formatted before device nodes existed
            db.execute("ALTER TABLE inodes ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0")
        if "blocks" not in columns:  # and before blocks were counted
            db.execute("ALTER TABLE inodes ADD COLUMN blocks INTEGER")
        if "projid" not in columns:  # and before projects
            db.execute("ALTER TABLE inodes ADD COLUMN projid INTEGER NOT NULL DEFAULT 0")
            db.execute("ALTER TABLE inodes ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
        db.execute(XATTR_TABLE)  # and before xattrs
        max_seq = db.execute("SELECT MAX(seq) FROM dirents").fetchone()[0]
        self._seq = (max_seq or 0) + 1
        self.files = db.execute("SELECT COUNT(*) FROM inodes").fetchone()[0]
        # the quota check of a new inode's owners (target/mdt_quota.py), when limits exist
        self.before_new_inode: Callable[[int, int, int], None] | None = None

    @staticmethod
    def format(db: sqlite3.Connection, now: float) -> None:
        for sql in SCHEMA:
            db.execute(sql)
        db.execute(SQL_ADD_INODE, (ROOT_INO, st.S_IFDIR | 0o755, 2, 0, 0, 0, now, now, now, 0,
                                   ROOT_INO, None, None, 0, None, 0, 0))

    # -- caches --------------------------------------------------------------------------
    def forget_paths(self) -> None:
        """A directory was removed or moved: cached paths may name something else now."""
        self._dcache.clear()
        self._dcache[""] = ROOT_INO

    def rolled_back(self, files: int) -> None:
        """A request's savepoint was rolled back: forget what it changed in memory."""
        self._dirs.clear()
        self.files = files

    # -- reads ---------------------------------------------------------------------------
    def inode(self, ino: int) -> tuple[Any, ...]:
        row = self.sql(SQL_INODE, (ino,)).fetchone()
        if row is None:
            raise NotFound(f"no inode {ino}")
        return row

    def entry(self, parent: int, name: str) -> tuple[int, str] | None:
        return self.sql(SQL_LOOKUP, (parent, name)).fetchone()

    def dir_row(self, ino: int) -> list[Any]:
        """[mode, version, default layout, parent, projid, flags] of a directory; ENOENT /
        ENOTDIR.

        The list is the cached row itself: read it, never change it."""
        row = self._dirs.get(ino)
        if row is not None:
            return row
        found = self.sql(SQL_DIR, (ino,)).fetchone()
        if found is None:
            raise NotFound(f"no directory {ino}")
        if found[0] & 0o170000 != st.S_IFDIR:
            raise NotADirectory(f"inode {ino} is not a directory")
        if len(self._dirs) >= _DIRS_MAX:
            self._dirs.clear()
        row = self._dirs[ino] = list(found)
        return row

    def parent_of(self, ino: int) -> int:
        try:
            return int(self.dir_row(ino)[3])
        except (NotFound, NotADirectory):
            return ROOT_INO

    def is_empty(self, ino: int) -> bool:
        return self.sql(SQL_HAS_ENTRY, (ino,)).fetchone() is None

    def is_ancestor(self, anc: int, ino: int) -> bool:
        """Whether directory `anc` is `ino` or one of its ancestors."""
        seen = 0
        while True:
            if ino == anc:
                return True
            if ino == ROOT_INO or seen > 1 << 20:
                return False
            ino = self.parent_of(ino)
            seen += 1

    # -- walks ---------------------------------------------------------------------------
    def walk(self, path: Any, *, follow: bool = False) -> Found:
        """Resolve an absolute path; the final entry may be absent (Found.ino == 0)."""
        check_path(path)
        head, _, last = path.rpartition("/")
        pino = self._dcache.get(head)
        if pino is not None and last and last != "." and last != "..":
            if len(last) > 63 and len(last.encode("utf-8", "surrogatepass")) > MAX_NAME:
                raise NameTooLong(f"name longer than {MAX_NAME} bytes")
            row = self.sql(SQL_LOOKUP, (pino, last)).fetchone()
            if row is None:
                return Found(pino, last, 0, "")
            if row[1] != "l" or not follow:
                return Found(pino, last, row[0], row[1])
        return self._walk(ROOT_INO, path, follow, [0])

    def _walk(self, start: int, path: str, follow: bool, links: list[int]) -> Found:
        parts = path.split("/")
        must_dir = False
        while len(parts) > 1 and parts[-1] == "":
            parts.pop()
            must_dir = True
        absolute = path[:1] == "/"
        cur = ROOT_INO if absolute else start
        # plain prefixes (no dots, symlinks or empty parts) are cached by their path
        prefix: str | None = "" if absolute else None
        for comp in parts[1:-1] if absolute else parts[:-1]:
            if comp == "" or comp == ".":
                prefix = None
                continue
            if comp == "..":
                cur = self.parent_of(cur)
                prefix = None
                continue
            if len(comp) > 63 and len(comp.encode("utf-8", "surrogatepass")) > MAX_NAME:
                raise NameTooLong(f"name longer than {MAX_NAME} bytes")
            row = self.sql(SQL_LOOKUP, (cur, comp)).fetchone()
            if row is None:
                raise NotFound(f"{path}: no such file or directory ({comp!r})")
            ino, typ = row
            if typ == "l":
                f = self._follow(cur, ino, links)
                if not f.ino:
                    raise NotFound(f"{path}: dangling symlink {comp!r}")
                ino, typ = f.ino, f.type
                prefix = None
            if typ != "d":
                raise NotADirectory(f"{path}: {comp!r} is not a directory")
            cur = ino
            if prefix is not None:
                prefix = f"{prefix}/{comp}"
                if len(self._dcache) >= _DCACHE_MAX:
                    self.forget_paths()
                self._dcache[prefix] = cur
        last = parts[-1]
        if last == "":  # the root itself
            return Found(cur, "", cur, "d", must_dir)
        if last == ".":
            return Found(self.parent_of(cur), ".", cur, "d", must_dir)
        if last == "..":
            up = self.parent_of(cur)
            return Found(self.parent_of(up), "..", up, "d", must_dir)
        if len(last) > 63 and len(last.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise NameTooLong(f"name longer than {MAX_NAME} bytes")
        row = self.sql(SQL_LOOKUP, (cur, last)).fetchone()
        if row is None:
            return Found(cur, last, 0, "", must_dir)
        ino, typ = row
        if typ == "l" and (follow or must_dir):
            f = self._follow(cur, ino, links)
            f.must_dir = f.must_dir or must_dir
            return f
        return Found(cur, last, ino, typ, must_dir)

    def _follow(self, cur: int, link_ino: int, links: list[int]) -> Found:
        links[0] += 1
        if links[0] > MAX_SYMLINKS:
            raise TooManyLinks("too many levels of symbolic links")
        row = self.sql("SELECT target FROM inodes WHERE ino=?", (link_ino,)).fetchone()
        target = row[0] if row else ""
        if not target:
            raise NotFound("empty symlink")
        return self._walk(cur, target, True, links)

    def where(self, args: dict[str, Any], path_key: str = "path", parent_key: str = "parent",
              name_key: str = "name", *, follow: bool = False) -> Found:
        """The entry a request names, by path or by parent inode + name."""
        path = args.get(path_key)
        if path is not None:
            return self.walk(path, follow=follow)
        parent = args.get(parent_key)
        if parent is None:
            raise InvalidArgument(f"give {path_key} or {parent_key} + {name_key}")
        check_ino(parent)
        name = args.get(name_key)
        if not isinstance(name, str):
            raise InvalidArgument(f"{name_key} must be a string")
        check_name(name)
        self.dir_row(parent)
        row = self.entry(parent, name)
        if row is None:
            return Found(parent, name, 0, "")
        if row[1] == "l" and follow:
            return self._follow(parent, row[0], [0])
        return Found(parent, name, row[0], row[1])

    def target_ino(self, args: dict[str, Any], *, follow: bool = False) -> int:
        """The inode a request names by `ino` or `path`; ENOENT if there is none."""
        ino = args.get("ino")
        if ino is not None:
            return check_ino(ino)
        f = self.walk(args.get("path"), follow=follow)
        if not f.ino:
            raise NotFound(f"{args.get('path')}: no such file or directory")
        if f.must_dir and f.type != "d":
            raise NotADirectory(f"{args.get('path')}: not a directory")
        return f.ino

    # -- mutations (inside the request's savepoint) ---------------------------------------
    def add_entry(self, parent: int, name: str, ino: int, typ: str) -> None:
        try:
            self.sql(SQL_ADD_ENTRY, (parent, name, ino, typ, self._seq))
        except sqlite3.IntegrityError:
            raise Exists(f"{name}: file exists") from None
        self._seq += 1

    def del_entry(self, parent: int, name: str) -> None:
        self.sql(SQL_DEL_ENTRY, (parent, name))

    def add_inode(self, ino: int, mode: int, nlink: int, uid: int, gid: int, size: int,
                  now: float, version: int, parent: int, layout: dict[str, Any] | None,
                  target: str | None, rdev: int = 0, blocks: int | None = None,
                  project: tuple[int, int] = (0, 0)) -> None:
        """`project`: (projid, flags), what the new inode inherits (project_of)."""
        if not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32):
            raise InvalidArgument(f"uid {uid} and gid {gid} must be 32-bit unsigned integers")
        if self.before_new_inode is not None:
            self.before_new_inode(uid, gid, project[0])
        try:
            self.sql(SQL_ADD_INODE, (
                ino, mode, nlink, uid, gid, size, now, now, now, version, parent,
                None if layout is None else _pack(layout), target, rdev, blocks, *project))
        except sqlite3.IntegrityError:
            raise Exists(f"inode {ino} exists") from None
        self.files += 1

    def project_of(self, parent: int, is_dir: bool) -> tuple[int, int]:
        """(projid, flags) of a new inode in `parent`: its project when the directory passes
        it on (PROJINHERIT, as ext4 and Lustre do), and for a directory the flag too."""
        row = self.dir_row(parent)
        if not row[5] & PROJINHERIT:
            return (0, 0)
        return (row[4], PROJINHERIT if is_dir else 0)

    def drop_inode(self, ino: int) -> None:
        self.sql("DELETE FROM inodes WHERE ino=?", (ino,))
        self.sql("DELETE FROM xattrs WHERE ino=?", (ino,))
        self.files -= 1
        self._dirs.pop(ino, None)

    def touch_dir(self, ino: int, now: float, nlink_delta: int = 0) -> None:
        """A name in the directory came or went: its times and nlink move, its version
        does not (VBR: names in one directory commute; mdt_ops says why)."""
        self.sql(SQL_TOUCH_DIR, (now, now, CTIME_STEP, nlink_delta, ino))

    def set_fields(self, ino: int, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        self.sql(f"UPDATE inodes SET {cols} WHERE ino=?", (*fields.values(), ino))
        self._dirs.pop(ino, None)

    def readdir(self, ino: int, cookie: int, count: int,
                plus: bool = False) -> tuple[list[list[Any]], int]:
        """A page of directory `ino`'s entries [name, inode, type] after `cookie`, and the
        next cookie (0: the last page). `plus`: each entry with its attributes too (one
        join, as readdirplus: a client listing a directory usually stats it all next)."""
        if plus:
            cols = ", ".join(f"i.{c.strip()}" for c in INODE_COLS.split(","))
            rows = self.sql(
                f"SELECT d.name, d.type, d.seq, {cols} FROM dirents d JOIN inodes i "  # noqa: S608
                "ON i.ino = d.ino WHERE d.parent=? AND d.seq>? ORDER BY d.seq LIMIT ?",
                (ino, cookie, count + 1)).fetchall()
            more = len(rows) > count
            rows = rows[:count]
            return ([[r[0], r[3], r[1], attr_of(r[3:])] for r in rows],
                    (rows[-1][2] if more else 0))
        rows = self.sql(
            "SELECT name, ino, type, seq FROM dirents WHERE parent=? AND seq>? "
            "ORDER BY seq LIMIT ?", (ino, cookie, count + 1)).fetchall()
        more = len(rows) > count
        if more:
            rows = rows[:count]
        return [[r[0], r[1], r[2]] for r in rows], (rows[-1][3] if more else 0)
