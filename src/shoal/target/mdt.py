"""MDT: the metadata target, the file system's namespace in SQLite.

Durability: the "open transaction" mode. From the moment the target opens, a SQLite write
transaction is open on target.db; every request changes the database inside it, each in its
own savepoint so a request that fails leaves nothing behind, and a group commit (the base's
commit loop, or a sync) writes the batch's reply data and last_rcvd slots into the same
transaction, then COMMITs and opens the next one. With WAL and synchronous=FULL a COMMIT is
durable when it returns; a process killed in between loses exactly the uncommitted tail,
which clients replay.

The tables and path rules live in mdt_namespace, layouts in mdt_layout, the operations in
mdt_ops (most), mdt_rename and mdt_open (open/close with their handle table in mdt_handles).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

from shoal.errors import InvalidArgument
from shoal.protocol import messages as m
from shoal.target import mdt_handles
from shoal.target.base import CommitBatch, OpContext, OpResult, OpSpec, TargetService
from shoal.target.mdt_attr import set_attr, set_stripe
from shoal.target.mdt_handles import HandleTable
from shoal.target.mdt_layout import OID_SHIFT, LayoutPolicy
from shoal.target.mdt_namespace import MAX_NAME, Namespace, attr_of
from shoal.target.mdt_open import OpenOps
from shoal.target.mdt_ops import MetadataOps
from shoal.target.mdt_quota import MdtQuota
from shoal.target.mdt_rename import rename
from shoal.target.mdt_xattr import XattrOps

log = logging.getLogger(__name__)

INODE_BYTES = 1024  # what statfs assumes one more inode costs on the device
# objects of files the MDT removed itself, until an OST confirms their destroy (node/osp.py)
DESTROY_LOG = ("CREATE TABLE IF NOT EXISTS destroy_log (ost INTEGER NOT NULL, "
               "oid INTEGER NOT NULL, PRIMARY KEY (ost, oid))")
# the orphan sweep after recovery looks at files with no name left, not at every inode
ORPHAN_INDEX = "CREATE INDEX IF NOT EXISTS orphans ON inodes (ino) WHERE nlink = 0"


# What changed under the clients' locks, noted by the database itself so that no change
# path can forget it; temporary (this connection only), and rolled back with a failed op.
TOUCHED = (
    "CREATE TEMP TABLE IF NOT EXISTS touched (ino INTEGER PRIMARY KEY)",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_inode AFTER UPDATE OF mode, nlink, uid, gid, "
    "size, mtime, ctime, parent, layout, target, rdev, blocks, projid, flags ON main.inodes "
    "BEGIN INSERT OR IGNORE INTO touched VALUES (OLD.ino); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_gone AFTER DELETE ON main.inodes "
    "BEGIN INSERT OR IGNORE INTO touched VALUES (OLD.ino); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_added AFTER INSERT ON main.dirents "
    "BEGIN INSERT OR IGNORE INTO touched VALUES (NEW.parent); END",
    # a name that goes changes its directory, and unnames its inode: clients keep a name
    # under a LOOKUP lock on the inode it names (node/locks.py)
    "CREATE TEMP TABLE IF NOT EXISTS unnamed (ino INTEGER PRIMARY KEY)",
    # who writes a file changed: what the *other* clients keep of it (`writers`) is stale,
    # never what the client that opened or closed keeps (node/locks.py)
    "CREATE TEMP TABLE IF NOT EXISTS rewritten (ino INTEGER, client TEXT, "
    "PRIMARY KEY (ino, client))",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_removed AFTER DELETE ON main.dirents "
    "BEGIN INSERT OR IGNORE INTO touched VALUES (OLD.parent); "
    "INSERT OR IGNORE INTO unnamed VALUES (OLD.ino); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_xattr AFTER INSERT ON main.xattrs "
    "BEGIN INSERT OR IGNORE INTO touched VALUES (NEW.ino); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS touched_xattr_gone AFTER DELETE ON main.xattrs "
    "BEGIN INSERT OR IGNORE INTO touched VALUES (OLD.ino); END",
)


class MDT(TargetService):
    kind = "MDT"

    def __init__(
        self,
        name: str,
        device: Path,
        *,
        fs: str,
        node: str = "",
        commit_interval: float = 1.0,
        index: int = 0,
        ost_count: int,
        default_stripe_size: int = 1 << 20,
        default_stripe_count: int = -1,
    ) -> None:
        self.index = index
        self.ost_count = ost_count
        self.policy = LayoutPolicy(index, ost_count, default_stripe_size, default_stripe_count)
        self.meta = MetadataOps(self.policy)
        self.opens = OpenOps(self.meta)
        self.xattrs = XattrOps(self.meta)
        self.quota = self.meta.quota = MdtQuota(name, index == 0, ost_count,
                                                lambda: self.commits, index << OID_SHIFT)
        self.ns: Namespace
        self.orphans_swept = False  # sweep_orphans ran for this instance
        self._destroys_logged_at = -1  # self.commits when the destroy log last grew
        super().__init__(name, device, fs=fs, node=node, commit_interval=commit_interval)

    def _register_ops(self) -> None:
        meta, opens = self.meta, self.opens
        xattrs = self.xattrs
        reads = {"getattr": meta.getattr, "lookup": meta.lookup, "readdir": meta.readdir,
                 "readlink": meta.readlink, "statfs": self._statfs, "sync": self._sync,
                 "getxattr": xattrs.getxattr, "listxattr": xattrs.listxattr}
        changes = {"mkdir": meta.mkdir, "create": meta.create, "symlink": meta.symlink,
                   "mknod": meta.mknod,
                   "link": meta.link, "unlink": meta.unlink, "rmdir": meta.rmdir,
                   "open": opens.open, "close": opens.close,
                   "rename": partial(rename, meta), "setattr": partial(set_attr, meta),
                   "setstripe": partial(set_stripe, meta),
                   "setxattr": xattrs.setxattr, "removexattr": xattrs.removexattr}
        for op, handler in reads.items():
            self.ops[op] = OpSpec(handler, False)
        for op, handler in changes.items():
            self.ops[op] = OpSpec(handler, True)
        self.ops["append"] = OpSpec(opens.append, True, vbr=False)
        quota = self.quota
        self.ops["quota_set"] = OpSpec(quota.op_set, True, vbr=False)
        # sent with FLAG_SYNC by the OSTs: an ask sets a grant, so it may come twice
        self.ops["quota_acquire"] = OpSpec(quota.op_acquire, True, vbr=False, idempotent=True)
        self.ops["quota_get"] = OpSpec(quota.op_get, False)
        self.ops["quota_limited"] = OpSpec(quota.op_limited, False, idempotent=True)  # FLAG_SYNC
        self.ops["quota_usage"] = OpSpec(quota.op_usage, False)
        self.ops["quota_recount"] = OpSpec(
            lambda ctx, args, bulk: ({"drift": quota.recount()}, None), False)

    def attr(self, ino: int) -> dict[str, Any]:
        """Inode `ino`'s attributes now (NotFound if it is gone)."""
        return attr_of(self.ns.inode(ino))

    def names(self, parent: int, name: str) -> int | None:
        """The inode `name` in directory `parent` names now, or None."""
        row = self.ns.entry(parent, name)
        return int(row[0]) if row is not None else None

    def xattr_names(self, ino: int) -> list[bytes]:
        """The names of inode `ino`'s extended attributes now."""
        return [bytes(r[0]) for r in self.ns.sql("SELECT name FROM xattrs WHERE ino=?",
                                                 (ino,)).fetchall()]

    def open_inodes(self, client: str) -> set[int]:
        """The inodes `client` has a handle of open (replayed opens included)."""
        handles = self.meta.handles
        return {handles.handles[h].ino for h in handles.of_client(client)}

    def written(self) -> bool:
        """Whether any file is open for writing."""
        return bool(self.meta.handles.writers)

    def others_writing(self, ino: int, client: str) -> bool:
        """Whether a client other than `client` has inode `ino` open for writing."""
        return self.meta.handles.others_writing(ino, client)

    def take_touched(self) -> list[int]:
        """The inodes whose attributes, entries or xattrs changed since the last call (what
        clients may hold locks on); an atime alone is no change to them, as in Lustre."""
        return self._take("touched")

    def take_rewritten(self) -> list[tuple[int, str]]:
        """(inode, client) for each file whose set of writers that client's open or close
        changed since the last call."""
        rows = self.db.execute("SELECT ino, client FROM temp.rewritten").fetchall()
        if rows:
            self.db.execute("DELETE FROM temp.rewritten")
        return [(r[0], r[1]) for r in rows]

    def take_unnamed(self) -> list[int]:
        """The inodes one of whose names went since the last call (unlink, rmdir, rename)."""
        return self._take("unnamed")

    def _take(self, table: str) -> list[int]:
        rows = self.db.execute(f"SELECT ino FROM temp.{table}").fetchall()  # noqa: S608
        if rows:
            self.db.execute(f"DELETE FROM temp.{table}")  # noqa: S608
        return [r[0] for r in rows]

    # -- the journal ---------------------------------------------------------------------
    def _format(self) -> None:
        Namespace.format(self.db, time.time())
        for sql in mdt_handles.SCHEMA:
            self.db.execute(sql)

    def _after_open(self) -> None:
        db = self.db
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot namespace stays in memory
        self.ns = Namespace(db)  # (it adds the tables older devices lack)
        self.quota.attach(db, self.ns)
        for sql in TOUCHED:
            db.execute(sql)
        self.meta.attach(self.ns, HandleTable(db))
        db.execute(DESTROY_LOG)  # devices formatted before the log existed get it here
        db.execute(ORPHAN_INDEX)
        if self.epoch >= 1 << 16:
            # inode numbers are transnos and must fit the 48 bits below the MDT index
            log.error("%s: epoch %d: no inode numbers left, creates fail with ENOSPC",
                      self.name, self.epoch)
        db.execute("BEGIN IMMEDIATE")

    async def _persist(self, batch: CommitBatch) -> None:
        # the group commit: reply data joins the open transaction, which then commits
        self.write_reply_rows(batch)
        self.db.execute("COMMIT")
        self.quota.committed_version = self.quota.version
        self.db.execute("BEGIN IMMEDIATE")

    def _apply(self, spec: OpSpec, ctx: OpContext, req: m.Request) -> OpResult:
        try:
            if not spec.modifying:
                return spec.handler(ctx, req.args, req.bulk)
            return self._in_savepoint(spec, ctx, req)
        except (sqlite3.IntegrityError, OverflowError) as exc:
            # input no check caught (a value the database refuses): EINVAL, not a crash
            raise InvalidArgument(f"{req.op}: {exc}") from None

    def _in_savepoint(self, spec: OpSpec, ctx: OpContext, req: m.Request) -> OpResult:
        ns = self.ns
        sql = ns.sql
        files = ns.files
        sql("SAVEPOINT op")
        self.quota.replay = ctx.replay
        self.quota.dirty = False
        try:
            result = spec.handler(ctx, req.args, req.bulk)
        except BaseException:
            ns.rolled_back(files)
            sql("ROLLBACK TO op")
            sql("RELEASE op")
            if self.quota.dirty:
                self.quota.reload()  # what it changed of the limits did not happen
            raise
        sql("RELEASE op")
        return result

    # -- small operations ----------------------------------------------------------------
    def _statfs(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        vfs = os.statvfs(self.device)
        # `files`: the inodes in use (the client's statfs makes it statvfs's total)
        return {"files": self.ns.files, "ffree": vfs.f_bavail * vfs.f_frsize // INODE_BYTES,
                "namelen": MAX_NAME, "bsize": vfs.f_frsize, "blocks": vfs.f_blocks,
                "bfree": vfs.f_bfree, "bavail": vfs.f_bavail}, None

    def _sync(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        ctx.force_commit = True
        return {}, None

    # -- for the node --------------------------------------------------------------------
    def drop_client(self, client: str) -> int:
        """An evicted client's handles are closed; its orphans go, their objects into the
        destroy log. Returns how many files went.

        Not a request: it gets no transno; the next group commit takes it."""
        layouts = self.opens.drop_client(client)
        self._log_destroys(layouts)
        self._changed()
        return len(layouts)

    def sweep_orphans(self) -> int:
        """Files with no name and no handle left (Lustre's mds_cleanup_orphans, run once
        per instance when recovery is over): what a crash left behind. Their objects go
        into the destroy log; returns how many files went."""
        self.orphans_swept = True
        layouts = []
        for ino, layout in self.db.execute(
                "SELECT ino, layout FROM inodes WHERE nlink=0").fetchall():
            if not self.meta.handles.is_open(ino):
                self.ns.drop_inode(ino)
                if layout is not None:
                    layouts.append(self.meta.unpack(layout))
        self._log_destroys(layouts)
        if layouts:
            self._changed()
        return len(layouts)

    def _log_destroys(self, layouts: list[dict[str, Any]]) -> None:
        if layouts:
            self.db.executemany("INSERT OR IGNORE INTO destroy_log (ost, oid) VALUES (?, ?)",
                                [(int(ost), int(lay["oid"])) for lay in layouts
                                 for ost in lay.get("osts", ())])
            self._destroys_logged_at = self.commits

    def _changed(self) -> None:
        self.unsaved = True
        self.request_commit()

    def pending_destroys(self, limit: int) -> dict[int, list[int]]:
        """Up to `limit` objects per OST index from the destroy log, once the entries (and
        the removal of their files, in the same transaction) are committed: an OST must not
        destroy objects whose file a crash could bring back."""
        if self.commits <= self._destroys_logged_at:
            return {}
        osts = [row[0] for row in self.db.execute("SELECT DISTINCT ost FROM destroy_log")]
        return {ost: [row[0] for row in self.db.execute(
                    "SELECT oid FROM destroy_log WHERE ost=? ORDER BY oid LIMIT ?", (ost, limit))]
                for ost in osts}

    def destroys_done(self, ost: int, oids: list[int]) -> None:
        """An OST committed these destroys: their entries go with the next commit (until
        then a restart sends them again, which destroys nothing twice)."""
        self.db.executemany("DELETE FROM destroy_log WHERE ost=? AND oid=?",
                            [(ost, oid) for oid in oids])
        self._changed()

    def quota_version_past(self, version: int) -> None:
        """The quota limits' version goes past `version` with the next commit
        (agent/quota_limits.py)."""
        self.quota.advance(version + 1)
        self._changed()

    def pending_owners(self, limit: int) -> dict[int, list[list[int]]]:
        """Objects' new owners from the owner log, once committed (node/osp.py)."""
        return self.quota.pending_owners(limit)

    def owners_done(self, ost: int, rows: list[list[int]]) -> None:
        """An OST committed these owners: their entries go with the next commit."""
        self.quota.owners_done(ost, rows)
        self._changed()

    @property
    def open_handles(self) -> int:
        return len(self.meta.handles.handles)
