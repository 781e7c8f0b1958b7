"""The steps that move a target between nodes: take over (fence, CAS, MMP, start), release
(commit, stop, hand over), re-acquire after a store hiccup, and stop when superseded.

Each step writes its event, so the failover's timeline can be read back (`shoal events`).
The order is what keeps one server per target (DESIGN.md invariant 2): order the old owner
off, then win the owner key by compare-and-swap (its revision becomes the fencing token),
then claim the device's MMP block with that token, and only then, the fence's check that the
old owner is off having come back (it runs beside the CAS and the claim), open the device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.agent.fencing import FENCE_RETRY
from shoal.agent.records import (
    LocationRecord,
    NodeRecord,
    OwnerRecord,
    StateRecord,
    dump,
    load,
    location_key,
    owner_key,
    request_key,
    state_key,
)
from shoal.agent.silence import SILENT
from shoal.errors import Busy, NoDevice, ShoalError, StoreError
from shoal.fence.base import FenceFailed
from shoal.node.spec import TargetSpec
from shoal.target.label import check_device
from shoal.target.mmp import Look, MmpMount, Superseded, look

if TYPE_CHECKING:
    from shoal.agent.events import EventLog
    from shoal.agent.heartbeat import Heartbeat
    from shoal.fence.base import FenceResult
    from shoal.node.server import NodeServer
    from shoal.store import Store
    from shoal.target.base import TargetService

log = logging.getLogger(__name__)

PING_TIMEOUT = 0.3  # the old owner's agent answers at once if it is alive at all
# A partner silent to the partner watch (agent/partner_watch.py) is asked for
# SILENT_PING_TIMEOUT only: its lease runs out after SILENT, so a powered-off owner is always
# silent by then, and most of PING_TIMEOUT is saved.
SILENT_PING_TIMEOUT = 0.1


@dataclass
class ActionContext:
    """What the steps below may use of their node, and nothing more (not the agent)."""

    name: str  # this node
    nid: str  # its address
    boot_id: str  # this process's incarnation
    ttl: float  # of the leases it takes
    mmp_interval: float
    mmp_looks: dict[str, Look]  # per target: its block as the partner watch saw it go silent
    store: Store
    events: EventLog
    heartbeat: Heartbeat
    node: NodeServer  # starts, stops and drops targets
    mounts: dict[str, MmpMount]  # the devices this node holds, by target
    retry_at: dict[str, float]  # per target: no new attempt before (monotonic)
    failsafe_pings: dict[str, float]  # per node: when it last said it serves in failsafe
    # (node, instance): ordered off, then checked (agent/fencing.py)
    power_off: Callable[[str, str], Awaitable[FenceResult]]
    fence_verified: Callable[[str], Awaitable[FenceResult | None]]
    fenced_recently: Callable[[str, str], bool]  # (node, instance)
    silent_for: Callable[[str], float]  # seconds a partner has not answered the watch's pings
    peer_status: Callable[..., Awaitable[dict[str, Any] | None]]  # (node, timeout=)
    registered: Callable[[str], Awaitable[NodeRecord | None]]
    recovered: Callable[[TargetSpec, TargetService], Awaitable[None]]


class TargetActions:
    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx

    # -- helpers -------------------------------------------------------------------------
    def _state(self, t: TargetSpec, state: str, **kw: object) -> StateRecord:
        a = self.ctx
        defaults: dict[str, object] = {"node": a.name, "since": time.time(),
                                       "boot_id": a.boot_id}
        defaults.update(kw)
        return StateRecord(state=state, **defaults)  # type: ignore[arg-type]

    async def put_state(self, t: TargetSpec, state: str, **kw: object) -> None:
        try:
            await self.ctx.store.put(state_key(t.name), dump(self._state(t, state, **kw)))
        except StoreError as exc:
            log.warning("%s: state %s not stored: %s", t.name, state, exc)

    # -- taking over ---------------------------------------------------------------------
    async def take(self, t: TargetSpec, prev: StateRecord | None, why: str) -> None:
        a = self.ctx
        name = t.name
        t0 = time.monotonic()
        failover = prev is not None and not prev.clean and prev.node != a.name
        a.events.emit("detect", name, why, last_owner=prev.node if prev else "",
                      failover=failover)
        device = Path(t.devices[a.name])
        # the MMP watch began when the partner watch found the old owner silent, or starts
        # now, read-only, and runs while the old owner is fenced
        seen = a.mmp_looks.pop(name, None) if failover else None
        earlier = (asyncio.create_task(look(device)) if failover and seen is None
                   else None)
        if failover and prev is not None:
            if not await self._old_owner_gone(t, prev):
                return
        t_fenced = time.monotonic()
        lease_sent = time.monotonic()
        lease = await a.store.grant_lease(a.ttl)
        a.heartbeat.track(name, lease.id, lease_sent)
        rec = OwnerRecord(a.name, a.nid, a.boot_id, lease.id)
        try:
            token = await a.store.create(owner_key(name), dump(rec), lease=lease.id)
        except BaseException:
            await self._drop_lease(name)
            raise
        if token is None:
            await self._drop_lease(name)
            a.events.emit("take_lost", name, "another node took it first")
            return
        # from here on this node may touch the device: a taker after us must fence us
        await self.put_state(t, "FAILING_OVER", to=a.name, reason=why)
        a.events.emit("take", name, f"owner key won, token {token}", token=token)
        mount = MmpMount(device, a.name, token, interval=a.mmp_interval)
        try:
            # its label first, read-only: a missing, unformatted or foreign device (a typo
            # in the backup's path) is refused before anything writes to it
            await asyncio.to_thread(check_device, device, t.fs, name)
            mmp_s = await mount.claim(await earlier if earlier is not None else seen)
        except NoDevice as exc:
            # recorded against this node, so that another node of the pair (the primary
            # back from a reboot, say) is preferred over it next time (agent/policy.py)
            await self._refuse(t, a.name, "device_refused", exc)
            return
        except Busy as exc:
            await self._refuse(t, prev.node if prev else a.name, "mmp_refused", exc)
            return
        if failover and prev is not None and not await self._checked_off(t, prev):
            return
        if not a.heartbeat.held(name):
            await self._abort_take(t, "its lease lapsed during the MMP claim")
            return
        t_taken = time.monotonic()
        a.mounts[name] = mount
        svc = await a.node.start_target(name)
        if not a.heartbeat.held(name):
            a.node.drop_target(name)  # not a byte written: no commit, no clean unmount
            a.mounts.pop(name, None)
            await self._abort_take(t, "its lease lapsed while the target started")
            return
        svc.commit_guard = mount.check
        a.node.target_states[name] = "RECOVERING"
        t_started = time.monotonic()
        await self.put_state(t, "RECOVERING", epoch=svc.epoch, reason=why)
        await a.store.put(location_key(name), dump(LocationRecord(
            name, a.name, a.nid, svc.epoch, token)))
        a.events.emit("start", name, f"epoch {svc.epoch}, recovering", epoch=svc.epoch,
                      fence_s=round(t_fenced - t0, 3), take_s=round(t_taken - t_fenced, 3),
                      mmp_s=round(mmp_s, 3), start_s=round(t_started - t_taken, 3))
        await a.recovered(t, svc)
        a.node.target_states[name] = "UP"
        await self.put_state(t, "UP", epoch=svc.epoch)
        a.events.emit("recovered", name, f"serving in epoch {svc.epoch}",
                      recover_s=round(time.monotonic() - t_started, 3),
                      total_s=round(time.monotonic() - t0, 3))

    async def _abort_take(self, t: TargetSpec, why: str) -> None:
        """The lease this takeover acts under lapsed (the node was paused or cut off from
        the store): another node may be taking the target now, so stop here, leave the
        device as it is (an MMP block marked clean would invite a second mount) and let the
        next reconcile start again with a new lease."""
        await self._drop_lease(t.name)
        self.ctx.events.emit("take_aborted", t.name, why, alert=True)

    async def _refuse(self, t: TargetSpec, node: str, kind: str, exc: Exception) -> None:
        """This node may not serve the target from its device: let the owner key go, mark
        the target DOWN with the reason (about `node`), raise an alert, look again later."""
        a = self.ctx
        await self._drop_lease(t.name)
        await self.put_state(t, "DOWN", reason=str(exc), node=node)
        a.events.emit(kind, t.name, str(exc), alert=True)
        a.retry_at[t.name] = time.monotonic() + FENCE_RETRY

    async def _old_owner_gone(self, t: TargetSpec, prev: StateRecord) -> bool:
        """True once the old owner can no longer touch the device: it answers that it does
        not hold the target, or it is a new incarnation, or it has been fenced."""
        a = self.ctx
        name = t.name
        if a.fenced_recently(prev.node, prev.boot_id):
            return True  # this node ordered it off a moment ago (agent/partner_watch.py)
        pinged = a.failsafe_pings.get(prev.node)
        if pinged is not None and time.monotonic() - pinged < a.ttl:
            # it told us within a TTL that it serves in failsafe (the store is away for it)
            a.events.emit("owner_failsafe", name, f"{prev.node} serves in failsafe")
            a.retry_at[name] = time.monotonic() + a.ttl
            return False
        # a node silent to the partner watch for SILENT s is asked only briefly: a fresh
        # connection to a live host answers in milliseconds even while the watch's own
        # connection still waits out TCP's backoff after a flap
        silent = a.silent_for(prev.node)
        answer = await a.peer_status(prev.node, timeout=SILENT_PING_TIMEOUT
                                     if silent >= SILENT else PING_TIMEOUT)
        if answer is None:
            # no answer: dead, hung, or starting (a node answers only once it serves). A
            # node that registered anew since is a new instance: the old one is gone.
            alive = await a.registered(prev.node)
            if alive is not None and alive.boot_id != prev.boot_id:
                a.events.emit("old_owner_restarted", name,
                              f"{prev.node} restarted since (boot {alive.boot_id})")
                return True
        else:
            if answer.get("boot_id") != prev.boot_id:
                a.events.emit("old_owner_restarted", name, f"{prev.node} restarted since")
                return True
            if name in answer.get("serving", []):
                # its lease lapsed but it serves: a store hiccup on its side, not a death
                a.events.emit("owner_alive", name,
                              f"{prev.node} still serves {name}; no takeover")
                a.retry_at[name] = time.monotonic() + a.ttl
                return False
            if name not in answer.get("hosting", []):
                a.events.emit("old_owner_released", name, f"{prev.node} no longer holds it")
                return True
        quiet = f" (silent {silent:.1f}s)" if silent >= SILENT else ""
        a.events.emit("fence_start", name, f"fencing {prev.node}{quiet}", victim=prev.node)
        try:
            result = await a.power_off(prev.node, prev.boot_id)
        except (FenceFailed, ShoalError) as exc:
            # a bad fence configuration (ConfigError) is as much a failure as a failed fence
            await self._fence_failed(t, prev, exc)
            return False
        a.events.emit("fenced", name, result.detail, victim=prev.node, method=result.method,
                      seconds=round(result.seconds, 3))
        return True

    async def _fence_failed(self, t: TargetSpec, prev: StateRecord, exc: Exception) -> None:
        a = self.ctx
        a.events.emit("fence_failed", t.name, str(exc), victim=prev.node, alert=True)
        await self.put_state(t, "DOWN", node=prev.node, reason=f"fencing failed: {exc}")
        a.retry_at[t.name] = time.monotonic() + FENCE_RETRY

    async def _checked_off(self, t: TargetSpec, prev: StateRecord) -> bool:
        """Whether the old owner, if this node fenced it, has been checked off: the last
        step before its device is mounted. The owner key won is let go if not."""
        a = self.ctx
        try:
            result = await a.fence_verified(prev.node)
        except (FenceFailed, ShoalError) as exc:
            await self._drop_lease(t.name)
            await self._fence_failed(t, prev, exc)
            return False
        if result is not None:
            a.events.emit("fence_checked", t.name, result.detail, victim=prev.node,
                          method=result.method, seconds=round(result.seconds, 3))
        return True

    async def _drop_lease(self, name: str) -> None:
        lease = self.ctx.heartbeat.untrack(name)
        if lease is not None:
            try:
                await self.ctx.store.revoke_lease(lease)
            except StoreError as exc:
                log.warning("%s: lease %d not revoked (it expires): %s", name, lease, exc)

    # -- letting go ----------------------------------------------------------------------
    async def release(self, t: TargetSpec, *, to: str = "", reason: str,
                      final: str = "FAILING_OVER") -> None:
        """Commit, stop and hand over cleanly: the next owner needs no fencing."""
        a = self.ctx
        name = t.name
        a.events.emit("release", name, reason, to=to)
        await self.put_state(t, "FAILING_OVER", to=to, reason=reason)
        clean = True
        try:
            await asyncio.wait_for(a.node.stop_target(name, commit=True), timeout=10.0)
        except (ShoalError, OSError, TimeoutError) as exc:
            log.error("%s: clean stop failed (%s): dropping it", name, exc)
            a.node.drop_target(name)
            clean = False
        mount = a.mounts.pop(name, None)
        if mount is not None and clean:
            await asyncio.to_thread(mount.release)
        await self.put_state(t, final, to=to, reason=reason, clean=clean)
        await self._drop_lease(name)
        try:
            await a.store.delete(request_key(name))
        except StoreError:
            pass
        a.events.emit("released", name, f"{final.lower()}, clean" if clean else final.lower(),
                      to=to)

    def supersede(self, t: TargetSpec, why: str) -> None:
        """Stop at once: another node owns the target now. Touch nothing on the device."""
        a = self.ctx
        a.node.drop_target(t.name)
        a.mounts.pop(t.name, None)
        a.heartbeat.untrack(t.name)
        a.events.emit("superseded", t.name, why, alert=True)

    async def _owner_key_exists(self, t: TargetSpec) -> bool:
        """True if the owner key exists, and then nothing is left to take back: this
        incarnation's (the view lags behind the store, so a key this node has just taken
        back may still look absent there) keeps serving; another node's means superseded."""
        kv = await self.ctx.store.get(owner_key(t.name))
        if kv is None:
            return False
        rec = load(OwnerRecord, kv.value)
        if rec is not None and rec.node == self.ctx.name and rec.boot_id == self.ctx.boot_id:
            return True
        self.supersede(t, f"{rec.node if rec else 'another node'} holds the owner key")
        return True

    async def reacquire(self, t: TargetSpec) -> None:
        """Our owner key vanished while we serve (the lease lapsed during a store outage and
        nobody took over, since we kept answering): take the key back with a new token."""
        a = self.ctx
        name = t.name
        mount = a.mounts.get(name)
        if mount is None:
            return
        if await self._owner_key_exists(t):
            return
        sent = time.monotonic()
        lease = await a.store.grant_lease(a.ttl)
        rec = OwnerRecord(a.name, a.nid, a.boot_id, lease.id)
        token = await a.store.create(owner_key(name), dump(rec), lease=lease.id)
        if token is None:
            await a.store.revoke_lease(lease.id)
            await self._owner_key_exists(t)
            return
        try:
            mount.check()
        except Superseded as exc:
            await a.store.revoke_lease(lease.id)
            self.supersede(t, str(exc))
            return
        old = a.heartbeat.untrack(name)
        a.heartbeat.track(name, lease.id, sent)
        mount.token = token
        await asyncio.to_thread(mount.update)
        svc = a.node.services.get(name)
        epoch = svc.epoch if svc else 0
        await a.store.put(location_key(name), dump(LocationRecord(
            name, a.name, a.nid, epoch, token)))
        await self.put_state(t, a.node.target_states.get(name, "UP"), epoch=epoch)
        a.events.emit("reacquired", name, f"owner key back, token {token} (lease {old} lapsed)")
