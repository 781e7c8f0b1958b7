"""The failover agent: one per node, the loop that joins heartbeat, view, health and takeover.

What it does, level-triggered: whenever the store changes (and every RECONCILE_PERIOD), it
looks at each target this node may serve and compares what the store says with what the
node does:
- serving it and owning it: fine; unless it is sick (release it to the backup), asked to
  hand it over (`shoal failover|failback`), or due for automatic failback;
- serving it, owner key gone: the lease lapsed while the store was away; take it back;
- serving it, someone else owns it: superseded, stop at once;
- not serving it, nobody owns it: if this node is the one the policy picks (agent/policy.py),
  take it over (agent/takeover.py: fence, CAS, MMP, start, recover).
Being level-triggered, a missed or repeated watch event changes nothing: the next pass sees
the same store and decides the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

from shoal.agent import policy
from shoal.agent.alerts import Alerts, StormWatch
from shoal.agent.decide import MarkDown, Reacquire, Release, Snapshot, Supersede, Take, decide
from shoal.agent.events import EventLog
from shoal.agent.fencing import Fencer
from shoal.agent.heartbeat import Heartbeat
from shoal.agent.liveness import MGS_NAME, Liveness, client_connections
from shoal.agent.metrics import agent_families
from shoal.agent.partner_watch import PartnerWatch, WatchContext
from shoal.agent.quota_limits import LimitsCopy
from shoal.agent.reaping import partner_reaper, run_reaper
from shoal.agent.records import (
    NodeRecord,
    alive_key,
    dump,
    fenced_key,
    fs_down_key,
    load,
    split_target_key,
    stopping_key,
)
from shoal.agent.takeover import ActionContext, TargetActions
from shoal.agent.view import ClusterView
from shoal.config.settings import value as setting
from shoal.errors import NotConnected, ShoalError, StoreError, TimedOut
from shoal.fence import driver_for_node
from shoal.fence.base import FenceDriver
from shoal.fence.local import record_instance
from shoal.net import loop as netloop
from shoal.node import health as node_health
from shoal.node.admin import node_call
from shoal.node.server import NodeServer
from shoal.node.spec import TargetSpec
from shoal.protocol import messages as m
from shoal.protocol.recovery_timeouts import ir_ready, reach
from shoal.store import open_store
from shoal.target.evictions import BENIGN_EVICTIONS, Eviction
from shoal.target.mmp import Look, MmpMount, Superseded

log = logging.getLogger(__name__)

RECONCILE_PERIOD = 0.25
NODE_LEASE = "@node"  # the heartbeat's name for the node lease


class FailoverAgent:
    def __init__(self, node: NodeServer) -> None:
        self.node = node
        self.name = node.node
        self.spec = node.spec
        settings = self.spec.settings
        self.ttl = float(setting(settings, "LEASE_TTL"))
        grace = setting(settings, "BOOT_GRACE")
        self.boot_grace = float(2 * self.ttl if grace is None else grace)
        self.failback = str(setting(settings, "FAILBACK"))
        self.failback_delay = float(setting(settings, "FAILBACK_DELAY"))
        self.mmp_interval = float(setting(settings, "MMP_INTERVAL"))
        self.boot_id = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.store = open_store(self.spec.store_url)
        self.events = EventLog(self.store, self.name)
        self.alerts = Alerts(settings)
        self.events.on_emit.append(self.alerts.event)
        self.view = ClusterView()
        self.liveness = Liveness(self.name, node, self.spec, self.view)
        self.heartbeat = Heartbeat(self.spec.store_url, ttl=self.ttl,
                                   stuck_after=node_health.MAX_LAG,
                                   failsafe_probe=self._failsafe_probe,
                                   on_lost=self._lease_lost)
        self.mounts: dict[str, MmpMount] = {}
        self.busy: dict[str, asyncio.Task[None]] = {}
        self.retry_at: dict[str, float] = {}
        self.sick: dict[str, int] = {}
        self.failsafe_pings: dict[str, float] = {}
        self.my_targets = [t for t in self.spec.targets if self.name in t.nodes]
        self.fencer = Fencer(self.name, self.store, self.ttl, self._fence_driver)
        # MMP blocks looked at as a partner fell silent: the takeover's watch began then
        self.mmp_looks: dict[str, Look] = {}
        self.partner_watch = PartnerWatch(WatchContext(
            self.name, self.spec, self.node.key, self.store, self.events, self.my_targets,
            self.fencer.power_off, self.ttl, self.mmp_looks))
        self.actions = TargetActions(ActionContext(
            name=self.name, nid=self.spec.nid(self.name), boot_id=self.boot_id, ttl=self.ttl,
            mmp_interval=self.mmp_interval, mmp_looks=self.mmp_looks, store=self.store,
            events=self.events,
            heartbeat=self.heartbeat, node=node, mounts=self.mounts, retry_at=self.retry_at,
            failsafe_pings=self.failsafe_pings, power_off=self.fencer.power_off,
            fence_verified=self.fencer.verified,
            peer_status=self.peer_status, registered=self.registered,
            fenced_recently=self.fencer.fenced_recently,
            silent_for=self.partner_watch.silent_for,
            recovered=self.liveness.recovered))
        self.self_fenced: set[str] = set()
        self._partners: list[str] = []
        self._dirty = asyncio.Event()
        self._reregister: asyncio.Task[None] | None = None
        node.gate = self._gate
        node.ir_ready = self._ir_ready
        node.node_ops["agent_status"] = self._op_agent_status
        node.node_ops["failsafe"] = self._op_failsafe
        node.status_extra = self._status_extra
        node.collector.extra.append(
            lambda: agent_families(self.name, self.heartbeat, self.events))
        self.storm = StormWatch()
        node.on_evicted.append(self._evicted)
        self.limits_copy = LimitsCopy(self.store, node.services)
        node.on_opened.append(self.limits_copy.opened)

    # -- entry point ---------------------------------------------------------------------
    async def run(self) -> None:
        self.node.install_signal_handlers()
        record_instance(self.node.cluster_dir, self.name, self.boot_id)
        await self.node.serve()
        await self._register()
        self.heartbeat.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [*(tg.create_task(c) for c in self.node.background()),
                         tg.create_task(self.view.follow(self.store, self._changed)),
                         tg.create_task(self._reconcile_loop()),
                         tg.create_task(self._mmp_loop())]
                tasks.append(tg.create_task(self.partner_watch.run()))
                tasks.append(tg.create_task(self.limits_copy.run()))
                reaper = partner_reaper(self.store, self.name, self.my_targets,
                                        self.heartbeat.own_leases)
                if reaper is not None:
                    tasks.append(tg.create_task(run_reaper(reaper)))
                await self.node.stopping.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await self._shutdown()

    async def _register(self, *, again: bool = False) -> None:
        """Put this node's heartbeat key on a fresh lease; clear a fence record from before
        (a fenced node that runs again has been powered on by someone)."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                sent = time.monotonic()
                lease = await self.store.grant_lease(self.ttl)
                rec = NodeRecord(self.name, self.spec.nid(self.name), os.getpid(), self.boot_id,
                                 time.time())
                await self.store.put(alive_key(self.name), dump(rec),
                                     lease=lease.id)
                self.heartbeat.track(NODE_LEASE, lease.id, sent)
                if not again:
                    await self.store.delete(fenced_key(self.name))
                break
            except StoreError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("cannot register with the store yet: %s", exc)
                await asyncio.sleep(0.5)
        self.events.emit("node_reregistered" if again else "node_up", "",
                         f"boot {self.boot_id}, pid {os.getpid()}")

    async def _shutdown(self) -> None:
        for task in list(self.busy.values()):
            task.cancel()
        try:
            # read, not the view: `shoal down` writes the key just before its SIGTERM
            stopping_fss = {fs for fs in self.spec.fss
                            if await self.store.get(stopping_key(fs)) is not None
                            or await self.store.get(fs_down_key(fs)) is not None}
        except StoreError:
            stopping_fss = {fs for fs in self.spec.fss if self.view.stopping(fs)}
        for name in list(self.node.services):
            t = self.spec.target(name)
            stopping = all(fs in stopping_fss for fs in self.spec.stopping_names(t))
            try:
                await self.actions.release(
                    t, reason="cluster stopped" if stopping else "node stopped",
                    final="STOPPED" if stopping else "FAILING_OVER")
            except (ShoalError, OSError) as exc:
                log.error("%s: release at shutdown failed: %s", name, exc)
        lease = self.heartbeat.untrack(NODE_LEASE)
        self.heartbeat.stop()
        try:
            if lease is not None:
                await self.store.revoke_lease(lease)
        except StoreError:
            pass
        self.events.emit("node_down", "", "stopped")
        await self.events.flush()
        await self.alerts.close()
        await self.node.close_serving()
        await self.store.close()

    # -- the loop ------------------------------------------------------------------------
    def _changed(self, key: str) -> None:
        self._dirty.set()
        parts = split_target_key(key)
        if parts is not None and parts[1] == "location" and MGS_NAME in self.node.services:
            self._push_location(parts[0])

    def _push_location(self, target: str) -> None:
        """Imperative recovery: the MGS tells every client where a target lives now. With
        IR off nobody is told: clients find the target through their own timeouts and
        connect attempts round robin over its failover NIDs (Lustre's noir)."""
        try:
            if not self.spec.ir(self.spec.target(target)):
                return
        except KeyError:
            pass  # a target of a file system this node does not serve: IR is the default
        loc = self.view.location(target)
        if loc is None:
            return
        notice = m.Notice("ir", {"target": loc.target, "nid": loc.nid, "node": loc.node,
                                 "epoch": loc.epoch, "version": loc.version})
        conns = client_connections(self.node)
        for conn in conns:
            conn.send(notice)
        sent = len(conns)
        self.events.emit("ir_notify", target, f"{loc.node} epoch {loc.epoch}: told {sent} "
                         "clients", clients=sent, epoch=loc.epoch)

    def _lease_lost(self, name: str) -> None:
        if name == NODE_LEASE and (self._reregister is None or self._reregister.done()):
            # the heartbeat key went with the lease (a store outage longer than the TTL)
            self.heartbeat.untrack(NODE_LEASE)
            self._reregister = asyncio.create_task(self._register(again=True))
        self._dirty.set()

    async def _reconcile_loop(self) -> None:
        await self.view.loaded.wait()
        while True:
            self.heartbeat.loop_alive()
            self._partners = sorted({n for t in self.my_targets if t.name in self.node.services
                                     for n in t.nodes if n != self.name})
            for t in self.my_targets:
                try:
                    self._reconcile(t)
                except ShoalError as exc:
                    log.error("%s: %s", t.name, exc)
            try:
                async with asyncio.timeout(RECONCILE_PERIOD):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            self._dirty.clear()

    def _spawn(self, t: TargetSpec, coro: Any) -> None:
        async def guarded() -> None:
            try:
                await coro
            except (ShoalError, OSError) as exc:
                log.error("%s: %s", t.name, exc)
                self.events.emit("error", t.name, str(exc))
                self.retry_at[t.name] = time.monotonic() + 1.0
            finally:
                self.busy.pop(t.name, None)
                self._dirty.set()

        self.busy[t.name] = asyncio.create_task(guarded(), name=f"agent-{t.name}")

    def _reconcile(self, t: TargetSpec) -> None:
        """One look at one target: the decision is decide()'s (agent/decide.py), from a
        snapshot of the view and this node's state; carrying it out is TargetActions'."""
        decision = decide(self._snapshot(t))
        self.sick[t.name] = decision.sick
        act = decision.action
        if isinstance(act, Take):
            self._spawn(t, self.actions.take(t, self.view.state(t.name), act.why))
        elif isinstance(act, MarkDown):
            self._spawn(t, self.actions.put_state(t, "DOWN", node=act.node, reason=act.reason))
            self.events.emit("no_failover", t.name, act.reason, alert=True)
        elif isinstance(act, Release):
            if act.alert:
                self.events.emit("unhealthy", t.name, act.alert, alert=True)
            self._spawn(t, self.actions.release(t, to=act.to, reason=act.reason,
                                                final=act.final))
        elif isinstance(act, Reacquire):
            self._spawn(t, self.actions.reacquire(t))
        elif isinstance(act, Supersede):
            self.actions.supersede(t, act.why)

    def _snapshot(self, t: TargetSpec) -> Snapshot:
        name, view = t.name, self.view
        owner = view.owner(name)
        state = view.state(name)
        primary = view.alive(t.primary)
        blocked = None
        if state is not None and policy.needs_failover(state, self.name):
            blocked = self._auto_failover_blocked(t, state.node)
        return Snapshot(
            target=name, nodes=tuple(t.nodes), me=self.name, boot_id=self.boot_id,
            now=time.monotonic(), wall=time.time(),
            booted_for=time.monotonic() - self.started, boot_grace=self.boot_grace,
            busy=name in self.busy, hosted=name in self.node.services,
            owner=owner[0] if owner is not None else None, state=state,
            alive=frozenset(n for n in t.nodes if view.alive(n) is not None),
            primary_started_at=primary.started_at if primary is not None else None,
            stopping=self._stopping(t), fs_down=self._fs_down(t),
            admin_state=view.admin_state(name), retry_at=self.retry_at.get(name, 0.0),
            store_ok=self.heartbeat.store_ok,
            problem=self.node.health.problem(name) if name in self.node.services else None,
            sick=self.sick.get(name, 0), request=view.request(name), failback=self.failback,
            failback_delay=self.failback_delay, auto_failover_blocked=blocked)

    def _stopping(self, t: TargetSpec) -> bool:
        """Every file system the target serves is stopping (a shared MGS serves on while
        one of them runs)."""
        return all(self.view.stopping(fs) for fs in self.spec.stopping_names(t))

    def _fs_down(self, t: TargetSpec) -> bool:
        return all(self.view.fs_down(fs) for fs in self.spec.stopping_names(t))

    def _auto_failover_blocked(self, t: TargetSpec, prev: str) -> str | None:
        # the foadmin keys (config/foadmin.py): settings/auto_failover[_node]/<name>
        return policy.auto_failover_allowed(
            t.name, fs_default=self.spec.auto_failover_for(t),
            target_setting=self.view.setting("auto_failover", t.name),
            node_settings={n: self.view.setting("auto_failover_node", n)
                           for n in (prev, self.name)},
            admin_state=self.view.admin_state(t.name))

    async def _mmp_loop(self) -> None:
        """Bump every mounted device's MMP block, and stop at once where we are superseded.
        A self-fenced target's block is left alone, so a taker sees the device idle."""
        while True:
            for name, mount in list(self.mounts.items()):
                if name not in self.node.services:
                    continue
                if not self._gate(name):
                    continue
                try:
                    await asyncio.to_thread(mount.update)  # the disk may be busy
                except Superseded as exc:
                    self.actions.supersede(self.spec.target(name), str(exc))
                except OSError as exc:
                    log.warning("%s: MMP update failed: %s", name, exc)
            await asyncio.sleep(self.mmp_interval)

    # -- serving gate, recovery, fencing ---------------------------------------------------
    def _gate(self, target: str) -> bool:
        ok = self.heartbeat.serving_allowed(target)
        if not ok and target not in self.self_fenced and target in self.node.services:
            self.self_fenced.add(target)
            log.error("%s: lease about to lapse and no failsafe: not serving it", target)
        elif ok:
            self.self_fenced.discard(target)
        return ok

    def _ir_ready(self) -> bool:
        """Whether the MGS has served long enough where it is for every client to know it:
        a target taken with the MGS (the host that carried both died) or soon after it moved
        cannot count on IR, whose notices go only to the clients connected to the MGS."""
        st = self.view.state(MGS_NAME)
        owner = self.view.owner(MGS_NAME)
        # the state record outlives its node (it changes only when a taker writes it): the
        # owner key, which goes with its lease, must still name the same instance
        alive = (st is not None and st.state == "UP" and owner is not None
                 and owner[0].node == st.node and owner[0].boot_id == st.boot_id)
        return ir_ready(st.since if alive and st is not None else None, time.time(),
                        reach(self.node.evictor.ping_interval))

    def _fence_driver(self, node: str) -> FenceDriver:
        return driver_for_node(node, cluster_dir=self.node.cluster_dir, store=self.store,
                               settings=self.spec.settings, requester=self.name,
                               address=self.spec.nids.get(node),
                               on_alert=lambda msg: self.events.emit("fence_alert", "", msg,
                                                                     victim=node, alert=True))

    async def registered(self, node: str) -> NodeRecord | None:
        """The record `node` keeps in the store while it runs (None: none, or no store)."""
        try:
            kv = await self.store.get(alive_key(node))
        except StoreError:
            return None
        return load(NodeRecord, kv.value) if kv is not None else None

    async def peer_status(self, node: str, *, timeout: float) -> dict[str, Any] | None:
        try:
            return await node_call(self.spec, self.node.key, node, "agent_status",
                                   timeout=timeout)
        except (NotConnected, TimedOut, OSError):
            return None
        except ShoalError as exc:
            log.warning("agent_status from %s: %s", node, exc)
            return None

    async def _failsafe_probe(self) -> bool:
        """Run on the heartbeat thread while the store is unreachable: do all partners
        answer? Each partner notes our call, so none of them takes our targets meanwhile."""
        partners = list(self._partners)
        if not partners:
            return True

        async def one(n: str) -> bool:
            try:
                await node_call(self.spec, self.node.key, n, "failsafe",
                                {"node": self.name}, timeout=self.ttl / 6)
                return True
            except (ShoalError, OSError):
                return False

        return all(await asyncio.gather(*(one(n) for n in partners)))

    # -- @node operations ----------------------------------------------------------------
    async def _op_agent_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"node": self.name, "boot_id": self.boot_id,
                # a target being taken counts: its device may be touched already
                "hosting": sorted(set(self.node.services) | set(self.busy)),
                "serving": sorted(n for n in self.node.services if self._gate(n)
                                  and not self.node.health.problem(n)),
                "store_ok": self.heartbeat.store_ok,
                "failsafe": time.monotonic() < self.heartbeat.failsafe_until}

    async def _op_failsafe(self, args: dict[str, Any]) -> dict[str, Any]:
        self.failsafe_pings[str(args.get("node"))] = time.monotonic()
        return {"node": self.name, "ok": True}

    def _evicted(self, ev: Eviction) -> None:
        if ev.cause in BENIGN_EVICTIONS:
            return
        if n := self.storm.evicted(time.monotonic()):
            self.events.emit("eviction_storm", ev.target,
                             f"{n} clients evicted in {self.storm.window:g} s "
                             f"(the last: {ev.client}, {ev.reason})", alert=True, count=n)

    def _status_extra(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {"agent": {"boot_id": self.boot_id, "store_ok": hb.store_ok,
                          "failsafe": time.monotonic() < hb.failsafe_until,
                          "stuck": hb.stuck, "renewals": hb.renewals,
                          "renew_failures": hb.failures,
                          "max_renew_s": round(hb.max_renew_s, 3),
                          "self_fenced": sorted(self.self_fenced)}}


def run_node_with_agent(server: NodeServer) -> None:
    # force: the `shoal` command configured WARNING for itself; a node logs its steps
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s {server.node} %(levelname)s %(name)s: "
                               "%(message)s")

    async def main() -> None:
        await FailoverAgent(server).run()

    netloop.fewer_collections()
    netloop.run(main())
