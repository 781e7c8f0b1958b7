"""What every target (MGT, MDT, OST) shares: device, journal, transnos, last_rcvd.

Durability model (DESIGN.md): a modifying request is applied, given a transno and answered
before it is on disk; the journal commits in groups, every `commit_interval` seconds or when
forced (fsync, too many uncommitted bytes). A crash loses exactly the uncommitted tail, which
clients replay. `last_committed` goes into every reply so clients can drop what is safe.

The device is a directory holding `target.db` (SQLite: target info, last_rcvd client slots,
reply data for resends, and the subclass's own tables) plus whatever the subclass keeps beside
it (OST object files). Subclasses choose how a commit reaches the disk (`_persist`); the
base decides when. What each client needs kept so that a resent request is answered
without being done twice (its last_rcvd slot, its reply data) is the ClientTable's
(client_table.py; its rows: last_rcvd.py).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from shoal.errors import (
    InvalidArgument,
    NoDevice,
    ShoalError,
    Stale,
    Unsupported,
    VersionMismatch,
)
from shoal.protocol import messages as m
from shoal.protocol.transno import epoch_of, make_transno, seq_of
from shoal.target import last_rcvd
from shoal.target.client_table import ClientTable
from shoal.target.label import DB_FILE, Label, check_device, read_label
from shoal.target.last_rcvd import CachedReply, CommitBatch
from shoal.target.ops import (  # noqa: F401 - re-exported: handlers import them here
    MAX_PRE_VERSIONS,
    OpContext,
    OpResult,
    OpSpec,
    _version_checked,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS last_rcvd (
    client TEXT PRIMARY KEY, last_xid INTEGER, last_transno INTEGER, epoch INTEGER,
    connected_at REAL);
CREATE TABLE IF NOT EXISTS reply_data (
    client TEXT, xid INTEGER, transno INTEGER, result BLOB, PRIMARY KEY (client, xid));
"""


class TargetService(abc.ABC):
    """A target being served on this node. Subclasses register OPS and implement _persist."""

    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        device: Path,
        *,
        fs: str,
        node: str = "",
        commit_interval: float = 1.0,
    ) -> None:
        self.name = name
        self.fs = fs
        self.device = Path(device)
        self.node = node
        self.commit_interval = commit_interval
        self.ops: dict[str, OpSpec] = {}
        self.epoch = 0
        self.last_committed = 0
        self.commit_seconds = 0.0  # spent in commits that succeeded (the node's metrics)
        self.last_transno = 0
        self._seq = 0
        self.clients = ClientTable()
        self._commit_lock = asyncio.Lock()
        self._commit_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._commit_task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self.service_time: dict[str, float] = defaultdict(float)
        self.commits = 0
        # when the oldest change not committed yet was made (None: all committed): the health
        # check's measure of a stuck journal, not the last commit, which an idle target
        # makes none of
        self.uncommitted_since: float | None = None
        self.started_at = 0.0
        self.db: sqlite3.Connection
        self.no_commit = False  # fail_loc "replay barrier": stop committing
        # changed outside any request (an eviction's closes, an orphan sweep): the next
        # commit must run although no transno moved
        self.unsaved = False
        # Called before every commit touches the device; raising stops the commit. The node
        # checks its MMP fencing token here, so a superseded owner never writes (invariant 2).
        self.commit_guard: Callable[[], None] | None = None
        self.boot_clients: dict[str, int] = {}  # last_rcvd slots at open: client -> transno
        self._register_ops()

    # -- subclass hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _register_ops(self) -> None:
        """Fill self.ops."""

    @abc.abstractmethod
    def _format(self) -> None:
        """Create the subclass's tables/files on a fresh device (inside a transaction)."""

    @abc.abstractmethod
    async def _persist(self, batch: CommitBatch) -> None:
        """Make everything up to batch.upto durable, with the batch's reply data and slots."""

    def dirty_bytes(self) -> int:
        """Bytes applied but not yet committed; past a limit a commit is forced."""
        return 0

    max_dirty_bytes: ClassVar[int] = 64 << 20

    # -- lifecycle -----------------------------------------------------------------------
    def format(self) -> bool:
        """Write this target's label and empty tables on a device that holds none (`shoal
        format`, and `shoal up` on first use); False if it is this target's already.
        NoDevice if it holds another target: a device is never formatted over."""
        self.device.mkdir(parents=True, exist_ok=True)
        if read_label(self.device) is not None:
            check_device(self.device, self.fs, self.name)
            return False
        # an MGS serves every file system that names it: its label names none
        label = Label.new("" if self.kind == "MGT" else self.fs, self.name, self.kind,
                          getattr(self, "index", 0))
        self._connect()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for key, value in (("label", label.target), ("fs", label.fs), ("kind", label.kind),
                               ("index", label.index), ("uuid", label.uuid), ("epoch", 0),
                               ("last_committed", 0)):
                self._set_info(key, value)
            self._format()
            self.db.execute("COMMIT")
        finally:
            self._close_db()
            del self.db
        return True

    def _connect(self) -> None:
        self.db = sqlite3.connect(self.device / DB_FILE, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def open(self, *, create: bool = False) -> None:
        """Open the device and begin a new epoch. The device must carry this target's label
        (target/label.py): a missing, unformatted or foreign one is refused (NoDevice)
        before anything touches it. `create` formats an unformatted one first (tests)."""
        if create:
            self.format()
        check_device(self.device, self.fs, self.name)
        self._connect()
        self.db.execute("BEGIN IMMEDIATE")
        self.epoch = int(self._info("epoch") or 0) + 1
        self._set_info("epoch", self.epoch)
        self.db.execute("COMMIT")
        self.last_committed = int(self._info("last_committed") or 0)
        self.last_transno = self.last_committed
        self._seq = 0
        self.clients.load(*last_rcvd.load(self.db))
        # the clients the recovery window waits for: whoever may hold lost replies
        self.boot_clients = {c: t for c, (_x, t) in self.clients.slots.items()}
        self.started_at = time.time()
        self._after_open()

    def _after_open(self) -> None:  # noqa: B027 - an optional hook, empty by design
        """Subclass hook run after the journal is open (e.g. begin the open transaction)."""

    def _info(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM info WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_info(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)", (key, value))

    async def start(self) -> None:
        if not hasattr(self, "db"):
            self.open()
        self._commit_task = asyncio.create_task(self._commit_loop(), name=f"commit-{self.name}")

    async def stop(self, *, commit: bool = True) -> None:
        if self._commit_task is not None:
            self._commit_task.cancel()
            try:
                await self._commit_task
            except asyncio.CancelledError:
                pass
        if commit and not self.no_commit:
            await self.commit()
        self._close_db()
        self._fail_waiters()

    def abandon(self) -> None:
        """Stop at once without touching the device again (superseded, self-fenced): no
        commit, no close-time writes; the uncommitted tail is the clients' to replay."""
        self.no_commit = True
        if self._commit_task is not None:
            self._commit_task.cancel()
        self._close_db()
        self._fail_waiters()

    def _fail_waiters(self) -> None:
        """Requests waiting for a commit this instance will never make get ENODEV (the
        client resends to whoever serves the target next) instead of waiting forever, which
        also kept them in the node's health check against the target's next instance."""
        waiters, self._commit_waiters = self._commit_waiters, []
        futures = [fut for _, fut in waiters] + list(self.clients.drop_waiters())
        for fut in futures:
            if not fut.done():
                fut.set_exception(NoDevice(f"{self.name} stopped before committing"))

    def _close_db(self) -> None:
        if hasattr(self, "db"):
            try:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.db.close()

    # -- commits -------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        started = time.monotonic()
        while True:
            # Commits start every commit_interval, counted from the previous *start*: a
            # commit that takes long (many objects to fsync under load) must not stretch the
            # cycle, or the uncommitted tail (what clients replay after a crash) grows.
            wait = max(0.0, self.commit_interval - (time.monotonic() - started))
            try:
                # not wait_for: on 3.11 it swallows a cancel that races the kick (gh-86296),
                # and stop() then waits forever for this loop
                async with asyncio.timeout(wait):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            started = time.monotonic()
            try:
                await self.commit()
            except (sqlite3.Error, OSError) as exc:
                # the health check reports a journal that stopped committing
                log.error("%s: commit failed: %s", self.name, exc)
                self.stats["commit_errors"] += 1

    async def commit(self) -> int:
        """Commit everything applied so far; returns last_committed."""
        async with self._commit_lock:
            if self.no_commit or (self.last_transno <= self.last_committed and not self.unsaved
                                  and not self.clients.changed()):
                return self.last_committed
            if self.commit_guard is not None:
                self.commit_guard()
            self.unsaved = False
            batch = self.clients.take(self.last_transno)
            taken_at = time.time()
            started = time.perf_counter()
            try:
                await self._persist(batch)
                self.commit_seconds += time.perf_counter() - started
            except BaseException:
                # the subclass keeps its own data for the retry; the rows go back in front
                self.clients.restore(batch)
                raise
            self.last_committed = max(self.last_committed, batch.upto)
            self.commits += 1
            # changes made while this batch was written wait from its start at the latest
            self.uncommitted_since = (None if self.last_transno <= self.last_committed
                                      else taken_at)
            still = []
            for upto, fut in self._commit_waiters:
                if upto <= self.last_committed:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((upto, fut))
            self._commit_waiters = still
            self.clients.committed(batch)
            return self.last_committed

    def request_commit(self) -> None:
        self._kick.set()

    async def forced_commit(self, req: m.Request, reply: m.Reply) -> m.Reply:
        """The reply of a request that forces a commit (sync, fsync, a FLAG_SYNC change)
        once everything up to now is committed; ENODEV if this instance stops first (the
        client resends to the target's next server)."""
        try:
            await self.wait_committed(self.last_transno)
        except NoDevice as exc:
            return m.Reply(req.xid, exc.errno_name, str(exc))
        reply.last_committed = self.last_committed
        return reply

    async def wait_committed(self, transno: int) -> None:
        if transno <= self.last_committed:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_waiters.append((transno, fut))
        self._kick.set()
        await fut

    def write_reply_rows(self, batch: CommitBatch) -> None:
        """SQL for the batch's last_rcvd slots and reply data (call inside a transaction)."""
        last_rcvd.write_rows(self.db, batch, self.epoch)
        self._set_info("last_committed", max(batch.upto, self.last_committed))

    # -- the request path ----------------------------------------------------------------
    def next_transno(self) -> int:
        return make_transno(self.epoch, self._seq + 1)

    def handle(self, client: str, req: m.Request) -> tuple[m.Reply, OpContext | None]:
        """Serve one request; returns the reply and, for a change, its context.

        Runs synchronously so a change is applied atomically with respect to every other
        request on this target (one event loop, no await inside)."""
        started = time.perf_counter()
        spec = self.ops.get(req.op)
        if req.known_xid:
            self.clients.forget_below(client, req.known_xid)
        if spec is None:
            return self._error_reply(req, Unsupported(f"{self.name}: no operation {req.op!r}")), None
        replay = bool(req.flags & m.FLAG_REPLAY)
        if spec.modifying:
            cached = self.clients.cached(client, req.xid)
            if cached is not None:
                # a resend or replay of something already done: reconstruct, don't redo
                self.stats["reconstructed"] += 1
                return self._reply_from(req.xid, cached), None
            if not replay and self.clients.stale(client, req.xid):
                # a copy the client no longer waits for: a connection it gave up on, sent
                # by its kernel once a cut healed. Done again now it would undo what came
                # after it (seed 26, round 301: an older write over a newer one)
                self.stats["stale"] += 1
                return self._error_reply(req, Stale(
                    f"{self.name}: request {req.xid} of {client} is older than its "
                    "answered ones: a late copy, not done")), None
        sync = bool(req.flags & m.FLAG_SYNC)
        if sync and (not spec.idempotent or req.flags & (m.FLAG_REPLAY | m.FLAG_RESEND)):
            return self._error_reply(req, InvalidArgument(
                f"{self.name}: {req.op} cannot be sent without replay state")), None
        expected = None
        if not spec.modifying:
            transno = 0
        elif replay and req.transno:
            if req.transno <= self.last_committed:
                return self._committed_replay(client, req), None
            transno = req.transno
            if req.pre_versions and spec.vbr:
                expected = req.pre_versions
                spec = OpSpec(partial(_version_checked, spec.handler), True)
        else:
            transno = self.next_transno()
        ctx = OpContext(client, req.xid, transno, replay, expected=expected)
        try:
            data, bulk = self._apply(spec, ctx, req)
        except ShoalError as exc:
            self.stats[f"err_{exc.errno_name}"] += 1
            return self._error_reply(req, exc), None
        except (TypeError, KeyError, ValueError) as exc:
            # arguments of the wrong shape: EINVAL, and _apply rolled back
            self.stats["err_EINVAL"] += 1
            return self._error_reply(req, InvalidArgument(f"{req.op}: bad arguments: {exc}")), None
        elapsed = time.perf_counter() - started
        self.stats[req.op] += 1
        self.service_time[req.op] += elapsed
        if spec.modifying:
            if epoch_of(transno) == self.epoch:
                self._seq = max(self._seq, seq_of(transno))
            self.last_transno = max(self.last_transno, transno)
            if self.uncommitted_since is None:
                self.uncommitted_since = time.time()
            if sync:
                ctx.force_commit = True
                return m.Reply(req.xid, None, "", transno, self.last_committed, data,
                               ctx.pre_versions, bulk=bulk), ctx
            self.clients.record(client, req.xid,
                                CachedReply(transno, None, "", data, ctx.pre_versions))
            if self.dirty_bytes() > self.max_dirty_bytes:
                self._kick.set()
        reply = m.Reply(req.xid, None, "", transno, self.last_committed, data, ctx.pre_versions,
                        bulk=bulk)
        return reply, ctx

    def _apply(self, spec: OpSpec, ctx: OpContext, req: m.Request) -> OpResult:
        """Run the handler; subclasses with an open transaction wrap it in a savepoint."""
        return spec.handler(ctx, req.args, req.bulk)

    def _committed_replay(self, client: str, req: m.Request) -> m.Reply:
        """A replay at or below last_committed whose reply data is gone (the client had
        acknowledged it: known_xid). It is committed if this client's slot, written in the
        same commits, has reached its transno; otherwise it was skipped (a gap of an earlier
        recovery) and can neither be answered nor redone out of order."""
        if self.clients.slot_reached(client, req.transno):
            self.stats["replay_committed"] += 1
            return m.Reply(req.xid, None, "", req.transno, self.last_committed)
        self.stats["err_EOVERFLOW"] += 1
        return self._error_reply(req, VersionMismatch(
            f"replay of transno {req.transno:#x}: at or below last_committed "
            f"{self.last_committed:#x} but not this client's"))

    def can_answer_replay(self, client: str, req: m.Request) -> bool:
        """Whether a replay can be answered without running it (after the window)."""
        if self.clients.cached(client, req.xid) is not None:
            return True
        return 0 < req.transno <= self.last_committed \
            and self.clients.slot_reached(client, req.transno)

    async def client_connected(self, client: str) -> None:
        """A client connected: give it a last_rcvd slot and have it on disk before the
        connect is answered, so a restarted target knows every client that may hold
        something to replay, whenever its first change comes (Lustre writes the slot at
        connect: tgt_client_new). A known client has one already. Behind the commit barrier
        the slot, like everything else, stays in memory: the barrier stands for a device
        that silently drops writes (Lustre's replay_barrier makes it read-only)."""
        if not self.clients.add(client) or self.no_commit:
            return
        if self._commit_task is None or self._commit_task.done():
            await self.commit()  # not started (tests, tools): no commit loop to ask
            return
        # the commit loop's next group commit takes it, with every other new slot: a crowd
        # of clients mounting at once costs a commit or two, not one each (and a connect
        # resent after a failed commit waits again rather than finding the slot "known")
        fut = self.clients.wait_slot(client)
        self._kick.set()
        await fut

    def forget_client(self, client: str) -> None:
        """Drop what the target keeps for a client (eviction, or it connected as new): its
        last_rcvd slot and reply data, in memory now and on disk with the next commit."""
        if self.clients.forget_client(client):
            self.request_commit()

    def _reply_from(self, xid: int, c: CachedReply) -> m.Reply:
        return m.Reply(xid, c.status, c.message, c.transno, self.last_committed, c.data,
                       c.pre_versions)

    def _error_reply(self, req: m.Request, exc: ShoalError) -> m.Reply:
        return m.Reply(req.xid, exc.errno_name, str(exc), 0, self.last_committed)

    # -- what the node and get_param show -----------------------------------------------
    @property
    def known_clients(self) -> list[str]:
        return sorted(self.clients.slots)

    def check_device(self) -> str | None:
        """None if the device is writable and statfs-able, else why not."""
        probe = self.device / ".health_probe"
        try:
            os.statvfs(self.device)
            with open(probe, "wb") as f:
                f.write(b"ok")
            probe.unlink()
        except OSError as exc:
            return f"device {self.device}: {exc.strerror}"
        return None
