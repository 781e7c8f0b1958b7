"""One target's recovery window on the event loop: runs protocol/recovery.py against a
TargetService.

The machine decides; this module carries its actions out. Replays are registered here,
reported to the machine, and run through svc.handle() when it releases them (one at a time,
synchronously, so nothing runs between a release and its report). Every other request of a
reconnected client is held until the window closes and then served in arrival order; the
final pings ("replay_done") are answered at the close. Timers are loop.call_at handles that
feed tick(); the machine's clock is loop.time().

After the window the object stays as the target's export gate: a client evicted here gets
ESHUTDOWN until it connects with flags ["initial"], a late replay that cannot be answered from
reply data evicts its client (Lustre: "Invalid replay without recovery"), and "replay_done"
is answered at once. Everything else goes straight to the service (`wants()` says which).

Wiring in node/server.py (NodeServer):

    # start_target(), after `await svc.start()` (the window's clock starts here):
    rec = TargetRecovery(svc, ir=True, on_evict=self._evicted)  # timeouts: defaults
    self.recovery[name] = rec            # dict[str, TargetRecovery], kept while served
    # stop_target / drop_target: self.recovery.pop(name).close() before svc.stop()

    # _handle(conn, req), after finding svc:
    rec = self.recovery.get(req.target)
    if rec is not None and rec.wants(conn.client_uuid, req):
        return await rec.submit(conn.client_uuid, req,
                                early=lambda extra: conn.send(m.EarlyReply(req.xid, extra)))
    # ... the existing svc.handle() path

    # "@node" op "connect" (needs conn.client_uuid passed down to _node_data):
    svc = ...  # ENODEV as now
    rec = self.recovery.get(name)
    info = rec.connect(conn.client_uuid, args.get("flags", [])) if rec else {...as now}
    await svc.client_connected(conn.client_uuid)  # its last_rcvd slot, on disk (not MGT)
    return {**info, "node": self.node}         # Busy / Evicted raised -> EBUSY / ESHUTDOWN
    # "@node" op "disconnect": rec.disconnect(uuid) (a client closing: its export goes)

    # eviction hook (runs after the window's state is settled): drop the client's open
    # handles (MDT; its orphans' objects go into the destroy log that node/osp.py sends to
    # the OSTs), tell the client. Its last_rcvd slot is already freed (svc.forget_client).
    def _evicted(self, ev: Eviction) -> None:
        svc = self.services.get(ev.target)
        if isinstance(svc, MDT) and svc.drop_client(ev.client):
            self.osp.kick()
        if ev.notify:
            for conn in self.rpc.connections:       # the client's connections to this node
                if conn.client_uuid == ev.client:
                    conn.send(m.Notice("evicted", {"target": ev.target, "reason": ev.reason}))

    # MGS says a client is dead (IR): rec.client_dead(uuid); admin: rec.abort("...")
    # get_param: f"{obd_name(svc)}.recovery_status" -> rec.status_text()
    # status(): "state": "RECOVERING" while rec.recovering (store key targets/<t>/state too)
    # health: held requests wait by design; do not count them as stuck while recovering
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import Evicted, IOFailure, NotConnected, ShoalError
from shoal.protocol import messages as m
from shoal.protocol.recovery import (
    Accept,
    Action,
    Complete,
    Evict,
    Execute,
    Reconstruct,
    RecoveryProtocolError,
    Refuse,
    ServerRecovery,
)
from shoal.protocol.recovery_status import RecoveryStatus
from shoal.protocol.recovery_timeouts import (
    EARLY_PERIOD,
    HARD_TIMEOUT,
    IR_FACTOR,
    SOFT_TIMEOUT,
    window_deadline,
)
from shoal.target.base import OpContext, TargetService
from shoal.target.evictions import Eviction

log = logging.getLogger(__name__)

REPLAY_DONE_OP = "replay_done"
REFUSALS_LOGGED_EVERY = 1.0  # seconds

_Served = tuple[m.Reply, OpContext | None]


@dataclass(slots=True)
class HeldRequest:
    """An ordinary request that waits for the window to close."""

    client: str
    req: m.Request
    since: float  # loop.time() when it arrived
    future: asyncio.Future[_Served | None]  # None: served by the submitter's own `serve`
    locked: bool = False


@dataclass(slots=True)
class _Replay:
    req: m.Request
    waiters: list[asyncio.Future[m.Reply]] = field(default_factory=list)


def _error(req: m.Request, exc: ShoalError) -> m.Reply:
    return m.Reply(req.xid, exc.errno_name, str(exc))


class TargetRecovery:
    """The recovery window and export gate of one target being served."""

    def __init__(
        self,
        svc: TargetService,
        *,
        soft_timeout: float = SOFT_TIMEOUT,
        hard_timeout: float = HARD_TIMEOUT,
        ir: bool = True,
        ir_factor: int = IR_FACTOR,
        reach_s: float = 0.0,
        on_evict: Callable[[Eviction], None] | None = None,
    ) -> None:
        self.svc = svc
        self.on_evict = on_evict
        self._loop = asyncio.get_running_loop()
        self.machine = ServerRecovery(
            svc.name, svc.boot_clients, svc.last_committed, self._loop.time(),
            wall_start=time.time(), soft=soft_timeout, hard=hard_timeout, ir=ir,
            ir_factor=ir_factor, reach_s=reach_s)
        self._replays: dict[tuple[str, int], _Replay] = {}
        self._held: list[HeldRequest] = []
        self._done_waiters: dict[str, list[tuple[m.Request, asyncio.Future[m.Reply]]]] = {}
        self._complete = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        # held requests kept alive by early replies (protocol/recovery_timeouts.py)
        self._early: dict[asyncio.Future[Any], Callable[[float], None]] = {}
        self._early_timer: asyncio.TimerHandle | None = None
        self._hooks: list[Eviction] = []
        self._refusal_logged_at = -REFUSALS_LOGGED_EVERY
        self._refusals_quiet = 0
        if self.machine.recovering:
            w = self.machine
            log.info("%s: recovery window open for %d known clients (soft %.1fs, hard %.1fs%s)",
                     svc.name, w.max_clients, w.soft_window, w.hard_deadline - w.started,
                     "" if ir else ", no IR: long enough for idle clients to notice")
            self._arm()
        else:
            self._complete.set()

    # -- what the node reads -------------------------------------------------------------
    @property
    def recovering(self) -> bool:
        return self.machine.recovering

    def awaited(self) -> list[str]:
        """The known clients that have not reconnected (yet)."""
        return self.machine.awaited()

    def wants(self, client: str, req: m.Request) -> bool:
        """Whether the node must pass this request to submit() rather than the service."""
        return (self.machine.recovering or req.op == REPLAY_DONE_OP
                or bool(req.flags & m.FLAG_REPLAY) or client in self.machine.evicted)

    def replaying(self, client: str) -> bool:
        """Whether the window is open and `client` has reconnected in it (not evicted):
        what it held over the failover may be granted again."""
        return self.machine.recovering and self.machine.is_connected(client)

    def held(self) -> list[HeldRequest]:
        """Requests waiting for the window, oldest first."""
        return [h for h in self._held if not h.future.done()]

    def status_text(self) -> str:
        return self.machine.status_text(self._loop.time())

    def status(self) -> RecoveryStatus:
        return self.machine.status(self._loop.time())

    async def wait_complete(self) -> None:
        await self._complete.wait()

    # -- events from the node ------------------------------------------------------------
    def connect(self, client: str, flags: Iterable[str] = ()) -> dict[str, object]:
        """The "@node connect" op for this target; Busy (EBUSY) or Evicted (ESHUTDOWN)."""
        initial = "initial" in flags
        actions = self.machine.client_connected(client, self._loop.time(), initial=initial)
        answer = [a for a in actions if isinstance(a, (Accept, Refuse))][0]
        self._run([a for a in actions if not isinstance(a, (Accept, Refuse))])
        if isinstance(answer, Refuse):
            self._log_refusal(answer.message)
            raise answer.error(answer.message)
        if answer.fresh and client in self.svc.known_clients:
            # the same uuid starting over (a restarted client): its old export is void
            self.svc.forget_client(client)
            self._hooks.append(Eviction(client, self.svc.name, "connected as a new client",
                                        False))
            self._fire_hooks()
        info: dict[str, object] = {"epoch": self.svc.epoch,
                                   "last_committed": self.svc.last_committed,
                                   "recovering": answer.recovering}
        if answer.recovering:
            # what the client's replay timeouts must fit in (it is evicted at the hard limit)
            info["window_s"] = window_deadline(self.machine.hard_deadline, self._loop.time())
        return info

    def _log_refusal(self, message: str) -> None:
        """At most one refusal a REFUSALS_LOGGED_EVERY s in the log: new clients retry every
        tenth of a second while a window lasts, and 200 of them wrote 6,000 lines a second."""
        now = self._loop.time()
        if now - self._refusal_logged_at < REFUSALS_LOGGED_EVERY:
            self._refusals_quiet += 1
            return
        more = (f" (and {self._refusals_quiet} more refused since)"
                if self._refusals_quiet else "")
        log.info("%s%s", message, more)
        self._refusal_logged_at, self._refusals_quiet = now, 0

    def client_dead(self, client: str) -> None:
        """The MGS reports this client dead (IR): the window stops waiting for it."""
        self._run(self.machine.client_dead(client))

    def abort(self, reason: str = "recovery aborted by the administrator") -> None:
        """End the window now (lctl abort_recovery): unfinished clients are evicted."""
        self._run(self.machine.abort(self._loop.time(), reason))

    def evict(self, client: str, reason: str) -> None:
        """Evict one client (admin, or the node's own reasons)."""
        self._run(self.machine.evict(client, reason))

    def disconnect(self, client: str) -> None:
        """The client said goodbye: drop its export as an eviction would, without telling
        it. After the window it may come back as a new client at once; during the window,
        like any new client, once the window is over."""
        if client not in self.svc.known_clients and not self.machine.recovering:
            return
        self._run(self.machine.evict(client, "disconnected", "disconnect"))
        if not self.machine.recovering:
            self.machine.evicted.discard(client)

    def close(self) -> None:
        """The target stops: cancel the timer and fail whatever still waits."""
        if self._timer is not None:
            self._timer.cancel()
        if self._early_timer is not None:
            self._early_timer.cancel()
            self._early_timer = None
        self._early.clear()
        gone = NotConnected(f"{self.svc.name} stopped")
        for h in self._held:
            if not h.future.done():
                h.future.set_result((_error(h.req, gone), None))
        for r in self._replays.values():
            self._answer(r.waiters, _error(r.req, gone))
        for waiters in self._done_waiters.values():
            for req, fut in waiters:
                self._answer([fut], _error(req, gone))
        self._held.clear()
        self._replays.clear()
        self._done_waiters.clear()

    async def submit(self, client: str, req: m.Request, *,
                     early: Callable[[float], None] | None = None,
                     serve: Callable[[], Awaitable[m.Reply]] | None = None) -> m.Reply:
        """Serve one request through the window; `early(extra)` is called for a request
        that has to wait, so the node can send an EarlyReply stretching its deadline. An
        ordinary request held for the window is served by `serve()` when it closes, if
        given (an OST's, under the extent locks replayed in the window), else here."""
        if client in self.machine.evicted:
            return _error(req, Evicted(f"{self.svc.name}: client {client} was evicted; "
                                       "reconnect as a new client"))
        if req.op == REPLAY_DONE_OP:
            return await self._replay_done(client, req, early)
        if req.flags & m.FLAG_REPLAY:
            if self.machine.recovering:
                return await self._replay(client, req, early)
            return self._late_replay(client, req)
        if self.machine.recovering:
            if not self.machine.is_connected(client):
                return _error(req, NotConnected(
                    f"{self.svc.name} is in recovery and {client} has not connected"))
            fut: asyncio.Future[_Served | None] = self._loop.create_future()
            self._held.append(HeldRequest(client, req, self._loop.time(), fut,
                                          locked=serve is not None))
            self._stretch(fut, early)
            served = await fut
            if served is None:
                assert serve is not None
                return await serve()
            reply, ctx = served
        else:
            reply, ctx = self.svc.handle(client, req)
        if ctx is not None and ctx.force_commit:
            return await self.svc.forced_commit(req, reply)
        return reply

    # -- the request kinds ---------------------------------------------------------------
    async def _replay(self, client: str, req: m.Request,
                      early: Callable[[float], None] | None) -> m.Reply:
        fut: asyncio.Future[m.Reply] = self._loop.create_future()
        key = (client, req.transno)
        pending = self._replays.get(key)
        if pending is not None:
            pending.waiters.append(fut)  # resent while queued: one run answers both
        else:
            self._replays[key] = _Replay(req, [fut])
            try:
                actions = self.machine.replay_received(client, req.transno)
            except RecoveryProtocolError as exc:
                del self._replays[key]
                return _error(req, exc)
            self._run(actions)
        if not fut.done():
            self._stretch(fut, early)
        return await fut

    async def _replay_done(self, client: str, req: m.Request,
                           early: Callable[[float], None] | None) -> m.Reply:
        if not self.machine.recovering:
            return m.Reply(req.xid, data={"recovering": False},
                           last_committed=self.svc.last_committed)
        fut: asyncio.Future[m.Reply] = self._loop.create_future()
        self._done_waiters.setdefault(client, []).append((req, fut))
        try:
            actions = self.machine.replay_done(client)
        except RecoveryProtocolError as exc:
            self._done_waiters[client].remove((req, fut))
            return _error(req, exc)
        self._run(actions)
        if not fut.done():
            self._stretch(fut, early)
        return await fut

    def _late_replay(self, client: str, req: m.Request) -> m.Reply:
        if self.svc.can_answer_replay(client, req):
            return self.svc.handle(client, req)[0]
        reason = f"invalid replay of transno {req.transno:#x} without recovery"
        self._run(self.machine.evict(client, reason))
        return _error(req, Evicted(f"{self.svc.name}: {reason}: client {client} evicted"))

    # -- carrying out actions ------------------------------------------------------------
    def _run(self, actions: list[Action]) -> None:
        work: deque[Action] = deque(actions)
        while work:
            a = work.popleft()
            if isinstance(a, Execute):
                work.extend(self._execute(a))
            elif isinstance(a, Reconstruct):
                work.extend(self._reconstruct(a))
            elif isinstance(a, Evict):
                work.extend(self._evicted(a))
            elif isinstance(a, Complete):
                self._completed(a)
        self._arm()
        self._fire_hooks()

    def _execute(self, a: Execute) -> list[Action]:
        r = self._replays.pop((a.client, a.transno))
        if a.gap:
            log.info("%s: replaying %#x of %s across a gap: its versions decide",
                     self.svc.name, a.transno, a.client)
        try:
            reply, _ = self.svc.handle(a.client, r.req)
        except (sqlite3.Error, OSError) as exc:
            # the device failed under the replay: its client cannot be recovered, the
            # window must not stall waiting for a report
            reply = _error(r.req, IOFailure(f"replay of transno {a.transno:#x}: {exc}"))
        self._answer(r.waiters, reply)
        ok = reply.status is None
        reason = "" if ok else (f"replay of {r.req.op} (transno {a.transno:#x}) failed: "
                                f"{reply.status} {reply.message}")
        return self.machine.replay_finished(a.client, a.transno, ok=ok, reason=reason)

    def _reconstruct(self, a: Reconstruct) -> list[Action]:
        r = self._replays.pop((a.client, a.transno))
        reply, _ = self.svc.handle(a.client, r.req)
        self._answer(r.waiters, reply)
        if reply.status is None:
            return []
        # neither in the reply data nor provably committed: the client cannot go on
        return self.machine.evict(a.client,
                                  f"replay {a.transno:#x} cannot be answered: {reply.message}")

    def _evicted(self, a: Evict) -> list[Action]:
        log.log(logging.INFO if a.cause in ("disconnect", "new_export") else logging.WARNING,
                "%s: evicting %s: %s", self.svc.name, a.client, a.reason)
        err = Evicted(f"{self.svc.name}: client {a.client} evicted: {a.reason}")
        for key in [k for k in self._replays if k[0] == a.client]:
            r = self._replays.pop(key)
            self._answer(r.waiters, _error(r.req, err))
        for req, fut in self._done_waiters.pop(a.client, []):
            self._answer([fut], _error(req, err))
        for h in self._held:
            if h.client == a.client and not h.future.done():
                h.future.set_result((_error(h.req, err), None))
        self.svc.forget_client(a.client)
        self._hooks.append(Eviction(a.client, self.svc.name, a.reason,
                                    a.cause not in ("dead", "new_export", "disconnect"),
                                    a.cause))
        return []

    def _completed(self, a: Complete) -> None:
        now = self._loop.time()
        self.machine.finish_time(now)
        took = int(now - self.machine.started)
        log.info("%s: Recovery over after %d:%02d, of %d clients %d recovered and %d were "
                 "evicted%s; %d replays", self.svc.name, took // 60, took % 60,
                 self.machine.max_clients, self.machine.max_clients - a.evicted, a.evicted,
                 " (window cut short)" if a.aborted else "", a.replayed)
        done = {"recovering": False}
        for waiters in self._done_waiters.values():
            for req, fut in waiters:
                self._answer([fut], m.Reply(req.xid, data=done,
                                            last_committed=self.svc.last_committed))
        self._done_waiters.clear()
        held, self._held = self._held, []
        # in arrival order, with no await in between: nothing new overtakes them
        for h in held:
            if h.future.done():
                continue  # its caller went away (connection lost); a resend comes anew
            if h.locked:
                h.future.set_result(None)  # its submitter serves it, in this order
                continue
            try:
                h.future.set_result(self.svc.handle(h.client, h.req))
            except Exception as exc:  # noqa: BLE001 - handed to the request's own caller
                h.future.set_exception(exc)
        self._complete.set()

    @staticmethod
    def _answer(waiters: list[asyncio.Future[m.Reply]], reply: m.Reply) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(reply)

    def _fire_hooks(self) -> None:
        # after the state is settled, so a hook that fails leaves the window consistent
        hooks, self._hooks = self._hooks, []
        if self.on_evict is not None:
            for ev in hooks:
                self.on_evict(ev)

    # -- time ----------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.machine.next_deadline()
        if self._timer is not None:
            if self._timer.when() == deadline:
                return  # most events move no deadline: keep the handle
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # the loop may run a timer up to its clock resolution early: the deadline has come
        when = self._timer.when() if self._timer is not None else 0.0
        self._timer = None
        self._run(self.machine.tick(max(self._loop.time(), when)))

    def _stretch(self, fut: asyncio.Future[Any], early: Callable[[float], None] | None) -> None:
        """Keep a held request alive: an early reply now and one every EARLY_PERIOD while it
        waits, each worth EARLY_PERIOD. Its client thus keeps its whole timeout ahead of it
        while held, and notices a reply that was sent and lost within that timeout, not at
        the window's end (protocol/recovery_timeouts.py)."""
        if early is None or not self.machine.recovering or fut.done():
            return
        early(EARLY_PERIOD)
        self._early[fut] = early
        fut.add_done_callback(self._early_done)
        if self._early_timer is None:
            self._early_timer = self._loop.call_later(EARLY_PERIOD, self._on_early)

    def _early_done(self, fut: asyncio.Future[Any]) -> None:
        self._early.pop(fut, None)

    def _on_early(self) -> None:
        self._early_timer = None
        if not self.machine.recovering:
            self._early.clear()
            return
        for fut, early in list(self._early.items()):
            if not fut.done():
                early(EARLY_PERIOD)
        if self._early:
            self._early_timer = self._loop.call_later(EARLY_PERIOD, self._on_early)
