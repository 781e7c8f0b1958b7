"""Quotas on an OST: blocks in use per user, group and project, and the grants that bound them.

Accounting, as on the MDT, is the database's: each object's row names its owner (uid, gid,
projid) and its blocks, and triggers keep `quota_usage` in step with every row the commit
writes. The rows, the object files and the usage commit together, so a crash loses all
three and a replay counts once. The usage of an id in memory is that committed figure plus
an estimate of what the writes not yet committed will allocate (the pages they add past
what is not known to be allocated already: `growth`).

An object takes its owner from the first write that names one (the client sends the file's
owner); later changes come from the MDT's owner log (`setowner`). Until then it counts as
root's, with `owned` false.

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


def growth(allocated: int, offset: int, n: int) -> int:
    """512-byte blocks a write of `n` bytes at `offset` may add to an object whose first
    `allocated` bytes are known to be allocated (its committed size, when its committed
    blocks cover it; else 0): every 4 KiB page it covers past them. Holes it fills count,
    so a write into a hole cannot pass a limit; pages written twice before a commit count
    twice until the commit, which counts what the device really holds."""
    end = offset + n
    start = max(allocated, offset)
    if end <= start:
        return 0
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
        self.soft: set[Key] = set()  # of those, the ids with a soft limit
        self.granted: dict[Key, int] = {}  # KiB, for limited ids
        self.headroom: dict[Key, int] = {}  # KiB: the master's headroom (qunit) of the id
        self.held: Counter[Key] = Counter()  # KiB of writes waiting for a grant
        self.ready = False  # the master has said which ids are limited
        self.refused = 0  # writes refused with EDQUOT
        self.held_writes = 0  # writes that waited for a grant
        self.on_fall: Callable[[], None] | None = None  # a limited id's usage fell

    # -- the device --------------------------------------------------------------------------
    @staticmethod
    def prepare(db: sqlite3.Connection) -> None:
        """Owner columns and usage for a device formatted before quotas (counted once, in
        one transaction: a crash halfway leaves the device as it was)."""
        in_txn = db.in_transaction
        if not in_txn:
            db.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in db.execute("PRAGMA table_info(objects)")}
            for c in ("uid", "gid", "projid", "owned"):
                if c not in columns:
                    db.execute(f"ALTER TABLE objects ADD COLUMN {c} INTEGER NOT NULL DEFAULT 0")
            fresh = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name='quota_usage'").fetchone() is None
            for sql in SCHEMA:
                db.execute(sql)
            if fresh:
                for t, c in (("u", "uid"), ("g", "gid"), ("p", "projid")):
                    db.execute(f"INSERT INTO quota_usage SELECT '{t}', {c}, "  # noqa: S608
                               f"SUM(blocks) FROM objects GROUP BY {c}")
            if not in_txn:
                db.execute("COMMIT")
        except BaseException:
            if not in_txn and db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def load(self, db: sqlite3.Connection) -> None:
        self.used = {(t, i): b for t, i, b in db.execute(
            "SELECT qtype, id, blocks FROM quota_usage")}
        self.log, self.inflight = QuotaLog(), QuotaLog()
        self.limited.clear()
        self.soft.clear()
        self.granted.clear()
        self.headroom.clear()
        self.held.clear()
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
    def short(self, owner: Owner, blocks: int) -> bool:
        """Whether a write of `blocks` new blocks would pass one of its owners' grants."""
        if not self.limited or not blocks:
            return False
        more = q.kib(blocks)
        return any(k in self.limited and not q.fits(self.granted.get(k, 0), self.use_kib(k),
                                                     more) for k in keys_of(owner))

    def low(self, owner: Owner) -> bool:
        """Whether one of its owners' grants has used half the headroom it last came with:
        then the node asks for more in the background, so that writes seldom wait."""
        return any(k in self.limited
                   and self.granted.get(k, 0) - self.use_kib(k)
                   < self.headroom.get(k, q.QUNIT_MIN["b"]) // 2 for k in keys_of(owner))

    def hold(self, owner: Owner, blocks: int) -> list[Key]:
        """A write waits for a grant: asks count it in, for the limited ids of its owners
        (returned, for `unhold`)."""
        keys = [k for k in keys_of(owner) if k in self.limited]
        for k in keys:
            self.held[k] += q.kib(blocks)
        self.held_writes += 1
        return keys

    def unhold(self, keys: list[Key], blocks: int) -> None:
        for k in keys:
            self.held[k] -= q.kib(blocks)
            if self.held[k] <= 0:
                del self.held[k]

    def check(self, owner: Owner, blocks: int, replay: bool) -> None:
        """EDQUOT for a write that does not fit its grants (never for a replay)."""
        if replay or not self.limited or not blocks:
            return
        for k in keys_of(owner):
            if k in self.limited and not q.fits(self.granted.get(k, 0), self.use_kib(k),
                                                q.kib(blocks)):
                self.refused += 1
                raise QuotaExceeded(f"{self.name}: {q.QTYPE_NAMES[k[0]]} {k[1]}: "
                                    "block quota exceeded")

    def asks(self, *, sync: bool) -> list[list[Any]]:
        """[qtype, id, need, used] (KiB) to send now: each need is what is used plus what
        waiting writes hold. Without `sync`, only the ids short or low on their grant (the
        master then never lowers a grant); with it, every limited id this OST has anything
        of: the master learns what is used, keeps a grant within a headroom of its need and
        takes back what is past that (protocol/quota.py `resync`); an id with no soft limit
        whose grant is within a headroom of its need is left out. A sync's ask carries a
        fifth figure, `keep`: what the OST keeps to while it is on its way (its need plus
        the master's last headroom, at most its grant), below which the master does not
        lower the grant. So a write served meanwhile never uses what the master gives to
        another OST, and a stream within its headroom is not held up by a sync."""
        out = []
        for k in self.limited:
            used, granted = self.use_kib(k), self.granted.get(k)
            need = used + self.held[k]
            if sync:
                if granted is None and not need:
                    continue
                headroom = self.headroom.get(k, q.QUNIT_MIN["b"])
                if (k not in self.soft and granted is not None
                        and need <= granted <= need + headroom):
                    # nothing to give back or ask for, and no grace period to report to:
                    # a stream costs the master no commit every few seconds
                    continue
                # what the OST keeps to while the ask is on its way, and the master leaves
                # it at least (a stream within its headroom goes on meanwhile)
                keep = min(granted or 0, need + headroom)
                if granted is not None:
                    self.granted[k] = keep
                out.append([k[0], k[1], need, used, keep])
                continue
            if not (need > (granted or 0)
                    or (granted or 0) - used < self.headroom.get(k, q.QUNIT_MIN["b"]) // 2):
                continue
            out.append([k[0], k[1], need, used])
        return out

    def learn(self, reply: dict[str, Any]) -> None:
        """The master's answer to an ask: the grants, and which ids are limited now."""
        if "limited" in reply:
            self.limited = {(t, i) for t, i in reply["limited"]}
            self.soft = {(t, i) for t, i in reply.get("soft", [])}
            self.ready = True
        for t, i, g, *unit in reply.get("grants", []):
            if g < 0:
                self.granted.pop((t, i), None)
            else:
                self.granted[(t, i)] = g
                # the master's headroom for the id now: ask ahead at half of it
                self.headroom[(t, i)] = unit[0] if unit else g - self.use_kib((t, i))
        for k in list(self.granted):
            if k not in self.limited:
                del self.granted[k]
                self.headroom.pop(k, None)

    # -- checks ------------------------------------------------------------------------------
    @staticmethod
    def count_files(rows: list[tuple[int, Owner]], objects: Path) -> Counter[Key]:
        """The blocks the object files hold now, per owner (stats every file: a worker
        thread's work on a large OST)."""
        real: Counter[Key] = Counter()
        for oid, owner in rows:
            try:
                blocks = os.stat(object_path(objects, oid)).st_blocks
            except FileNotFoundError:
                blocks = 0
            for k in keys_of(owner):
                real[k] += blocks
        return real

    def drift(self, real: Counter[Key]) -> list[list[Any]]:
        """[qtype, id, counted KiB, recounted KiB] for every id whose committed usage
        differs from what `count_files` found."""
        out = []
        for k in sorted(set(real) | set(self.used)):
            have, want = self.used.get(k, 0), real.get(k, 0)
            if have != want:
                out.append([k[0], k[1], q.kib(have), q.kib(want)])
        return out


__all__ = ["Key", "OstQuota", "QuotaLog", "SCHEMA", "growth", "keys_of"]
