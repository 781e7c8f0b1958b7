"""SQLiteStore: the embedded store, one SQLite file shared by every process of a local cluster.

Theory of operation
- One file, many processes. WAL mode lets readers run beside the one writer; every write is a
  `BEGIN IMMEDIATE` transaction so writers queue on SQLite's lock (busy_timeout) instead of
  failing half way with SQLITE_BUSY on a read-to-write upgrade.
- Revisions live in `meta.revision` and are bumped inside the write transaction, so they are
  global and monotonic across processes. Every change is also written to `events`, which is
  what watches read; `events` keeps the last `history_revisions` revisions, older history is
  compacted away and a watch that asks for it gets `Compacted`.
- Leases have no owner process. A lease row holds its wall-clock deadline (`time.time()`,
  shared by all processes on the host); whoever touches the store next (a reader, a writer,
  a keepalive or a polling watch) first reaps every lease whose deadline passed, deleting its
  keys and recording DELETE events at a fresh revision. So a lease expires even if every
  process that knew about it is dead, and the next process to look never sees its keys.
- Watches poll `meta.revision` every `poll_interval` (15 ms), a read of one row, and fetch the
  new events only when it moved; the same poll reaps expired leases, which is how a watcher
  sees a dead holder's lease vanish within ~TTL + poll interval.

Thread and event-loop rules
- All SQLite work of one store object runs on the object's own single worker thread, one
  connection, one call at a time; the event loop only awaits it (nothing blocks the loop
  for longer than a thread hand-off).
- A store object may be awaited from any event loop in any thread (the calls are serialised
  on its worker thread), but like every Store it is meant to be used from the loop that made
  it; a component running its own loop (the agent's keepalive thread) should open its own
  store on the same file, which is cheap and gives it its own worker thread.
- A call cancelled while its transaction runs still completes or rolls back as a whole.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from shoal.errors import InvalidArgument, LeaseExpired, ShoalError, StoreError, StoreUnreachable
from shoal.store.base import Compacted, KeyValue, Lease, Store, WatchEvent
from shoal.store.keys import check_key, check_txn, check_value, prefix_range
from shoal.store.sqlite_tx import (
    EVENT_TYPES,
    SCHEMA,
    WATCH_BATCH,
    Tx,
    kv_record,
)

T = TypeVar("T")


class SQLiteStore(Store):
    """The store in one SQLite file; see the module docstring for the rules."""

    def __init__(
        self,
        path: str | Path,
        *,
        history_revisions: int = 10_000,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.015,
    ) -> None:
        self.path = Path(path).absolute()
        self.url = f"sqlite://{self.path}"
        self.history_revisions = history_revisions
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shoal-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()  # guards _closed against close() from another thread

    # -- plumbing -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path.parent.is_dir() and not self.path.exists():
                # the store holds the configuration (fence passwords) and the leases: 0600
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode survives a process crash (what failover is about); only a
                # power loss can drop the last commits, and that takes the whole host down.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn on the worker thread with the connection; map SQLite errors to ours.

        SQLite's busy handler does not cover every lock (switching a new file to WAL while
        another process opens it fails at once), so lock contention is retried here until
        busy_timeout has passed; only then is the store called unreachable. A locked error
        comes before any change is applied (writes start with BEGIN IMMEDIATE), so a retry
        never applies a change twice."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return fn(self._connect())
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if locked and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                    continue
                raise StoreUnreachable(f"sqlite store {self.url} unreachable: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {self.url}: {exc}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreError(f"sqlite store {self.url} is closed")
            future = self._executor.submit(self._call, fn)
        return await asyncio.wrap_future(future)

    def _write(self, conn: sqlite3.Connection, body: Callable[[Tx], T]) -> T:
        """Run body in one write transaction, after reaping expired leases.

        A ShoalError from body (LeaseExpired, ...) is a refusal raised before body changed
        anything, so the reap is still committed; anything else rolls everything back."""
        conn.execute("BEGIN IMMEDIATE")
        refusal: ShoalError | None = None
        try:
            tx = Tx(conn, self.history_revisions)
            try:
                result = body(tx)
            except ShoalError as exc:
                refusal = exc
            tx.finish()
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (I/O error, full)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if refusal is not None:
            raise refusal
        return result

    def _read(self, conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run body in one read snapshot in which no lease is past its deadline."""
        while True:
            now = time.time()
            conn.execute("BEGIN")
            try:
                (first_deadline,) = conn.execute("SELECT min(expires_at) FROM leases").fetchone()
                if first_deadline is None or first_deadline > now:
                    return body(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
            self._write(conn, lambda tx: None)  # reap, then read again

    # -- reads --------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        k = check_key(key)

        def body(conn: sqlite3.Connection) -> KeyValue | None:
            row = conn.execute("SELECT * FROM kv WHERE key=?", (k,)).fetchone()
            return kv_record(row) if row else None

        return await self._run(lambda conn: self._read(conn, body))

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        lo, hi = prefix_range(prefix)

        def body(conn: sqlite3.Connection) -> tuple[list[KeyValue], int]:
            if hi is None:
                rows = conn.execute("SELECT * FROM kv WHERE key >= ? ORDER BY key", (lo,))
            else:
                rows = conn.execute(
                    "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key", (lo, hi)
                )
            kvs = [kv_record(r) for r in rows]
            (rev,) = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            return kvs, int(rev)

        return await self._run(lambda conn: self._read(conn, body))

    async def revision(self) -> int:
        def body(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])

        return await self._run(lambda conn: self._read(conn, body))

    # -- writes -------------------------------------------------------------------------
    async def _put(self, key: str, value: bytes, lease: int, expect: int | None) -> int | None:
        """Write key (only if its mod_revision is `expect`, unless that is None)."""
        k, v = check_key(key), check_value(value)

        def body(tx: Tx) -> int | None:
            if expect is not None and tx.mod_revision(k) != expect:
                return None
            tx.check_lease(lease)
            tx.next_revision()
            tx.put(k, v, lease)
            return tx.rev

        return await self._run(lambda conn: self._write(conn, body))

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        result = await self._put(key, value, lease, None)
        assert result is not None
        return result

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        return await self._put(key, value, lease, 0)

    async def compare_and_swap(
        self, key: str, value: bytes, *, mod_revision: int, lease: int = 0
    ) -> int | None:
        return await self._put(key, value, lease, mod_revision)

    async def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        k = check_key(key)

        def body(tx: Tx) -> bool:
            current = tx.mod_revision(k)
            if current == 0 or (mod_revision is not None and current != mod_revision):
                return False
            tx.next_revision()
            return tx.delete(k)

        return await self._run(lambda conn: self._write(conn, body))

    async def transaction(
        self,
        compares: list[tuple[str, int]],
        puts: list[tuple[str, bytes]],
        deletes: list[str],
    ) -> int | None:
        check_txn(puts, deletes)
        cmp = [(check_key(k), rev) for k, rev in compares]
        ops = [(check_key(k), check_value(v)) for k, v in puts]
        dels = [check_key(k) for k in deletes]

        def body(tx: Tx) -> int | None:
            if any(tx.mod_revision(k) != rev for k, rev in cmp):
                return None
            if not ops and not any(tx.mod_revision(k) for k in dels):
                return tx.rev  # nothing changes: no new revision, as in etcd
            tx.next_revision()
            for k, v in ops:
                tx.put(k, v, 0)
            for k in dels:
                tx.delete(k)
            return tx.rev

        return await self._run(lambda conn: self._write(conn, body))

    # -- leases -------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        if not ttl > 0:
            raise InvalidArgument(f"lease TTL must be positive, not {ttl!r}")

        def body(tx: Tx) -> Lease:
            cur = tx.conn.execute(
                "INSERT INTO leases (ttl, expires_at) VALUES (?, ?)", (ttl, tx.now + ttl)
            )
            return Lease(id=int(cur.lastrowid or 0), ttl=float(ttl))

        return await self._run(lambda conn: self._write(conn, body))

    async def keepalive(self, lease_id: int) -> float:
        def body(tx: Tx) -> float:
            row = tx.conn.execute("SELECT ttl FROM leases WHERE id=?", (lease_id,)).fetchone()
            if row is None:  # reaped by this very transaction, or long gone
                raise LeaseExpired(f"lease {lease_id} expired or revoked")
            ttl = float(row[0])
            tx.conn.execute(
                "UPDATE leases SET expires_at=? WHERE id=?", (tx.now + ttl, lease_id)
            )
            return ttl

        return await self._run(lambda conn: self._write(conn, body))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._run(lambda conn: self._write(conn, lambda tx: tx.revoke(lease_id)))

    async def lease_ttl(self, lease_id: int) -> float | None:
        deadline = await self.lease_deadline(lease_id)
        # a lease past its deadline is gone for every reader (they reap it first)
        return None if deadline is None else float(max(0, int(deadline - time.time())))

    async def lease_deadline(self, lease_id: int) -> float | None:
        """Wall-clock time (time.time()) at which the lease expires, None if it is gone."""

        def body(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT expires_at FROM leases WHERE id=?", (lease_id,)).fetchone()
            return float(row[0]) if row else None

        return await self._run(lambda conn: self._read(conn, body))

    # -- history ------------------------------------------------------------------------
    async def compact(self, revision: int) -> None:
        """Forget the events before `revision` (watches from below it get Compacted)."""
        await self._run(lambda conn: self._write(conn, lambda tx: tx.compact(revision)))

    def _poll(
        self, conn: sqlite3.Connection, lo: bytes, hi: bytes | None, next_rev: int
    ) -> tuple[list[WatchEvent], int]:
        def body(conn: sqlite3.Connection) -> tuple[list[WatchEvent], int]:
            rev = int(conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])
            compact = int(
                conn.execute("SELECT value FROM meta WHERE name='compact_revision'").fetchone()[0]
            )
            if next_rev < compact:
                raise Compacted(
                    f"sqlite store {self.url}: watch from revision {next_rev} but history "
                    f"before {compact} is compacted",
                    compact_revision=compact,
                )
            if rev < next_rev:
                return [], next_rev
            upto = min(rev, next_rev + WATCH_BATCH - 1)
            sql = "SELECT type, key, value, revision, create_revision FROM events " \
                  "WHERE revision >= ? AND revision <= ? AND key >= ?"
            args: tuple[object, ...] = (next_rev, upto, lo)
            if hi is not None:
                sql += " AND key < ?"
                args += (hi,)
            rows = conn.execute(sql + " ORDER BY revision, seq", args)
            events = [
                WatchEvent(EVENT_TYPES[t], bytes(k).decode(), bytes(v), r, c)
                for t, k, v, r, c in rows
            ]
            return events, upto + 1

        return self._read(conn, body)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Events under prefix from start_revision (<= 0: from the next revision) on.

        Ends quietly when the store is closed; raises Compacted if start_revision (or, after
        a long stall, the watch's position) fell below the kept history."""
        lo, hi = prefix_range(prefix)
        next_rev = start_revision if start_revision > 0 else await self.revision() + 1
        while not self._closed:
            try:
                events, new_next = await self._run(
                    functools.partial(self._poll, lo=lo, hi=hi, next_rev=next_rev)
                )
            except StoreError:
                if self._closed:
                    return
                raise
            for event in events:
                yield event
            if new_next == next_rev:
                await asyncio.sleep(self.poll_interval)
            next_rev = new_next

    # -- lifecycle ----------------------------------------------------------------------
    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Queued behind any call still in flight, which finishes on the open connection.
            future = self._executor.submit(self._disconnect)
            self._executor.shutdown(wait=False)
        await asyncio.wrap_future(future)
