"""Quotas on the MDT: inode usage per user, group and project, and (on MDT0) the master.

Accounting is done by the database itself: triggers on `inodes` keep `quota_usage` in step
with every insert, delete and change of owner, inside the request's own savepoint. So usage
commits with the change that made it, a crash loses both, and a replay counts once.

MDT0 is the quota master (Lustre's QMT). It keeps, in the same device and transactions:
  quota_limits  (qtype, id) -> soft and hard limits, and when the grace periods end
  quota_grace   qtype -> the grace periods of blocks and inodes
  quota_grants  (slave, qtype, id) -> the blocks granted to that OST, and what it had in use
It enforces inode limits itself, as it creates the inodes. OSTs enforce block limits within
grants they ask of it (`quota_acquire`, sent with FLAG_SYNC: answered once committed, so a
grant a slave was told of survives a failover of the master). An ask sets the grant, so
asking again changes nothing (protocol/quota.py).

A change of a file's owner or project must reach the owners of its objects on the OSTs:
`owner_log` holds (ost, oid) -> the new owner, written in the change's transaction, sent by
the node (node/osp.py) and cleared once the OST has committed it, as the destroy log is.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from shoal.errors import InvalidArgument, NotPermitted, QuotaExceeded
from shoal.protocol import quota as q
from shoal.target.base import OpContext, OpResult
from shoal.target.mdt_namespace import Namespace

_USAGE_TABLE = ("CREATE TABLE IF NOT EXISTS quota_usage (qtype TEXT NOT NULL, id INTEGER NOT "
                "NULL, inodes INTEGER NOT NULL, PRIMARY KEY (qtype, id)) WITHOUT ROWID")
_ADD = ("INSERT INTO quota_usage VALUES ('{t}', NEW.{c}, 1) ON CONFLICT (qtype, id) "
        "DO UPDATE SET inodes = inodes + 1;")
_SUB = "UPDATE quota_usage SET inodes = inodes - 1 WHERE qtype='{t}' AND id=OLD.{c};"
_COLS = (("u", "uid"), ("g", "gid"), ("p", "projid"))
SCHEMA = (
    "CREATE TRIGGER IF NOT EXISTS quota_inode_added AFTER INSERT ON inodes BEGIN "
    + " ".join(_ADD.format(t=t, c=c) for t, c in _COLS) + " END",
    "CREATE TRIGGER IF NOT EXISTS quota_inode_gone AFTER DELETE ON inodes BEGIN "
    + " ".join(_SUB.format(t=t, c=c) for t, c in _COLS) + " END",
    *(f"CREATE TRIGGER IF NOT EXISTS quota_inode_{c} AFTER UPDATE OF {c} ON inodes "
      f"WHEN OLD.{c} != NEW.{c} BEGIN {_SUB.format(t=t, c=c)} {_ADD.format(t=t, c=c)} END"
      for t, c in _COLS),
    "CREATE TABLE IF NOT EXISTS quota_limits (qtype TEXT NOT NULL, id INTEGER NOT NULL, "
    "bsoft INTEGER NOT NULL, bhard INTEGER NOT NULL, isoft INTEGER NOT NULL, "
    "ihard INTEGER NOT NULL, btime REAL NOT NULL, itime REAL NOT NULL, "
    "PRIMARY KEY (qtype, id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS quota_grace (qtype TEXT PRIMARY KEY, bgrace REAL NOT NULL, "
    "igrace REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quota_grants (slave TEXT NOT NULL, qtype TEXT NOT NULL, "
    "id INTEGER NOT NULL, granted INTEGER NOT NULL, used INTEGER NOT NULL, "
    "PRIMARY KEY (qtype, id, slave)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS owner_log (ost INTEGER NOT NULL, oid INTEGER NOT NULL, "
    "uid INTEGER NOT NULL, gid INTEGER NOT NULL, projid INTEGER NOT NULL, "
    "PRIMARY KEY (ost, oid)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS owner_log_oid ON owner_log (oid)",
    # how many times limits or grace periods were set: the store's copy of them (agent/
    # quota_limits.py) is newer than the device's only if its version is higher
    "CREATE TABLE IF NOT EXISTS quota_meta (key TEXT PRIMARY KEY, value)",
)
# a file that goes takes its pending owners with it: sent after its objects' destroys, they
# would find nothing to own (the OST leaves an unknown object alone)
_OWNERS_GONE = ("CREATE TRIGGER IF NOT EXISTS quota_owner_log_gone AFTER DELETE ON inodes "
                "BEGIN DELETE FROM owner_log WHERE oid = ({base} | OLD.ino); END")
_LIMIT_COLS = "bsoft, bhard, isoft, ihard, btime, itime"
MAX_ASKS = q.MAX_ASKS
_OST_NAME = re.compile(r"[A-Za-z0-9_]{1,32}-OST[0-9a-f]{4}")


def _qkey(qtype: Any, qid: Any) -> tuple[str, int]:
    try:
        return q.check_qtype(qtype), q.check_id(qid)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _count(v: Any, key: str) -> int:
    if type(v) is not int or not 0 <= v <= q.MAX_LIMIT:
        raise InvalidArgument(f"{key} must be an integer from 0 to {q.MAX_LIMIT}, not {v!r}")
    return v


class MdtQuota:
    """One MDT's accounting, and the master's limits and grants when it is MDT0."""

    def __init__(self, name: str, master: bool, ost_count: int,
                 commits: Callable[[], int], oid_base: int = 0) -> None:
        """`oid_base`: what this MDT's files' object ids are made of beside their inode
        number (mdt_layout.py)."""
        self.oid_base = oid_base
        self.name = name
        self._commits = commits  # the MDT's commits so far
        self.master = master
        self.ost_count = ost_count
        self.limits: dict[tuple[str, int], q.Limits] = {}
        self.grace: dict[str, tuple[float, float]] = {}  # qtype -> (blocks, inodes)
        self.replay = False  # the request being applied is a replay: never refused
        self.dirty = False  # limits changed in memory by the request being applied
        self.version = 0  # of the limits and grace periods (quota_meta)
        self.committed_version = 0  # what the last commit wrote
        self.owners_logged_at = -1  # the MDT's commits when the owner log last grew
        self._db: sqlite3.Connection
        self._ns: Namespace

    # -- the device ------------------------------------------------------------------------
    def attach(self, db: sqlite3.Connection, ns: Namespace) -> None:
        """Create what an older device lacks (counting its inodes once, in the same
        transaction), load the limits."""
        self._db, self._ns = db, ns
        db.execute("BEGIN IMMEDIATE")
        try:
            fresh = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name='quota_usage'").fetchone() is None
            db.execute(_USAGE_TABLE)
            if fresh:
                for t, c in _COLS:
                    db.execute(f"INSERT INTO quota_usage SELECT '{t}', {c}, "  # noqa: S608
                               f"COUNT(*) FROM inodes GROUP BY {c}")
            for sql in (*SCHEMA, _OWNERS_GONE.format(base=self.oid_base)):
                db.execute(sql)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.reload()
        self.committed_version = self.version

    def reload(self) -> None:
        """Limits and grace periods as the database has them (after a rolled-back request
        too: what it changed in memory goes with it)."""
        self.limits = {(t, i): q.Limits(*rest) for t, i, *rest in self._db.execute(
            f"SELECT qtype, id, {_LIMIT_COLS} FROM quota_limits")}  # noqa: S608
        row = self._db.execute("SELECT value FROM quota_meta WHERE key='version'").fetchone()
        self.version = int(row[0]) if row else 0
        self.grace = {t: (b, i) for t, b, i in self._db.execute(
            "SELECT qtype, bgrace, igrace FROM quota_grace")}
        self._ns.before_new_inode = self._check_inode if self._inode_limited() else None

    def _inode_limited(self) -> bool:
        return any(lim.isoft or lim.ihard for lim in self.limits.values())

    def grace_of(self, qtype: str, res: str) -> float:
        b, i = self.grace.get(qtype, (q.DEFAULT_GRACE, q.DEFAULT_GRACE))
        return b if res == "b" else i

    def inodes(self, qtype: str, qid: int) -> int:
        row = self._db.execute("SELECT inodes FROM quota_usage WHERE qtype=? AND id=?",
                               (qtype, qid)).fetchone()
        return row[0] if row else 0

    # -- enforcement of inode limits --------------------------------------------------------
    def _check_inode(self, uid: int, gid: int, projid: int) -> None:
        if self.replay:
            return
        now = time.time()
        for (t, _), qid in zip(_COLS, (uid, gid, projid), strict=True):
            lim = self.limits.get((t, qid))
            if lim is None or not (lim.isoft or lim.ihard):
                continue
            used = self.inodes(t, qid) + 1
            if lim.itime and used - 1 <= lim.isoft:
                # back under the soft limit since: the grace period that ran is over
                self._set_grace_end(t, qid, lim, "i", 0.0)
            if used > q.cap(lim, "i", now):
                raise QuotaExceeded(f"{q.QTYPE_NAMES[t]} {qid}: inode limit reached")
            self._set_grace_end(t, qid, lim, "i", q.grace_after(lim, "i", used, now,
                                                                 self.grace_of(t, "i")))

    def _set_grace_end(self, t: str, qid: int, lim: q.Limits, res: str, end: float) -> None:
        if end != lim.grace_end(res):
            lim.set_grace_end(res, end)
            self.dirty = True
            self._db.execute(f"UPDATE quota_limits SET {res}time=? WHERE qtype=? AND id=?",
                             (end, t, qid))

    # -- the owner log ------------------------------------------------------------------------
    def owner_changed(self, layout: dict[str, Any] | None,
                      owner: tuple[int, int, int]) -> None:
        """A file's owner or project changed: its objects' owners follow (node/osp.py)."""
        if not layout:
            return
        self._db.executemany(
            "INSERT OR REPLACE INTO owner_log VALUES (?,?,?,?,?)",
            [(int(ost), int(layout["oid"]), *owner) for ost in layout.get("osts", ())])
        self.owners_logged_at = self._commits()

    def pending_owners(self, limit: int) -> dict[int, list[list[int]]]:
        """Up to `limit` [oid, uid, gid, projid] per OST index, once committed."""
        if self._commits() <= self.owners_logged_at:
            return {}
        osts = [r[0] for r in self._db.execute("SELECT DISTINCT ost FROM owner_log")]
        return {ost: [list(r) for r in self._db.execute(
                    "SELECT oid, uid, gid, projid FROM owner_log WHERE ost=? ORDER BY oid "
                    "LIMIT ?", (ost, limit))] for ost in osts}

    def owners_done(self, ost: int, rows: list[list[int]]) -> None:
        """The OST committed these owners: their entries go, unless changed again since."""
        self._db.executemany(
            "DELETE FROM owner_log WHERE ost=? AND oid=? AND uid=? AND gid=? AND projid=?",
            [(ost, *r) for r in rows])

    # -- operations -------------------------------------------------------------------------
    def _need_master(self, op: str) -> None:
        if not self.master:
            raise InvalidArgument(f"{self.name}: {op}: not the quota master (MDT0000 is)")

    def op_set(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """setquota: an id's limits (all 0: none), or a type's grace periods (`grace`)."""
        self._need_master("quota_set")
        try:
            t = q.check_qtype(args.get("qtype"))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if "grace" in args:
            bg, ig = args["grace"] if isinstance(args["grace"], list) else (None, None)
            for g in (bg, ig):
                if type(g) is not int or not 0 < g < 1 << 40:
                    raise InvalidArgument(f"a grace period is a positive number of seconds, "
                                          f"not {g!r}")
            self._db.execute("INSERT OR REPLACE INTO quota_grace VALUES (?,?,?)", (t, bg, ig))
            self._bump()
            self.reload()
            return {}, None
        _, qid = _qkey(t, args.get("id"))
        if qid == 0:
            raise NotPermitted("id 0 is never limited (root, and files of no project)")
        old = self.limits.get((t, qid)) or q.Limits()
        new = q.Limits(*(_count(args.get(k, getattr(old, k)), k)
                         for k in ("bsoft", "bhard", "isoft", "ihard")))
        self.dirty = True
        if not new.limited:
            self._db.execute("DELETE FROM quota_limits WHERE qtype=? AND id=?", (t, qid))
            self._db.execute("DELETE FROM quota_grants WHERE qtype=? AND id=?", (t, qid))
            self.limits.pop((t, qid), None)
        else:
            # a grace period that runs goes on, unless the soft limit it ran for went
            new.btime = old.btime if new.bsoft else 0.0
            new.itime = old.itime if new.isoft else 0.0
            self._db.execute(
                f"INSERT OR REPLACE INTO quota_limits (qtype, id, {_LIMIT_COLS}) "  # noqa: S608
                "VALUES (?,?,?,?,?,?,?,?)",
                (t, qid, new.bsoft, new.bhard, new.isoft, new.ihard, new.btime, new.itime))
            self.limits[(t, qid)] = new
        self._bump()
        self._ns.before_new_inode = self._check_inode if self._inode_limited() else None
        return {}, None

    def _bump(self) -> None:
        self.version += 1
        self._db.execute("INSERT OR REPLACE INTO quota_meta VALUES ('version', ?)",
                         (self.version,))

    # -- the store's copy (agent/quota_limits.py) ---------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The limits and grace periods as they are (grace ends included), and their
        version: what the store keeps a copy of."""
        return {"version": self.version,
                "limits": [[t, i, lim.bsoft, lim.bhard, lim.isoft, lim.ihard, lim.btime,
                            lim.itime] for (t, i), lim in sorted(self.limits.items())],
                "grace": [[t, b, i] for t, (b, i) in sorted(self.grace.items())]}

    @staticmethod
    def check_snapshot(snap: Any) -> tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(version, limit rows, grace rows) of a copy read from the store; ValueError for
        anything else (the store is not to be trusted to hold what Shoal wrote)."""
        if not isinstance(snap, dict):
            raise ValueError("not an object")
        version, limits, grace = snap.get("version"), snap.get("limits"), snap.get("grace")
        if type(version) is not int or not 0 <= version < 1 << 62:
            raise ValueError(f"bad version {version!r}")
        if not isinstance(limits, list) or not isinstance(grace, list):
            raise ValueError("limits and grace must be lists")
        rows = []
        for r in limits:
            if not isinstance(r, list) or len(r) != 8:
                raise ValueError(f"bad limit row {r!r}")
            _qkey(r[0], r[1])
            q.Limits(*(_count(v, "limit") for v in r[2:6]))
            if not all(isinstance(v, int | float) and 0 <= v < 1e12 for v in r[6:]):
                raise ValueError(f"bad grace ends in {r!r}")
            rows.append(tuple(r))
        graces = []
        for r in grace:
            if not (isinstance(r, list) and len(r) == 3 and r[0] in q.QTYPES
                    and all(isinstance(v, int | float) and 0 < v < 1 << 40 for v in r[1:])):
                raise ValueError(f"bad grace row {r!r}")
            graces.append(tuple(r))
        return version, rows, graces

    def restore(self, snap: Any) -> None:
        """The store's copy replaces the device's limits and grace periods (it is newer:
        the device was restored from an older backup, or formatted again). Inside the MDT's
        open transaction; a copy that is not well formed changes nothing (ValueError). The
        grants stay: the OSTs hold them until their next syncs."""
        try:
            version, rows, graces = self.check_snapshot(snap)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
        self._db.execute("SAVEPOINT restore")
        try:
            self._db.execute("DELETE FROM quota_limits")
            self._db.executemany(
                f"INSERT INTO quota_limits (qtype, id, {_LIMIT_COLS}) "  # noqa: S608
                "VALUES (?,?,?,?,?,?,?,?)", rows)
            self._db.execute("DELETE FROM quota_grace")
            self._db.executemany("INSERT INTO quota_grace VALUES (?,?,?)", graces)
            self._db.execute("INSERT OR REPLACE INTO quota_meta VALUES ('version', ?)",
                             (version,))
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK TO restore")
            self._db.execute("RELEASE restore")
            raise ValueError(f"the store's copy does not fit: {exc}") from None
        self._db.execute("RELEASE restore")
        self.reload()

    def advance(self, version: int) -> None:
        """The version goes past `version` (the store's copy is of an older timeline: the
        device served changes without reading it); the limits stay as they are."""
        if version > self.version:
            self.version = version
            self._db.execute("INSERT OR REPLACE INTO quota_meta VALUES ('version', ?)",
                             (version,))

    def op_get(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """An id's limits, grace ends and grace periods, and each OST's grant of it."""
        self._need_master("quota_get")
        t, qid = _qkey(args.get("qtype"), args.get("id"))
        lim = self.limits.get((t, qid)) or q.Limits()
        grants = self._db.execute(
            "SELECT slave, granted, used FROM quota_grants WHERE qtype=? AND id=? "
            "ORDER BY slave", (t, qid)).fetchall()
        return {"bsoft": lim.bsoft, "bhard": lim.bhard, "isoft": lim.isoft,
                "ihard": lim.ihard, "btime": lim.btime, "itime": lim.itime,
                "bgrace": self.grace_of(t, "b"), "igrace": self.grace_of(t, "i"),
                "now": time.time(), "grants": [list(g) for g in grants]}, None

    def op_usage(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """This MDT's usage of an id (its blocks: none, the MDT keeps no file data)."""
        t, qid = _qkey(args.get("qtype"), args.get("id"))
        return {"inodes": self.inodes(t, qid), "kbytes": 0}, None

    def op_acquire(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """An OST asks for its grants of some ids to be set: each ask [qtype, id, need,
        used]. Answers [qtype, id, grant, headroom] (grant -1: no block limit); to a sync (`sync`, which may lower
        them, and `fresh` from a new instance of the OST, which holds none of the old
        one's grants) every id with a block limit too."""
        self._need_master("quota_acquire")
        slave, asks = args.get("slave"), args.get("asks", [])
        if not isinstance(slave, str) or not _OST_NAME.fullmatch(slave) \
                or not slave.startswith(self.name.partition("-MDT")[0] + "-"):
            raise InvalidArgument(f"quota_acquire: {slave!r} is not an OST of this file system")
        if not isinstance(asks, list) or len(asks) > MAX_ASKS:
            raise InvalidArgument(f"quota_acquire: at most {MAX_ASKS} asks in a list")
        now = time.time()
        if args.get("fresh"):
            # a new instance of the slave: it holds none of what the last one was granted
            self._db.execute("DELETE FROM quota_grants WHERE slave=?", (slave,))
        out = []
        for ask in asks:
            if not isinstance(ask, list) or len(ask) not in (4, 5):
                raise InvalidArgument(f"quota_acquire: an ask is [qtype, id, need, used"
                                      f"(, keep)], not {ask!r}")
            t, qid = _qkey(ask[0], ask[1])
            need, used = _count(ask[2], "need"), _count(ask[3], "used")
            keep = _count(ask[4], "keep") if len(ask) == 5 else 0
            out.append([t, qid, *self._grant(slave, t, qid, need, used, now,
                                             lower=bool(args.get("sync")), keep=keep)])
        return {"grants": out, **(self._limited() if args.get("sync") else {})}, None

    def op_limited(self, ctx: OpContext, args: dict[str, Any], bulk: bytes | None) -> OpResult:
        """Which ids have a block limit (an OST's periodic look, when it has nothing to
        ask: a read, so no transaction of the master's for it)."""
        self._need_master("quota_limited")
        return self._limited(), None

    def _limited(self) -> dict[str, Any]:
        """Every id with a block limit; `soft` those with a soft one, whose usage the master
        must hear of for its grace period (the others' syncs may keep quiet)."""
        return {"limited": [[t, i] for (t, i), lim in self.limits.items()
                            if lim.bsoft or lim.bhard],
                "soft": [[t, i] for (t, i), lim in self.limits.items() if lim.bsoft]}

    def _grant(self, slave: str, t: str, qid: int, need: int, used: int, now: float, *,
               lower: bool, keep: int = 0) -> tuple[int, int]:
        """The grant of `slave` for (t, qid) now, and the headroom (qunit) it is reckoned
        with, which the slave asks ahead by. Only a sync may lower it (protocol/quota.py
        `resync`), and never below what the slave kept to meanwhile (`keep`): an ask for
        more was sent while writes may have gone on within the grant it had."""
        lim = self.limits.get((t, qid))
        if lim is None or not (lim.bsoft or lim.bhard):
            self._db.execute("DELETE FROM quota_grants WHERE qtype=? AND id=? AND slave=?",
                             (t, qid, slave))
            return -1, 0
        others, others_used = self._db.execute(
            "SELECT COALESCE(SUM(granted), 0), COALESCE(SUM(used), 0) FROM quota_grants "
            "WHERE qtype=? AND id=? AND slave != ?", (t, qid, slave)).fetchone()
        if lim.btime and others_used + used <= lim.bsoft:
            self._set_grace_end(t, qid, lim, "b", 0.0)  # back under the soft limit
        row = self._db.execute("SELECT granted FROM quota_grants WHERE qtype=? AND id=? "
                               "AND slave=?", (t, qid, slave)).fetchone()
        if lower and row is not None:
            granted = q.resync(lim, "b", need=need, used=used, current=row[0], others=others,
                               others_used=others_used, slaves=self.ost_count, now=now)
            # never below what the slave went on using while its ask was on its way
            granted = max(granted, min(row[0], keep))
        else:
            granted = q.grant(lim, "b", need=need, used=used, others=others,
                              others_used=others_used, slaves=self.ost_count, now=now)
            if not lower:
                granted = max(granted, row[0] if row else 0)
        self._db.execute("INSERT OR REPLACE INTO quota_grants VALUES (?,?,?,?,?)",
                         (slave, t, qid, granted, used))
        self._set_grace_end(t, qid, lim, "b", q.grace_after(
            lim, "b", others_used + max(used, min(need, granted)), now, self.grace_of(t, "b")))
        unit = q.qunit(lim, "b", self.ost_count, q.cap(lim, "b", now) - others_used - used)
        return granted, unit

    def recount(self) -> list[list[Any]]:
        """[qtype, id, counted, recounted] for every id whose inode count differs from a
        count of the inodes now: drift (none, if the triggers did their work)."""
        counted = {(t, i): n for t, i, n in self._db.execute(
            "SELECT qtype, id, inodes FROM quota_usage")}
        drift = []
        for t, c in _COLS:
            real = dict(self._db.execute(
                f"SELECT {c}, COUNT(*) FROM inodes GROUP BY {c}").fetchall())  # noqa: S608
            ids = {i for (tt, i) in counted if tt == t} | set(real)
            for qid in sorted(ids):
                have, want = counted.get((t, qid), 0), real.get(qid, 0)
                if have != want:
                    drift.append([t, qid, have, want])
        return drift


__all__ = ["MdtQuota", "SCHEMA"]
