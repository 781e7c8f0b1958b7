"""A client's import: its connection to one target, and everything needed to survive a restart.

protocol/import_state.py decides (states, failover NIDs, replay list); this module does the
I/O around it: it sends, waits, resends, and reports each outcome to the state machine as an
event. Timeouts come from the import's adaptive-timeout estimator (protocol/adaptive.py); the
server may stretch a deadline with an early reply.

Calls wait while the import is not FULL (resends may go in RECOVER, before new work); one
recovery task per import (client/recovery.py) does the connecting, the replay and the final
ping. An IR notice moves the import to the NID now serving its target at once, abandoning
whatever was waiting on the old one. An eviction fails every call in flight with EIO, drops
the replay list, and reconnects as a new client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.client.faults import faults_for
from shoal.client.recovery import EVICTED_STATUSES, NODE_TARGET, Recovery
from shoal.errors import (
    Evicted,
    IOFailure,
    NoDevice,
    NotConnected,
    ShoalError,
    TimedOut,
    from_errno_name,
)
from shoal.protocol import messages as m
from shoal.protocol.adaptive import ImportTimeouts
from shoal.protocol.import_state import (
    Event,
    ImportState,
    ImportStateMachine,
    ReplayEntry,
)
from shoal.protocol.ldlm import REPLAY_OP
from shoal.protocol.transno import epoch_of

if TYPE_CHECKING:
    from shoal.client.data_locks import DataLocks
    from shoal.client.md_locks import MetadataLocks
    from shoal.client.open_cache import OpenCache
    from shoal.client.session import ClientSession
    from shoal.net.client import RpcConnection

log = logging.getLogger(__name__)

S = ImportState
_RECOVERING = frozenset({S.CONNECTING, S.REPLAY, S.REPLAY_LOCKS, S.REPLAY_WAIT, S.RECOVER})

__all__ = ["Import", "IRNotice", "ReplayEntry", "NODE_TARGET"]


def _carry_for_replay(req: m.Request, reply: m.Reply) -> None:
    """A create's replay must recreate the striping its first execution chose: the client
    may have written to those objects already, and a restarted MDT's round robin points
    elsewhere (Lustre's mdc_replay_open sends the layout of the original reply). The MDT
    reads it only from a replay. An append's replay, likewise, carries the offset it was
    given: the data was written there."""
    if req.op == "append" and "offset" in reply.data:
        req.args["offset"] = reply.data["offset"]
        return
    if req.op not in ("open", "create"):
        return
    attr = reply.data.get("attr", reply.data) if req.op == "open" else reply.data
    if (req.op == "create" or reply.data.get("created")) and isinstance(attr, dict) \
            and attr.get("layout"):
        req.args["layout"] = attr["layout"]


class _Kicked(Exception):
    """An attempt was abandoned because the import moved (IR), was evicted or closed."""


@dataclass(frozen=True, slots=True)
class IRNotice:
    version: int
    nid: str
    epoch: int
    node: str
    received: float


class Import:
    """One client's connection state for one target."""

    def __init__(self, client: ClientSession, target: str, kind: str, nids: list[str]) -> None:
        self.client = client
        self.target = target
        self.kind = kind
        self.sm = ImportStateMachine(target, nids, time.time())
        self.at = ImportTimeouts(client.at_params)
        self.faults = faults_for(client)  # fail_loc: every RPC below goes through it
        self.generation = 0  # bumped at each eviction: older calls fail with EIO
        self.ir: IRNotice | None = None
        self.lost_to_eviction = 0  # changes dropped by evictions, reported by the next sync
        self._changed = asyncio.Event()
        self._attempting: set[asyncio.Task[Any]] = set()  # tasks waiting in _attempt
        self._kicked: set[asyncio.Task[Any]] = set()
        self._recovery = Recovery(self)  # the task that brings the import back to FULL
        self.md_locks: MetadataLocks | None = None  # an MDT's, when the client caches
        self.opens: OpenCache | None = None  # its read-only opens kept under OPEN locks
        self.data_locks: DataLocks | None = None  # an OST's, when the client keeps data
        self._lock_replay: asyncio.Task[None] | None = None
        self._sent = 0  # requests put on the wire by call(), resends included

    def __repr__(self) -> str:
        return f"<Import {self.target} {self.state} via {self.nid}>"

    # -- what callers and get_param read -------------------------------------------------
    @property
    def state(self) -> str:
        return self.sm.state.value

    @property
    def state_history(self) -> list[tuple[float, str]]:
        return [(c.time, c.state.value) for c in self.sm.history]

    @property
    def nids(self) -> list[str]:
        return self.sm.nids

    @property
    def nid(self) -> str:
        return self.sm.nid

    @property
    def epoch(self) -> int:
        return self.sm.epoch

    @property
    def last_committed(self) -> int:
        return self.sm.last_committed

    @property
    def replay(self) -> list[ReplayEntry]:
        return self.sm.replay

    @property
    def uncommitted_bytes(self) -> int:
        return self.sm.uncommitted_bytes

    @property
    def timeouts(self) -> int:
        """Attempts that got no reply in time (each one then reconnected and resent)."""
        return self.at.timeouts

    @property
    def requests_sent(self) -> int:
        """Requests this import's calls sent, each resend counted (what the target had to
        answer); not the connects and replays of its recovery."""
        return self._sent

    @property
    def connect_attempts(self) -> int:
        return self.sm.connect_attempts

    # -- plumbing ------------------------------------------------------------------------
    def notify_changed(self) -> None:
        """Wake everything waiting for the state to change."""
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def _kick_attempts(self) -> None:
        """Abandon every request waiting for a reply: its answer will not come (evicted) or
        should come from elsewhere (IR). Called from callbacks, never from those tasks."""
        for task in self._attempting - self._kicked:
            self._kicked.add(task)
            task.cancel()

    def account_uncommitted(self, before: int) -> None:
        self.client.uncommitted_bytes += self.sm.uncommitted_bytes - before

    def observe_committed(self, last_committed: int) -> None:
        if (last_committed < self.sm.last_committed
                and epoch_of(last_committed) == self.sm.epoch):
            log.warning("%s: server went back in time (last_committed %#x < %#x)",
                        self.target, last_committed, self.sm.last_committed)
        before = self.sm.uncommitted_bytes
        self.sm.observe_committed(last_committed)
        self.account_uncommitted(before)

    def attempt_timeout(self) -> float:
        """How long the next attempt of a request waits for its reply, a resend's as long
        as a first send's (protocol/adaptive.py decides)."""
        return self.at.attempt_timeout(time.time(), self.client.request_timeout)

    def new_request(self, op: str, args: dict[str, Any], *, target: str | None = None,
                    bulk: bytes | None = None, reply_into: Any = None) -> m.Request:
        xid = self.client.next_xid()
        # this request has no reply yet either: a known_xid above its own xid would let the
        # server drop its reply data before a resend could be reconstructed from it
        known = min(self.client.known_xid(), xid)
        return m.Request(xid, op, target or self.target, args, known_xid=known, bulk=bulk,
                         reply_into=reply_into)

    # -- requests ------------------------------------------------------------------------
    async def call(self, op: str, args: dict[str, Any], bulk: bytes | None = None, *,
                   reply_into: Any = None) -> m.Reply:
        """Send until a reply comes; raise the server's error as a ShoalError. A reply's
        bulk may be received straight into `reply_into` (a net.sink.BulkSink)."""
        req = self.new_request(op, args, bulk=bulk, reply_into=reply_into)
        self.client.inflight.add(req.xid)
        try:
            reply = await self._send(req)
        finally:
            self.client.inflight.discard(req.xid)
            self.sm.finished(req.xid)
        before = self.sm.uncommitted_bytes
        if reply.transno:
            _carry_for_replay(req, reply)
            self.sm.record(req, transno=reply.transno, last_committed=reply.last_committed,
                           nbytes=len(bulk) if bulk else 0, pre_versions=reply.pre_versions)
            self.account_uncommitted(before)
        else:
            self.observe_committed(reply.last_committed)
        if reply.status is not None:
            err = from_errno_name(reply.status, reply.message)
            err.reply_data = reply.data
            raise err
        return reply

    async def _send(self, req: m.Request) -> m.Reply:
        gen, fails = self.generation, self._recovery.failures
        deadline = time.monotonic() + self.client.recovery_timeout
        while True:
            await self._ready(req, gen, fails, deadline)
            nid, conn_gen = self.sm.nid, self.sm.conn_gen
            if self.sm.must_resend(req.xid):
                req.flags |= m.FLAG_RESEND
            try:
                conn = await self.client.connection(nid)
                self.sm.sent(req.xid)
                self._sent += 1
                sent = time.time()
                wait = self.attempt_timeout()
                reply = await self._attempt(conn, req, wait)
            except TimedOut as exc:
                self.at.timed_out(wait)
                self._lost(req, nid, conn_gen, exc)
                self.client.ping_soon(nid)  # the whole node may be silent, not only this target
                continue
            except NotConnected as exc:
                self._lost(req, nid, conn_gen, exc)
                continue
            except _Kicked:
                self.sm.lost(req.xid)
                continue
            if reply.status == "ENODEV":
                # the target is not (or no longer) served there: find where it went
                self._lost(req, nid, conn_gen, NoDevice(reply.message))
                continue
            if reply.status == "ENOTCONN":
                # served there, by a new instance this import has not connected to yet
                self._lost(req, nid, conn_gen, NotConnected(reply.message), retry_same=True)
                continue
            if reply.status in EVICTED_STATUSES:
                if gen == self.generation:
                    self.evict(f"{req.op} answered {reply.status}")
                raise IOFailure(f"{self.target}: evicted; {req.op} failed") from Evicted(
                    reply.message)
            if not req.flags & (m.FLAG_RESEND | m.FLAG_REPLAY):
                self.at.reply_received(time.time(), sent, reply.service_estimate)
            return reply

    async def _attempt(self, conn: RpcConnection, req: m.Request, timeout: float) -> m.Reply:
        """conn.call, abandoned early (_Kicked) if the import moves or is evicted meanwhile.

        A kick cancels the calling task itself and takes that cancellation back here
        (Task.uncancel), which costs nothing per RPC, unlike racing a second task."""
        task = asyncio.current_task()
        assert task is not None
        self._attempting.add(task)
        try:
            return await self.faults.call(conn, req, timeout)
        except asyncio.CancelledError:
            if task in self._kicked and task.uncancel() == 0:
                raise _Kicked from None
            raise  # a cancellation of the caller's own: not ours to swallow
        finally:
            self._attempting.discard(task)
            self._kicked.discard(task)

    async def _ready(self, req: m.Request | None, gen: int, fails: int,
                     deadline: float) -> None:
        """Wait until a request may go: FULL, or RECOVER for a resend."""
        what = f"{req.op} (xid {req.xid})" if req is not None else "connect"
        while True:
            if gen != self.generation:
                raise IOFailure(f"{self.target}: evicted by the server; {what} failed")
            state = self.sm.state
            if state is S.FULL:
                return
            if state is S.RECOVER and req is not None and self.sm.must_resend(req.xid):
                return
            if state is S.CLOSED:
                raise NotConnected(f"{self.target}: import closed")
            if self._recovery.failures != fails:
                raise IOFailure(f"{self.target}: no server answered for "
                                f"{self.client.recovery_timeout:.0f}s; {what} failed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IOFailure(f"{self.target}: {what} got no reply in "
                                f"{self.client.recovery_timeout:.0f}s")
            self._recovery.start()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def _lost(self, req: m.Request, nid: str, conn_gen: int, exc: Exception, *,
              retry_same: bool = False) -> None:
        """A request's reply will not come from where it was sent: reconnect (once)."""
        self.sm.lost(req.xid)
        req.flags |= m.FLAG_RESEND
        if (self.sm.state is S.FULL and self.sm.nid == nid
                and self.sm.conn_gen == conn_gen):
            log.info("%s: %s xid %d via %s: %s; reconnecting", self.target, req.op, req.xid,
                     nid, exc)
            self.sm.disconnect(time.time(), retry_same=retry_same)
            self.notify_changed()
        self._recovery.start()

    # -- connecting ----------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect now (if not FULL already), waiting at most recovery_timeout."""
        if self.sm.state is S.FULL:
            return
        deadline = time.monotonic() + self.client.recovery_timeout
        await self._ready(None, self.generation, self._recovery.failures, deadline)

    # -- eviction, IR, notices -----------------------------------------------------------
    def evict(self, reason: str, *, from_recovery: bool = False) -> None:
        if not self.sm.can(Event.EVICTED):
            return  # nothing held (NEW), already evicted, or closed
        before = self.sm.uncommitted_bytes
        dropped = self.sm.evicted(time.time())
        self.account_uncommitted(before)
        self.generation += 1
        self.locks_lost()
        self.lost_to_eviction += len(dropped)
        log.warning("%s: evicted (%s): %d uncommitted changes lost; calls in flight fail "
                    "with EIO", self.target, reason, len(dropped))
        self._kick_attempts()
        self.notify_changed()
        if not from_recovery:
            self._recovery.restart()

    def locks_lost(self) -> None:
        """The server holds no lock of this client any more (it connected again, or was
        evicted): nothing kept under them is covered."""
        if self.md_locks is not None:
            self.md_locks.reset()
        if self.data_locks is not None:
            self.data_locks.reset()

    def locks_held_over(self) -> None:
        """Connected to a new server in recovery (a failover): what the locks covered is
        kept, but not served until the new server has granted them again
        (`replay_locks`, once recovery is over)."""
        if self.md_locks is not None:
            self.md_locks.suspend()
        if self.data_locks is not None:
            self.data_locks.suspend()  # replayed inside the window: data_locks_replayed

    def data_locks_to_replay(self) -> list[list[Any]] | None:
        """The extent locks to replay in this recovery window, if any are held over."""
        dl = self.data_locks
        return dl.replayable() if dl is not None and dl.suspended else None

    def data_locks_replayed(self, granted: Any) -> None:
        if self.data_locks is not None:
            self.data_locks.replayed(granted)

    def replay_locks(self) -> None:
        """Ask the new server for the locks held over, in the background."""
        md = self.md_locks
        if md is None or md.ready:
            return
        if self._lock_replay is not None and not self._lock_replay.done():
            return  # one on its way (a failover during a failover): its call is resent
        self._lock_replay = asyncio.get_running_loop().create_task(self._replay_locks(md))

    async def _replay_locks(self, md: MetadataLocks) -> None:
        wanted = md.replayable()
        try:
            reply = await self.call(REPLAY_OP, {"locks": wanted})
        except ShoalError as exc:
            log.info("%s: lock replay failed (%s): the cache is dropped", self.target, exc)
            md.reset()
            return
        granted = reply.data.get("granted")
        if not isinstance(granted, list):
            granted = []
        md.replayed(granted)
        log.info("%s: %d of %d locks replayed", self.target, len(granted), len(wanted))

    def evicted_notice(self, nid: str) -> None:
        """The server at `nid` says it evicted us. Only the server we are connected to may."""
        if nid != self.sm.nid or self.sm.state in (S.NEW, S.CONNECTING):
            return  # a late word from an old server, or the connect reply will tell
        self.evict(f"notice from {nid}")

    def ir_notice(self, nid: str, epoch: int, version: int, node: str = "") -> bool:
        """IR: the target is now served at `nid` in `epoch`. Returns whether it was applied
        (an older or repeated version never overrides a newer one)."""
        if self.ir is not None and version <= self.ir.version:
            return False
        self.ir = IRNotice(version, nid, epoch, node, time.time())
        state = self.sm.state
        if state is S.CLOSED:
            return True
        running = self._recovery.running
        if self.sm.nid == nid and (
                (state is S.FULL and self.sm.epoch == epoch)
                or (state in _RECOVERING and running
                    and (state is S.CONNECTING or self.sm.epoch == epoch))):
            return True  # already there, or on the way
        if state in (S.NEW, S.IDLE):
            self.sm.move_to(nid)  # nothing to recover: connect there when next used
            return True
        log.info("%s: IR: served by %s (%s, epoch %d); reconnecting", self.target, node,
                 nid, epoch)
        if self.sm.can(Event.DISCONNECT):
            self.sm.disconnect(time.time())
        self.sm.move_to(nid)
        self._kick_attempts()
        self.notify_changed()
        self._recovery.restart()  # a wait or backoff for the old NID is abandoned
        return True

    def connection_lost(self, nid: str) -> None:
        """The connection to `nid` closed while nothing was waiting on it (MGS watch)."""
        if self.sm.state is S.FULL and self.sm.nid == nid:
            self.sm.disconnect(time.time())
            self.notify_changed()

    def close(self) -> None:
        self._recovery.cancel()
        if self._lock_replay is not None:
            self._lock_replay.cancel()
        if self.sm.can(Event.CLOSE):
            self.sm.close(time.time())
        self._kick_attempts()
        self.notify_changed()

    # -- durability ----------------------------------------------------------------------
    async def sync(self, *, report_lost: bool = True) -> None:
        """Force the target to commit (the reply waits for it) and drop what it covered.

        After an eviction lost acknowledged changes, the next sync fails with EIO once, as
        fsync does in Lustre after the client lost its dirty pages; a commit the client asks
        for by itself (report_lost=False) leaves that to the application's."""
        if self.lost_to_eviction and report_lost:
            lost, self.lost_to_eviction = self.lost_to_eviction, 0
            raise IOFailure(f"{self.target}: {lost} acknowledged changes were lost when the "
                            f"server evicted this client")
        try:
            await self.call("sync", {})
        except ShoalError as exc:
            log.warning("%s: sync failed: %s", self.target, exc)
            raise

    async def leave(self) -> None:
        """Tell the target this client is going away (Lustre's disconnect at umount), so
        its export and slot go now and no recovery window waits for it. Best effort: a
        target that does not answer forgets the client by ping eviction."""
        if self.sm.state is not S.FULL:
            return
        req = self.new_request("disconnect", {"target": self.target}, target=NODE_TARGET)
        try:
            conn = await self.client.connection(self.sm.nid)
            await self.faults.call(conn, req, timeout=self.client.connect_timeout)
        except ShoalError as exc:
            log.debug("%s: disconnect: %s", self.target, exc)

    def disconnect(self) -> None:
        """Drop to DISCONN (an admin's recovery request); the next call reconnects."""
        if self.sm.state is S.FULL:
            self.sm.disconnect(time.time())
            self.notify_changed()
