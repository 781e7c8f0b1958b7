"""Quotas on an OST: blocks in use per user, group and project, and the grants that bound them.

Accounting, as on the MDT, is the database's: each object's row names its owner (uid, gid,
projid) and its blocks, and triggers keep `quota_usage` in step with every row the commit
writes. The rows, the object files and the usage commit together, so a crash loses all
three and a replay counts once. The usage of an id in memory is that committed figure plus
an estimate of what the writes not yet committed will allocate (the pages they add past
the object's end; overwrites and holes filled are not counted until their commit).

An object takes its owner from the write that creates it (the client sends the file's
owner); later changes come from the MDT's owner log (`setowner`).

Enforcement: for each id with a block limit (`limited`, learned from the master), a write
may allocate only within the grant the OST holds (`granted`, in KiB). The node asks the
master for more before a write that would not fit (node/quota_slave.py); the write itself
refuses with EDQUOT what still does not fit, unless it is a replay.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import QuotaExceeded
from shoal.protocol import quota as q
from shoal.target.ost_args import Owner
from shoal.target.ost_files import object_path

Key = tuple[str, int]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS quota_usage (qtype TEXT NOT NULL, id INTEGER NOT NULL, "
    "blocks INTEGER NOT NULL, PRIMARY KEY (qtype, id)) WITHOUT ROWID",
    *(f"CREATE TRIGGER IF NOT EXISTS quota_object_{event} AFTER {event} ON objects "
      + ("WHEN OLD.blocks != NEW.blocks OR OLD.uid != NEW.uid OR OLD.gid != NEW.gid OR "
         "OLD.projid != NEW.projid " if event == "update" else "")
      + "BEGIN "
      + (" ".join(f"UPDATE quota_usage SET blocks = blocks - OLD.blocks WHERE qtype='{t}' "
                  f"AND id=OLD.{c};" for t, c in (("u", "uid"), ("g", "gid"), ("p", "projid")))
         if event != "insert" else "")
      + (" ".join(f"INSERT INTO quota_usage VALUES ('{t}', NEW.{c}, NEW.blocks) ON CONFLICT "
                  f"(qtype, id) DO UPDATE SET blocks = blocks + NEW.blocks;"
                  for t, c in (("u", "uid"), ("g", "gid"), ("p", "projid")))
         if event != "delete" else "")
      + " END"
      for event in ("insert", "update", "delete")),
)


def keys_of(owner: Owner) -> tuple[Key, Key, Key]:
    return ("u", owner[0]), ("g", owner[1]), ("p", owner[2])


def growth(size: int, offset: int, n: int) -> int:
    """512-byte blocks a write of `n` bytes at `offset` adds to an object of `size` bytes:
    the 4 KiB pages it covers past the end (what it may fill inside is not counted)."""
    end = offset + n
    if end <= size:
        return 0
    start = max(size, offset)
    return (-(-end // 4096) - start // 4096) * 8


@dataclass
class QuotaLog:
    """What a batch of changes did to usage, kept with the batch until its commit: the ids
    whose committed usage to read again, and the blocks its writes are thought to add."""

    keys: set[Key] = field(default_factory=set)
    pending: Counter[Key] = field(default_factory=Counter)

    def prepend(self, older: QuotaLog) -> None:
        self.keys |= older.keys
        self.pending.update(older.pending)


class OstQuota:
    """One OST's usage, what the master granted it and which ids are limited."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.used: dict[Key, int] = {}  # committed, 512-byte blocks
        self.log = QuotaLog()  # of the changes not yet being committed
        self.inflight = QuotaLog()  # of the batch a commit is writing
        self.limited: set[Key] = set()  # ids with a block limit (the master said)
        self.granted: dict[Key, int] = {}  # KiB, for limited ids
        self.headroom: dict[Key, int] = {}  # KiB past its usage the last grant gave
        self.ready = False  # the master has said which ids are limited
        self.refused = 0  # writes refused with EDQUOT
        self.on_fall: Callable[[], None] | None = None  # a limited id's usage fell

    # -- the device --------------------------------------------------------------------------
    @staticmethod
    def prepare(db: sqlite3.Connection) -> None:
        """Owner columns and usage for a device formatted before quotas (counted once)."""
        columns = {r[1] for r in db.execute("PRAGMA table_info(objects)")}
        if "uid" not in columns:
            for c in ("uid", "gid", "projid"):
                db.execute(f"ALTER TABLE objects ADD COLUMN {c} INTEGER NOT NULL DEFAULT 0")
        fresh = db.execute("SELECT 1 FROM sqlite_master WHERE name='quota_usage'").fetchone() \
            is None
        for sql in SCHEMA:
            db.execute(sql)
        if fresh:
            for t, c in (("u", "uid"), ("g", "gid"), ("p", "projid")):
                db.execute(f"INSERT INTO quota_usage SELECT '{t}', {c}, SUM(blocks) "  # noqa: S608
                           f"FROM objects GROUP BY {c}")

    def load(self, db: sqlite3.Connection) -> None:
        self.used = {(t, i): b for t, i, b in db.execute(
            "SELECT qtype, id, blocks FROM quota_usage")}
        self.log, self.inflight = QuotaLog(), QuotaLog()
        self.limited.clear()
        self.granted.clear()
        self.headroom.clear()
        self.ready = False

    @staticmethod
    def read_usage(db: sqlite3.Connection, keys: set[Key]) -> dict[Key, int]:
        """Committed usage of `keys` (the commit's worker thread, after its COMMIT)."""
        out = {}
        for k in keys:
            row = db.execute("SELECT blocks FROM quota_usage WHERE qtype=? AND id=?",
                             k).fetchone()
            out[k] = row[0] if row else 0
        return out

    # -- usage -------------------------------------------------------------------------------
    def use_kib(self, key: Key) -> int:
        """An id's usage now, pending writes included, in KiB."""
        blocks = self.used.get(key, 0) + self.log.pending[key] + self.inflight.pending[key]
        return q.kib(max(blocks, 0))

    def changed(self, owner: Owner, blocks: int = 0) -> None:
        for k in keys_of(owner):
            self.log.keys.add(k)
            if blocks:
                self.log.pending[k] += blocks

    def begin_commit(self) -> QuotaLog:
        self.inflight, self.log = self.log, QuotaLog()
        return self.inflight

    def commit_failed(self) -> None:
        self.log.prepend(self.inflight)
        self.inflight = QuotaLog()

    def committed(self, usage: dict[Key, int]) -> None:
        fell = any(k in self.limited and n < self.used.get(k, 0) for k, n in usage.items())
        self.used.update(usage)
        self.inflight = QuotaLog()
        if fell and self.on_fall is not None:
            self.on_fall()  # grants past usage go back to the master now (node/quota_slave)

    # -- enforcement -------------------------------------------------------------------------
    def short(self, owner: Owner, blocks: int) -> list[list[Any]]:
        """Asks [qtype, id, need, used] (KiB) for the limited ids whose grant a write of
        `blocks` new blocks would pass; [] when it fits."""
        if not self.limited or not blocks:
            return []
        more = q.kib(blocks)
        asks = []
        for k in keys_of(owner):
            if k in self.limited:
                used = self.use_kib(k)
                if not q.fits(self.granted.get(k, 0), used, more):
                    asks.append([k[0], k[1], used + more, used])
        return asks

    def low(self, owner: Owner) -> list[list[Any]]:
        """Asks for the limited ids that have used half the headroom of their last grant:
        sent in the background, so that a stream of writes seldom waits for the master."""
        asks = []
        for k in keys_of(owner):
            if k in self.limited:
                used, granted = self.use_kib(k), self.granted.get(k, 0)
                if granted - used < self.headroom.get(k, q.QUNIT_MIN["b"]) // 2:
                    asks.append([k[0], k[1], used + 1, used])
        return asks

    def check(self, owner: Owner, blocks: int, replay: bool) -> None:
        """EDQUOT for a write that does not fit its grants (never for a replay)."""
        if replay or not self.limited:
            return
        for k in keys_of(owner):
            if k in self.limited and not q.fits(self.granted.get(k, 0), self.use_kib(k),
                                                q.kib(blocks)) and blocks:
                self.refused += 1
                raise QuotaExceeded(f"{self.name}: {q.QTYPE_NAMES[k[0]]} {k[1]}: "
                                    "block quota exceeded")

    def learn(self, reply: dict[str, Any]) -> None:
        """The master's answer to an ask: the grants, and which ids are limited now."""
        self.limited = {(t, i) for t, i in reply.get("limited", [])}
        for t, i, g in reply.get("grants", []):
            if g < 0:
                self.granted.pop((t, i), None)
            else:
                self.granted[(t, i)] = g
                self.headroom[(t, i)] = g - self.use_kib((t, i))
        for k in list(self.granted):
            if k not in self.limited:
                del self.granted[k]
                self.headroom.pop(k, None)
        self.ready = True

    def sync_asks(self) -> list[list[Any]]:
        """What a periodic sync asks: every limited id in use here, at its usage plus what
        it should keep (grants of ids used no more go back)."""
        asks = []
        for k in self.limited:
            used = self.use_kib(k)
            granted = self.granted.get(k)
            if granted is None and not used:
                continue
            asks.append([k[0], k[1], used, used])
        return asks

    # -- checks ------------------------------------------------------------------------------
    def recount(self, db_rows: list[tuple[int, int, int, int]],
                objects: Path) -> list[list[Any]]:
        """[qtype, id, counted KiB, recounted KiB] for every id whose committed usage differs
        from the blocks the object files hold now. `db_rows`: (oid, uid, gid, projid)."""
        real: Counter[Key] = Counter()
        for oid, uid, gid, projid in db_rows:
            try:
                blocks = os.stat(object_path(objects, oid)).st_blocks
            except FileNotFoundError:
                blocks = 0
            for k in keys_of((uid, gid, projid)):
                real[k] += blocks
        drift = []
        for k in sorted(set(real) | set(self.used)):
            have, want = self.used.get(k, 0), real.get(k, 0)
            if have != want:
                drift.append([k[0], k[1], q.kib(have), q.kib(want)])
        return drift


__all__ = ["Key", "OstQuota", "QuotaLog", "SCHEMA", "growth", "keys_of"]
