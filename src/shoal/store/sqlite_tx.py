"""The SQLite store's tables and its write transaction: revisions, events, leases.

Everything that changes the store goes through one `Tx`, inside a `BEGIN IMMEDIATE`
transaction taken by SQLiteStore: it bumps the global revision, records each change in
`events` (what watches read) and trims that history to the last `history` revisions.
"""

from __future__ import annotations

import sqlite3
import time

from shoal.errors import LeaseExpired
from shoal.store.base import EventType, KeyValue

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;
-- AUTOINCREMENT: a lease id is never reused, so a stale holder cannot renew a newer lease
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires_at);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, type INTEGER NOT NULL, key BLOB NOT NULL,
    value BLOB NOT NULL, create_revision INTEGER NOT NULL, PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
"""
PUT, DELETE = 0, 1
EVENT_TYPES = {PUT: EventType.PUT, DELETE: EventType.DELETE}
WATCH_BATCH = 1000  # revisions fetched per watch poll, bounds memory when far behind


class Tx:
    """One write transaction: bumps the revision lazily and records events."""

    def __init__(self, conn: sqlite3.Connection, history: int) -> None:
        self.conn = conn
        self.history = history
        self.now = time.time()  # taken after BEGIN IMMEDIATE got the lock
        self.start_rev = self.rev = self._meta("revision")
        self.seq = 0
        self.reap()

    def _meta(self, name: str) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()[0])

    def next_revision(self) -> int:
        self.rev += 1
        self.seq = 0
        return self.rev

    def _event(self, kind: int, key: bytes, value: bytes, create_rev: int) -> None:
        self.conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            (self.rev, self.seq, kind, key, value, create_rev),
        )
        self.seq += 1

    def mod_revision(self, key: bytes) -> int:
        row = self.conn.execute("SELECT mod_revision FROM kv WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def check_lease(self, lease: int) -> None:
        if lease and not self.conn.execute("SELECT 1 FROM leases WHERE id=?", (lease,)).fetchone():
            raise LeaseExpired(f"lease {lease} not found (expired or revoked)")

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        """Write at the current (already bumped) revision."""
        row = self.conn.execute(
            "SELECT create_revision, version FROM kv WHERE key=?", (key,)
        ).fetchone()
        create_rev, version = (int(row[0]), int(row[1]) + 1) if row else (self.rev, 1)
        self.conn.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
            (key, value, create_rev, self.rev, version, lease),
        )
        self._event(PUT, key, value, create_rev)

    def delete(self, key: bytes) -> bool:
        row = self.conn.execute("SELECT create_revision FROM kv WHERE key=?", (key,)).fetchone()
        if row is None:
            return False
        self.conn.execute("DELETE FROM kv WHERE key=?", (key,))
        self._event(DELETE, key, b"", int(row[0]))
        return True

    def revoke(self, lease: int) -> None:
        keys = [
            r[0] for r in self.conn.execute("SELECT key FROM kv WHERE lease=? ORDER BY key", (lease,))
        ]
        if keys:  # like etcd, a revoke that deletes nothing does not bump the revision
            self.next_revision()
            for key in keys:
                self.delete(key)
        self.conn.execute("DELETE FROM leases WHERE id=?", (lease,))

    def reap(self) -> None:
        for (lease,) in self.conn.execute(
            "SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at, id", (self.now,)
        ).fetchall():
            self.revoke(int(lease))

    def finish(self) -> None:
        if self.rev == self.start_rev:
            return
        self.conn.execute("UPDATE meta SET value=? WHERE name='revision'", (self.rev,))
        compact = self._meta("compact_revision")
        # Compact in steps (a tenth of the history, at most 1000 revisions) so a write rarely
        # pays for it.
        if self.rev - compact > self.history + min(1000, max(1, self.history // 10)):
            self.compact(self.rev - self.history)

    def compact(self, revision: int) -> None:
        revision = min(revision, self.rev)
        self.conn.execute("DELETE FROM events WHERE revision < ?", (revision,))
        self.conn.execute(
            "UPDATE meta SET value=max(value, ?) WHERE name='compact_revision'", (revision,)
        )


def kv_record(row: tuple[bytes, bytes, int, int, int, int]) -> KeyValue:
    return KeyValue(bytes(row[0]).decode(), bytes(row[1]), row[2], row[3], row[4], row[5])
