"""An import's recovery: the one task per import that brings it back to FULL.

The task connects round robin over the failover NIDs (backing off after a whole round
failed, or briefly after EBUSY from a server recovering without us), then replays every
request the server had not committed (invariant 1), in (transno, xid) order, one at a time,
then sends the final ping ("replay_done") that the server answers when its recovery window
closes. An eviction answered on the way is handed back to the import (Import.evict), which
drops the replay list; the task then reconnects as a new client.

client/imports.py owns the import and starts, restarts and cancels this task through
`Recovery`; protocol/import_state.py decides each step from the events reported here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from shoal.errors import Evicted, NoDevice, NotConnected, TimedOut
from shoal.protocol import messages as m
from shoal.protocol.import_state import (
    CONNECTED_STATES,
    Event,
    ImportState,
    ImportStateError,
    ReplayEntry,
)
from shoal.protocol.ldlm import REPLAY_OP
from shoal.protocol.recovery_timeouts import replay_timeout

if TYPE_CHECKING:
    from shoal.client.session import RecoveringImport
    from shoal.net.client import RpcConnection

# the import's own log: its recovery is part of what it reports
log = logging.getLogger("shoal.client.imports")

NODE_TARGET = "@node"
BACKOFF_MIN = 0.05  # after a whole round of NIDs failed; doubles up to BACKOFF_MAX
BACKOFF_MAX = 1.0
BUSY_BACKOFF = 0.1  # EBUSY: the target is recovering without us; its window is ~a second
REPLAY_WINDOW = 16  # replays in flight per import
EVICTED_STATUSES = ("ESHUTDOWN", "EOVERFLOW")  # EOVERFLOW: a replay failed its VBR check

S = ImportState

__all__ = ["Recovery", "NODE_TARGET", "EVICTED_STATUSES"]


class Recovery:
    """One import's recovery task: at most one runs at a time."""

    def __init__(self, imp: RecoveringImport) -> None:
        self.imp = imp
        self.task: asyncio.Task[None] | None = None
        self.failures = 0  # recoveries that gave up: calls waiting on them fail with EIO
        # the hard limit of the window being recovered into (time.monotonic()), if told
        self.window_end: float | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        if not self.running and self.imp.sm.state not in (S.FULL, S.CLOSED):
            self.task = asyncio.create_task(self.run(), name=f"recover-{self.imp.target}")

    def restart(self) -> None:
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.task = None
        self.start()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    def _give_up(self) -> None:
        self.failures += 1
        # extent locks held over into this recovery will not be replayed: what they cover
        # goes, and a write waiting for them goes on (to fail with the import) rather
        # than wait for ever
        self.imp.data_locks_replayed(None)
        self.imp.notify_changed()

    def rpc_timeout(self) -> float:
        """How long a replay or the final ping waits for its reply before the import
        reconnects and sends it again: AT's timeout, fitted into the window so the resend
        lands inside it (protocol/recovery_timeouts.py). While the server holds the request
        its early replies keep it alive; a reply that was sent and lost is noticed here."""
        return replay_timeout(self.imp.attempt_timeout(), time.monotonic(), self.window_end)

    # -- the task ------------------------------------------------------------------------
    async def run(self) -> None:
        imp = self.imp
        sm = imp.sm
        deadline = time.monotonic() + imp.client.recovery_timeout
        delay = BACKOFF_MIN
        try:
            while sm.state not in (S.FULL, S.CLOSED):
                if sm.state in CONNECTED_STATES:
                    sm.disconnect(time.time())  # left half-way by an abandoned attempt
                nid = sm.connect_start(time.time())
                imp.notify_changed()
                outcome = await self._connect_once(nid)
                if outcome == "done":
                    return
                if time.monotonic() > deadline:
                    log.warning("%s: no server answered for %.0fs (tried %s)", imp.target,
                                imp.client.recovery_timeout, ", ".join(imp.nids))
                    self._give_up()
                    return
                if outcome == "busy":
                    await asyncio.sleep(BUSY_BACKOFF)
                elif outcome == "backoff":
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
        except ImportStateError:
            log.exception("%s: import state machine refused an event", imp.target)
            self._give_up()

    async def _connect_once(self, nid: str) -> Literal["done", "next", "busy", "backoff"]:
        """One connect attempt and, if accepted, the replay that follows it."""
        imp = self.imp
        req = imp.new_request("connect", imp.sm.connect_args(), target=NODE_TARGET)
        try:
            conn = await imp.client.connection(nid)
            reply = await imp.faults.call(conn, req, timeout=imp.client.connect_timeout)
        except (NotConnected, TimedOut) as exc:
            log.debug("%s: connect via %s failed: %s", imp.target, nid, exc)
            return self._connect_failed()
        if reply.status == "EBUSY":
            log.debug("%s: %s is recovering without us: %s", imp.target, nid, reply.message)
            imp.sm.connect_failed(time.time(), retry_same=True)
            imp.notify_changed()
            return "busy"
        if reply.status in EVICTED_STATUSES:
            imp.evict(f"connect via {nid} answered {reply.status}", from_recovery=True)
            return "next"
        if reply.status is not None:
            log.debug("%s: connect via %s: %s %s", imp.target, nid, reply.status,
                      reply.message)
            return self._connect_failed()
        imp.client.node_said(nid, reply.data)
        if imp.sm.forgotten(reply.data.get("reconnect")):
            imp.evict(f"{nid} has no record of this client", from_recovery=True)
            return "next"
        try:
            await self._connected(conn, nid, reply.data)
        except Evicted as exc:
            imp.evict(str(exc), from_recovery=True)
            return "next"
        except (NotConnected, TimedOut, NoDevice) as exc:
            log.info("%s: recovery via %s interrupted: %s", imp.target, nid, exc)
            fresh = imp.sm.can(Event.DISCONNECT) and imp.sm.disconnect(time.time())
            imp.notify_changed()
            return "next" if fresh else "backoff"
        return "done"

    def _connect_failed(self) -> Literal["next", "backoff"]:
        fresh = self.imp.sm.connect_failed(time.time())
        self.imp.notify_changed()
        return "next" if fresh else "backoff"

    async def _connected(self, conn: RpcConnection, nid: str, info: dict[str, Any]) -> None:
        """The server took the connect: replay if it needs it, then go FULL."""
        imp = self.imp
        sm = imp.sm
        last_committed = int(info.get("last_committed", 0))
        if last_committed < sm.last_committed:
            log.warning("%s: server went back in time (last_committed %#x < %#x seen)",
                        imp.target, last_committed, sm.last_committed)
        window_s = info.get("window_s")
        self.window_end = (time.monotonic() + float(window_s)
                           if isinstance(window_s, (int, float)) else None)
        recovering = bool(info.get("recovering", False))
        if recovering:  # a new server (a failover, a restart): it has no locks yet
            imp.locks_held_over()
        else:
            imp.locks_lost()  # the server dropped them as it took the connect
        before = sm.uncommitted_bytes
        state = sm.connected(time.time(), epoch=int(info.get("epoch", 0)),
                             last_committed=last_committed,
                             recovering=recovering,
                             node=str(info.get("node", "")))
        imp.account_uncommitted(before)
        imp.notify_changed()
        if state is S.REPLAY:
            replays = await self._replay(conn)
            sm.replay_done(time.time())
            await self._replay_data_locks(conn)
            sm.locks_done(time.time())
            imp.notify_changed()
            await self._final_ping(conn)
            sm.recovery_done(time.time())
            log.info("%s: recovered via %s (epoch %d): %d requests replayed", imp.target,
                     nid, sm.epoch, replays)
        if sm.state is S.RECOVER:
            imp.notify_changed()
            await asyncio.sleep(0)  # let the resends queue their frames before new work
            sm.resend_done(time.time())
        imp.notify_changed()
        # the locks after the window: every replay and held request is in what the new
        # server checks them against (node/locks.py)
        imp.replay_locks()

    async def _replay(self, conn: RpcConnection) -> int:
        """Replay the list in (transno, xid) order, REPLAY_WINDOW requests in flight: the
        server runs every client's replays in transno order whatever their arrival, and one
        at a time (as Lustre sends them) left it waiting for a round trip of a busy client
        between two of that client's replays. Replies are taken in order."""
        imp = self.imp
        count = 0
        inflight: deque[tuple[ReplayEntry, asyncio.Task[m.Reply]]] = deque()
        sent: tuple[int, int] | None = None
        try:
            while True:
                for entry in imp.sm.next_replays(REPLAY_WINDOW - len(inflight), after=sent):
                    inflight.append((entry, asyncio.create_task(self._send_replay(conn,
                                                                                  entry))))
                    sent = (entry.transno, entry.xid)
                if not inflight:
                    return count
                entry, task = inflight.popleft()
                reply = await task
                req = entry.request
                self._check_reply(req, reply)
                if reply.status is not None:
                    log.warning("%s: replay of %s xid %d (transno %#x) failed: %s %s",
                                imp.target, req.op, req.xid, entry.transno, reply.status,
                                reply.message)
                imp.sm.replayed(entry)
                imp.observe_committed(reply.last_committed)
                count += 1
        finally:
            for _entry, task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*(t for _e, t in inflight), return_exceptions=True)

    async def _send_replay(self, conn: RpcConnection, entry: ReplayEntry) -> m.Reply:
        req = entry.request
        req.flags = (req.flags | m.FLAG_REPLAY) & ~m.FLAG_RESEND
        req.transno = entry.transno
        req.pre_versions = list(entry.pre_versions)
        return await self.imp.faults.call(conn, req, timeout=self.rpc_timeout())

    async def _replay_data_locks(self, conn: RpcConnection) -> None:
        """An OST's extent locks, inside the window (the MDT's go after it, checked against
        what changed: Import.replay_locks): a conflicting request of anyone else's after
        the window calls them back, so what they cover (writes buffered before the
        failover) is landed first."""
        imp = self.imp
        wanted = imp.data_locks_to_replay()
        if wanted is None:
            return
        req = imp.new_request(REPLAY_OP, {"locks": wanted})
        reply = await imp.faults.call(conn, req, timeout=self.rpc_timeout())
        self._check_reply(req, reply)
        if reply.status is not None:
            log.warning("%s: lock replay: %s %s", imp.target, reply.status, reply.message)
        imp.data_locks_replayed(reply.data.get("granted") if reply.status is None else None)

    async def _final_ping(self, conn: RpcConnection) -> None:
        imp = self.imp
        req = imp.new_request("replay_done", {})
        reply = await imp.faults.call(conn, req, timeout=self.rpc_timeout())
        self._check_reply(req, reply)
        if reply.status not in (None, "EOPNOTSUPP"):  # EOPNOTSUPP: a server with no window
            log.warning("%s: replay_done: %s %s", imp.target, reply.status, reply.message)
        imp.observe_committed(reply.last_committed)

    def _check_reply(self, req: m.Request, reply: m.Reply) -> None:
        if reply.status in EVICTED_STATUSES:
            raise Evicted(f"{self.imp.target}: {req.op} xid {req.xid} in recovery answered "
                          f"{reply.status}: {reply.message}")
        if reply.status == "ENODEV":
            raise NoDevice(reply.message)
