"""The `shoal node run` process: hosts the targets this node serves and answers their RPCs.

Requests name their target; the node hands each to the service, and for a request that asked
for durability (sync, fsync) waits for the commit before replying. Requests to the node itself
go to the pseudo-target "@node" (ping, status, connect, get_param, set_param).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from shoal.config.settings import value as setting
from shoal.errors import InvalidArgument, NoDevice, ShoalError
from shoal.net.loop import task_stacks
from shoal.net.metrics_http import MetricsServer
from shoal.net.server import ConnectionLimits, RpcServer, ServerConnection
from shoal.net.tls import rpc_tls
from shoal.node import params
from shoal.node.early_replies import keep_alive
from shoal.node.evictor import NodeEvictor
from shoal.node.faults import NodeFaults
from shoal.node.health import HealthMonitor
from shoal.node.host import HostSpec
from shoal.node.locks import NodeLocks
from shoal.node.metrics import NodeCollector, metrics_port
from shoal.node.osp import ObjectDestroyer
from shoal.node.params import AT, NodeParams
from shoal.node.peers import PeerCalls
from shoal.node.quota_slave import QuotaSlaves
from shoal.node.services import make_service, service_dir
from shoal.protocol import messages as m
from shoal.protocol.adaptive import AdaptiveEstimate
from shoal.protocol.ldlm import CANCEL_OP, ENQUEUE_OP, REPLAY_OP
from shoal.protocol.ping_evict import DEFAULT_TIMEOUT as PING_EVICT_TIMEOUT
from shoal.protocol.quota import QUOTA_NOTIFY
from shoal.protocol.recovery_status import RecoveryStatus
from shoal.protocol.recovery_timeouts import reach
from shoal.target import lun
from shoal.target.base import TargetService
from shoal.target.evictions import BENIGN_EVICTIONS, Eviction
from shoal.target.mdt import MDT
from shoal.target.mgt import MGT
from shoal.target.ost import OST
from shoal.target.ost_deferred import DeferredRead
from shoal.target.recovery import TargetRecovery

log = logging.getLogger(__name__)

NODE_TARGET = "@node"


class NodeServer:
    def __init__(self, spec: HostSpec, key: bytes, state_dir: Path) -> None:
        """`spec`: what this node serves; `state_dir`: its own directory (a local cluster's
        directory, a daemon's /var/lib/shoal), where local fencing finds pid files."""
        self.cluster_dir = Path(state_dir)
        self.mounts = self.cluster_dir / "targets"  # where this node mounts its LUNs
        self.spec = spec
        self.node = node = spec.node
        self.address = spec.address
        self.key = key
        self.services: dict[str, TargetService] = {}
        self.recovery: dict[str, TargetRecovery] = {}
        self.service_at: dict[str, AdaptiveEstimate] = {}  # per target: its service times
        # fail_loc sits between the RPC layer and _handle, where a network would lose things
        self.faults = NodeFaults(node, self.services)
        self.tls = rpc_tls(spec.settings, serve=True)  # ConfigError names a missing file
        self.rpc = RpcServer(self.key, self.faults.wrap(self._handle), now=self._handle_now,
                             limits=ConnectionLimits.from_settings(spec.settings),
                             tls=self.tls.server if self.tls is not None else None)
        self.health = HealthMonitor(self.services)
        self.evictor = NodeEvictor(self.services, self.recovery)
        self.evictor.set_timeout(self.spec.settings.get(
            "PING_EVICT_TIMEOUT", PING_EVICT_TIMEOUT), "PING_EVICT_TIMEOUT")
        self.peers = PeerCalls(spec, key, f"osp-{node}")
        self.osp = ObjectDestroyer(self.peers, self.services, self.recovery)
        self.quota = QuotaSlaves(PeerCalls(spec, key, f"qsd-{node}"), self.services)
        self.locks = NodeLocks(self._notify, self._evict_holder,
                               float(setting(spec.settings, "LDLM_TIMEOUT")))
        self.started_at = time.time()
        self.params = NodeParams(node, self.services, self.recovery, self.service_at,
                                 self.faults, self.evictor, self.health, self.rpc.stats)
        self.collector = NodeCollector(self)  # the agent adds its own families to it
        self.metrics = MetricsServer(self.collector)
        self.stats: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._next_id = 0
        # The failover agent plugs in here (layers point down: the node knows no agent).
        # gate(target) says whether this node may serve the target right now (lease held or
        # failsafe); node_ops are extra "@node" operations; status_extra adds to "status".
        self.gate: Callable[[str], bool] | None = None
        self.node_ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        self.status_extra: Callable[[], dict[str, Any]] | None = None
        # whether an IR notice now reaches every client (protocol/recovery_timeouts.ir_ready)
        self.ir_ready: Callable[[], bool] | None = None
        self.target_states: dict[str, str] = {}  # name -> UP | RECOVERING (set by the agent)
        self.on_evicted: list[Callable[[Eviction], None]] = []  # told of each eviction
        # told of each target opened here, before it serves (the agent: quota_limits.py)
        self.on_opened: list[Callable[[TargetService], Awaitable[None]]] = []

    # -- lifecycle -----------------------------------------------------------------------
    async def start_target(self, name: str) -> TargetService:
        if name in self.services:
            return self.services[name]
        t = self.spec.target(name)
        where = service_dir(t, self.node, self.mounts)
        if where != Path(t.devices[self.node]):
            # a LUN: mounted only now, after the fence and the MMP claim (agent/takeover.py)
            await asyncio.to_thread(lun.mount, Path(t.devices[self.node]), where)
        svc = make_service(self.spec, t, self.node, where)
        await asyncio.to_thread(svc.open)
        for hook in self.on_opened:
            await hook(svc)
        await svc.start()
        settings = self.spec.spec_of(t).settings
        # an IR notice reaches every client only through an MGS they all know (the agent
        # says whether the MGS has settled; a node without one assumes it has)
        ir = self.spec.ir(t) and (self.ir_ready is None or self.ir_ready())
        self.recovery[name] = TargetRecovery(
            svc, ir=ir, reach_s=reach(self.evictor.ping_interval),
            soft_timeout=float(setting(settings, "RECOVERY_SOFT")),
            hard_timeout=float(setting(settings, "RECOVERY_HARD")),
            on_evict=self._evicted)
        self.services[name] = svc
        if isinstance(svc, (MDT, OST)):
            self.locks.attach(svc)
        if isinstance(svc, OST):
            svc.quota.on_fall = self.quota.kick  # what deletes free goes back at once
            self.quota.kick()  # its grants and limits, from the master
        log.info("%s: started %s (epoch %d, last_committed %#x)", self.node, name, svc.epoch,
                 svc.last_committed)
        return svc

    def _detach(self, name: str) -> TargetService | None:
        """Take the target out of service here: no more requests, no recovery window."""
        self.target_states.pop(name, None)
        self.locks.detach(name)
        if (rec := self.recovery.pop(name, None)) is not None:
            rec.close()
        return self.services.pop(name, None)

    async def stop_target(self, name: str, *, commit: bool = True) -> None:
        svc = self._detach(name)
        if svc is not None:
            await svc.stop(commit=commit)
            await asyncio.to_thread(self._unmount, name, lazy=False)

    def drop_target(self, name: str) -> None:
        """Stop serving at once without touching the device again (superseded, self-fenced)."""
        svc = self._detach(name)
        if svc is not None:
            svc.abandon()
            self._unmount(name, lazy=True)  # nothing more is written through it

    def _unmount(self, name: str, *, lazy: bool) -> None:
        where = self.mounts / name
        try:
            lun.unmount(where, lazy=lazy)
        except NoDevice as exc:
            log.error("%s: %s", name, exc)

    @property
    def stopping(self) -> asyncio.Event:
        return self._stop

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("SIGUSR1: tasks\n%s",
                                                                     task_stacks()))

    async def serve(self) -> None:
        await self.rpc.start(self.address, self.spec.port)
        await self.metrics.start(self.address, metrics_port(
            self.spec.port, int(setting(self.spec.settings, "METRICS_PORT"))))

    async def close_serving(self) -> None:
        """No more requests, nor scrapes."""
        await self.metrics.close()
        await self.rpc.close()

    # -- what the metrics read (node/metrics.py) ----------------------------------------------
    def recovery_status(self, target: str) -> RecoveryStatus | None:
        rec = self.recovery.get(target)
        return rec.status() if rec is not None else None

    def loop_lag(self) -> float:
        return self.health.loop_lag

    async def run(self) -> None:
        """Serve this node's primary targets until SIGTERM, without a failover agent."""
        self.install_signal_handlers()
        await self.serve()
        for t in self.spec.targets:
            if t.primary == self.node:
                await self.start_target(t.name)
        log.info("%s: serving %s on %s:%d", self.node, ", ".join(self.services) or "nothing",
                 self.address, self.spec.port)
        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(c) for c in self.background()]
            await self._stop.wait()
            for task in background:
                task.cancel()
        await self.close_serving()
        for name in list(self.services):
            await self.stop_target(name)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """What runs beside the RPC server for as long as the node does (with or without
        the failover agent): health checks, ping eviction, the MDT's object destroys."""
        return [self.health.run(), self.evictor.run(), self.osp.run(), self.quota.run()]

    # -- requests ------------------------------------------------------------------------
    async def _handle(self, conn: ServerConnection, req: m.Request) -> m.Reply | None:
        if req.target == NODE_TARGET:
            return await self._node_op(conn, req)
        reply = self._target_request(conn, req)
        if reply is None:
            # held until the window closes: waiting is by design, not a stuck service
            rec = self.recovery[req.target]
            svc = self.services.get(req.target)
            # an OST's held requests meet the extent locks replayed in the window
            locked = ((lambda: self._served(conn, svc, req)) if isinstance(svc, OST)
                      else None)
            return await rec.submit(conn.client_uuid, req, serve=locked,
                                    early=lambda extra: conn.send(m.EarlyReply(req.xid, extra)))
        return reply if isinstance(reply, m.Reply) else await reply

    def _handle_now(self, conn: ServerConnection,
                    req: m.Request) -> m.Reply | Awaitable[m.Reply] | None:
        """_handle without a task where nothing needs to wait, as for most requests: the
        reply, or an awaitable for the rest of it; None when _handle must take the request
        from the start (a node operation, a recovery window, a fail point)."""
        self.evictor.heard[conn.client_uuid] = time.monotonic()  # every request, pings too
        if req.target == NODE_TARGET or self.faults.point.active:
            return None
        return self._target_request(conn, req)

    def _target_request(self, conn: ServerConnection,
                        req: m.Request) -> m.Reply | Awaitable[m.Reply] | None:
        """A request to a target: its reply, an awaitable for it, or None if the target's
        recovery window must take it (TargetRecovery.wants only looks, so asking twice is
        harmless)."""
        svc = self.services.get(req.target)
        if svc is None or (self.gate is not None and not self.gate(req.target)):
            exc = NoDevice(f"{req.target} is not served by {self.node}")
            return m.Reply(req.xid, exc.errno_name, str(exc))
        rec = self.recovery.get(req.target)
        if rec is not None and isinstance(svc, OST) and req.op == REPLAY_OP:
            # extent locks held over a failover: granted inside the window, before anyone's
            # new request, or not at all; a late copy from a connection the client gave up
            # on would replace what its newer replay was granted
            if svc.clients.stale(conn.client_uuid, req.xid):
                return m.Reply(req.xid, "ESTALE", f"{req.target}: a late copy of a lock replay")
            return self.locks.replay_data(conn.client_uuid, svc, req,
                                          in_window=rec.replaying(conn.client_uuid))
        if (rec is not None and rec.recovering and isinstance(svc, OST)
                and req.op in (ENQUEUE_OP, CANCEL_OP) and not req.flags & m.FLAG_REPLAY):
            # no data lock before the window closes: the replays in it take none
            return self._after_window(conn, svc, rec, req)
        if rec is not None and rec.wants(conn.client_uuid, req):
            return None
        return self._serve(conn, svc, req)

    async def _after_window(self, conn: ServerConnection, svc: TargetService,
                            rec: TargetRecovery, req: m.Request) -> m.Reply:
        while rec.recovering and self.services.get(req.target) is svc:
            with contextlib.suppress(TimeoutError):  # a target stopped meanwhile: checked
                async with asyncio.timeout(1.0):
                    await rec.wait_complete()
        if self.services.get(req.target) is not svc:
            exc = NoDevice(f"{req.target} is not served by {self.node}")
            return m.Reply(req.xid, exc.errno_name, str(exc))
        return await self._served(conn, svc, req)

    async def _served(self, conn: ServerConnection, svc: TargetService,
                      req: m.Request) -> m.Reply:
        reply = self._serve(conn, svc, req)
        return reply if isinstance(reply, m.Reply) else await reply

    def _serve(self, conn: ServerConnection, svc: TargetService,
               req: m.Request) -> m.Reply | Awaitable[m.Reply]:
        if isinstance(svc, MDT):
            return self.locks.serve(conn.client_uuid, svc, req,
                                    lambda: self._serve_plain(conn, svc, req))
        if isinstance(svc, OST):
            if req.op == QUOTA_NOTIFY:
                return self.quota.notified(svc, req)
            if req.op == "quota_recount":
                return self.quota.recount(svc, req)

            def serve() -> m.Reply | Awaitable[m.Reply]:
                return self.locks.serve_data(conn.client_uuid, svc, req,
                                             lambda: self._serve_plain(conn, svc, req))

            wait = self.quota.before_write(svc, req)
            if wait is None:
                return serve()
            return self.quota.then(wait, conn, svc, req, serve)
        return self._serve_plain(conn, svc, req)

    def _serve_plain(self, conn: ServerConnection, svc: TargetService,
                     req: m.Request) -> m.Reply | Awaitable[m.Reply]:
        t0 = time.monotonic()
        reply, ctx = svc.handle(conn.client_uuid, req)
        force_commit = ctx is not None and ctx.force_commit
        if isinstance(reply.bulk, DeferredRead) or force_commit:
            return self._finish(conn, svc, req, reply, force_commit, t0)
        self._estimate(req, reply, t0)
        return reply

    async def _finish(self, conn: ServerConnection, svc: TargetService, req: m.Request,
                      reply: m.Reply, force_commit: bool, t0: float) -> m.Reply:
        """The waiting part of a request: a read from the disk, or a commit it forces.
        Only this part is in flight for the health check: the rest ran in one call on
        the loop, where the check cannot see it. Registered here, not by the caller, so
        a coroutine cancelled before it starts leaves no entry behind. Early replies keep
        the client from resending it while it waits (node/early_replies.py)."""
        self._next_id += 1
        rid = self._next_id
        self.health.inflight[rid] = (req.target, t0)
        stop = keep_alive(lambda extra: conn.send(m.EarlyReply(req.xid, extra)), t0, AT)
        try:
            if isinstance(reply.bulk, DeferredRead):
                try:
                    reply.bulk = await reply.bulk.resolve()
                except ShoalError as exc:  # as the same read done on the spot would answer
                    return m.Reply(req.xid, exc.errno_name, str(exc))
            if force_commit:
                reply = await svc.forced_commit(req, reply)
            self._estimate(req, reply, t0)
            return reply
        finally:
            stop()
            del self.health.inflight[rid]

    def _estimate(self, req: m.Request, reply: m.Reply, t0: float) -> None:
        # AT: the client learns how long this service takes, so its timeout can follow
        # (Lustre's pb_timeout / service estimate)
        est = self.service_at.get(req.target)
        if est is None:
            est = self.service_at[req.target] = AdaptiveEstimate(
                history=AT.at_history, floor=0.0, ceiling=AT.at_max)
        now = time.time()
        est.measured(now, time.monotonic() - t0)
        reply.service_estimate = est.estimate(now)

    async def _node_op(self, conn: ServerConnection, req: m.Request) -> m.Reply:
        try:
            extra = self.node_ops.get(req.op)
            if extra is not None:
                data = await extra(req.args)
            elif req.op == "connect":
                data = await self._connect(conn.client_uuid, req.args)
            elif req.op == "disconnect":
                data = self._disconnect(conn.client_uuid, req.args)
            else:
                data = self._node_data(req.op, req.args)
        except ShoalError as exc:
            return m.Reply(req.xid, exc.errno_name, str(exc))
        return m.Reply(req.xid, data=data)

    def _node_data(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "ping":
            return {"node": self.node, "ping_interval": self.evictor.ping_interval}
        if op == "status":
            return self.status()
        if op == "abort_recovery":
            return {"aborted": self.abort_recovery(str(args.get("target", "*")))}
        if op == "get_param":
            return {"params": params.match(self.param_tree(), str(args.get("pattern", "*")))}
        if op == "commit":
            return {}
        if op == "shutdown":
            # `shoal node stop` from any host: the same clean stop as a SIGTERM (the agent
            # hands every target over), asked for over the wire instead of by a pid file
            log.warning("%s: shutdown asked for by %s", self.node, args.get("by", "?"))
            asyncio.get_running_loop().call_soon(self._stop.set)
            return {"node": self.node, "stopping": True}
        if op == "set_param":
            return {"set": self.set_param(str(args.get("name", "")), str(args.get("value", "")))}
        raise InvalidArgument(f"unknown node operation {op!r}")

    async def _connect(self, client: str, args: dict[str, Any]) -> dict[str, Any]:
        name = str(args.get("target"))
        svc = self.services.get(name)
        if svc is None or (self.gate is not None and not self.gate(name)):
            raise NoDevice(f"{name} is not served by {self.node}")
        rec = self.recovery.get(name)
        flags = args.get("flags") or []
        if isinstance(flags, list) and "initial" in flags:
            svc.clients.restarted(client)  # a new process under this uuid: xids from 1
        # whether this target had a record of the client (Lustre's MSG_CONNECT_RECONNECT):
        # a client that had connected and finds none lost whatever it held here. The MGS
        # keeps nothing to lose
        known = isinstance(svc, MGT) or client in svc.clients.slots
        if rec is not None:
            info = rec.connect(client, flags if isinstance(flags, list) else [])
        else:
            info = {"epoch": svc.epoch, "last_committed": svc.last_committed,
                    "recovering": False}
        if not isinstance(svc, MGT):
            # the MGS keeps no client state to replay: a slot there would only give a
            # restarted MGS a window that every mounted client has to close
            await svc.client_connected(client)
        if not (isinstance(svc, OST) and rec is not None and rec.recovering):
            # it comes with an empty cache; inside an OST's window it comes to replay its
            # extent locks, and the replay confirms those it was granted already
            self.locks.client_gone(name, client)
        info["last_committed"] = svc.last_committed
        return {**info, "reconnect": known, "node": self.node, "ping_interval": self.evictor.ping_interval}

    def _disconnect(self, client: str, args: dict[str, Any]) -> dict[str, Any]:
        """A client going away (umount, Client.close): its slot and handles go now rather
        than after a ping eviction, and no recovery window waits for it."""
        name = str(args.get("target"))
        rec = self.recovery.get(name)
        if name not in self.services or rec is None:
            raise NoDevice(f"{name} is not served by {self.node}")
        rec.disconnect(client)
        return {}

    def abort_recovery(self, pattern: str) -> list[str]:
        done = []
        for name, rec in self.recovery.items():
            if rec.recovering and fnmatch.fnmatchcase(name, pattern):
                rec.abort()
                done.append(name)
        return done

    def client_dead(self, client: str) -> None:
        """The MGS reports a client gone: no recovery window waits for it any longer."""
        for rec in self.recovery.values():
            if rec.recovering:
                rec.client_dead(client)

    def _evicted(self, ev: Eviction) -> None:
        self.locks.client_gone(ev.target, ev.client)
        for hook in self.on_evicted:
            hook(ev)
        svc = self.services.get(ev.target)
        if isinstance(svc, MDT):
            orphans = svc.drop_client(ev.client)
            self.locks.changed_outside(svc)
            if orphans:
                log.warning("%s: %d orphan files of %s go: destroying their objects",
                            ev.target, orphans, ev.client)
                self.osp.kick()
        log.log(logging.INFO if ev.cause in BENIGN_EVICTIONS else logging.WARNING,
                "%s: evicted %s: %s", ev.target, ev.client, ev.reason)
        if ev.notify:
            self._notify(ev.client, m.Notice("evicted", {"target": ev.target,
                                                         "reason": ev.reason}))

    def _notify(self, client: str, notice: m.Notice) -> None:
        for conn in list(self.rpc.connections):
            if conn.client_uuid == client:
                conn.send(notice)

    def _evict_holder(self, target: str, client: str, reason: str) -> None:
        rec = self.recovery.get(target)
        if rec is not None:
            rec.evict(client, reason)

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "pid_start": self.started_at,
            "metrics": self.metrics.url,
            **(self.status_extra() if self.status_extra else {}),
            "targets": {
                name: {"state": self.target_states.get(name, "UP"), "epoch": svc.epoch, "last_committed": svc.last_committed,
                       "last_transno": svc.last_transno, "kind": svc.kind,
                       "health": self.health.problem(name) or "healthy"}
                for name, svc in self.services.items()
            },
        }

    def set_param(self, name: str, value: str) -> list[str]:
        return self.params.set(name, value)

    def param_tree(self) -> dict[str, Any]:
        return self.params.tree()
