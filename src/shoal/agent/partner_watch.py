"""Imperative death: a partner's daemon that dies on a live host is taken over at once, not
at its lease's expiry.

When a process dies its kernel closes its sockets, and afterwards its port refuses
connections: the host is up and nothing listens there. Each agent holds a connection to
every partner (the nodes that back its targets or that it backs). When one closes, it tries
to connect again; a refusal is proof that the daemon is gone, so the watcher fences that
instance (the instance named in the owner keys, so a daemon that is starting again is left
alone) and, once it is ordered off, revokes the dead instance's leases in the store (the
takeover checks that it is off before it mounts anything, agent/fencing.py). The
owner keys vanish with them and the usual takeover starts, about 1.5 s earlier than the
lease's expiry would have started it (TTL 2 s, renewed every TTL/3).

Only a refusal counts. A node that is paused, hung, powered off or cut off closes nothing
and refuses nothing: its lease decides, as before, so a pause shorter than the lease moves
nothing. Nor does a refusal count from a node that was silent before its connection closed:
that is a host back from a power cut (its new kernel resets the old connection, and its new
daemon is not listening yet), or a hung daemon killed later, and fencing it then would power
off a host as it boots, or move targets a moment before their leases decide anyway. A node that closes the connection but still answers (a restart, a limit) is left
alone too, and so is a node being stopped cleanly: it gives its owner keys back first.

The watch also pings each partner over its connection every LISTEN_EVERY seconds and notes
when it last answered (`silent_for`). When the lease of a silent node runs out, the
takeover already knows it is silent and does not wait PING_TIMEOUT for an answer that will
not come (agent/takeover.py); a node that answers in time is asked as before.

Silence: a partner that is silent, fresh connections to it unanswered as well (agent/silence.py:
the watch's own connection may be waiting out TCP's backoff after a flap), and that has
renewed none of its owner leases for UNRENEWED s (they read at most TTL - 2 whole seconds:
under TTL - 1 left) is powered off, paused or cut off from the store as well as from us. It
would lose its leases within TTL/3 more anyway; the watch fences it now and revokes them, as
for a refusal. Either half alone is no death: a node cut off from us only still renews (the
leases decide), and one cut off from the store only still answers (it serves on in
failsafe). A pause of a second stays below both. A node that registered anew since is a new
instance booting: it is left alone, as the takeover leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.agent.events import EventLog
from shoal.agent.fencing import FENCE_RETRY
from shoal.agent.records import NodeRecord, OwnerRecord, alive_key, load, owner_key
from shoal.agent.silence import FRESH_PROBE, SILENT, SILENT_FENCE, UNRENEWED, Silence, unrenewed
from shoal.errors import NotConnected, Refused, ShoalError, StoreError, TimedOut
from shoal.fence.base import FenceResult
from shoal.net.client import RpcConnection
from shoal.net.tls import client_context
from shoal.node.admin import ADMIN_PREFIX, NODE_TARGET
from shoal.node.host import HostSpec
from shoal.node.spec import TargetSpec
from shoal.protocol import messages as m
from shoal.store.base import Store
from shoal.target.mmp import Look, look

log = logging.getLogger(__name__)

RECONNECT = 0.5  # seconds between attempts to (re)open the watch connection
PROBE_TIMEOUT = 0.5  # a refusal comes back at once; anything slower is not one
LISTEN_EVERY = 0.1  # seconds between the watch's pings of a partner
LISTEN_TIMEOUT = 2.0  # a ping's own deadline; one unanswered by then is sent again
# The store is asked about a silent partner this much before it would be found gone, so
# that the MMP look (and the takeover's watch with it) starts early
LOOK_EARLY = 0.2
# How often the store is asked about a partner that stays silent: it may stay so for hours
# (powered off), and every look reads its owner keys and leases
LOOK_AGAIN = 0.25


@dataclass
class WatchContext:
    """What the watch needs of the agent."""

    name: str
    spec: HostSpec
    key: bytes
    store: Store
    events: EventLog
    targets: list[TargetSpec]  # this node's targets (it is their primary or a backup)
    # (node, instance): orders it off; the takeover awaits the check (agent/fencing.py)
    power_off: Callable[[str, str], Awaitable[FenceResult]]
    ttl: float  # of the owner leases
    # per target: its MMP block as looked at once its owner was found silent; the takeover's
    # claim counts the watch from then (target/mmp.py), not from after the fence
    mmp_looks: dict[str, Look]


def partners(me: str, targets: list[TargetSpec]) -> list[str]:
    return sorted({n for t in targets for n in t.nodes if n != me})


class PartnerWatch:
    def __init__(self, ctx: WatchContext) -> None:
        self.ctx = ctx
        self._silences: dict[str, Silence] = {}

    def silent_for(self, node: str) -> float:
        """Seconds since `node` last answered the watch's pings; 0 when the watch has not
        heard from it at all (no evidence either way)."""
        return self._of(node).silent_for(time.monotonic())

    def _of(self, node: str) -> Silence:
        return self._silences.setdefault(node, Silence())

    def _heard(self, node: str) -> None:
        self._of(node).answered(time.monotonic())

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for node in partners(self.ctx.name, self.ctx.targets):
                tg.create_task(self._watch(node))
                tg.create_task(self._probe_silent(node))
                tg.create_task(self._watch_silence(node))

    async def _open(self, node: str, timeout: float) -> RpcConnection:
        ctx = self.ctx
        host, port = ctx.spec.addr_port(node)
        return await RpcConnection.open(host, port, ctx.key,
                                        m.Hello(f"{ADMIN_PREFIX}watch-{ctx.name}"),
                                        timeout=timeout, tls=client_context(ctx.spec.settings))

    async def _watch(self, node: str) -> None:
        while True:
            try:
                conn = await self._open(node, timeout=2.0)
            except NotConnected:
                await asyncio.sleep(RECONNECT)
                continue
            await self._listen(node, conn)
            try:
                await self._closed(node)
            except (ShoalError, OSError) as exc:
                log.warning("partner %s: after its connection closed: %s", node, exc)
            except Exception:
                # a shortcut, not the node's life: the leases still decide if it fails
                log.exception("partner %s: the watch failed; its leases decide", node)

    async def _listen(self, node: str, conn: RpcConnection) -> None:
        """Ping `node` until the connection closes, noting each answer's time. A connection
        that opens is no answer: a daemon being killed may still complete one, and then
        close it at once, and its silence before must not be forgotten for that."""
        xid = 0
        while not conn.closed:
            xid += 1
            try:
                await conn.call(m.Request(xid, "ping", NODE_TARGET, {}), timeout=LISTEN_TIMEOUT)
            except TimedOut:
                continue
            except NotConnected:
                break
            self._heard(node)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), LISTEN_EVERY)

    async def _closed(self, node: str) -> None:
        """The connection to `node` closed: is its daemon gone? Then fence it and free its
        targets at once."""
        silent = self.silent_for(node)
        if silent >= SILENT:
            log.info("partner %s: its connection closed after %.1f s of silence: its leases "
                     "decide", node, silent)
            return
        owned = await self._owned_by(node)
        if not owned:
            return  # it serves nothing of ours (or gave it back: a clean stop)
        try:
            conn = await self._open(node, timeout=PROBE_TIMEOUT)
        except Refused:
            pass  # nothing listens on its port: the daemon is gone
        except NotConnected:
            return  # silent or slow: not proof of anything; its lease decides
        else:
            await conn.close()
            return  # it answers: a new instance, or the same one, alive
        await self._look_at(owned)  # the takeover's MMP watch runs during the fence
        await self._fence_and_free(node, owned, f"{node}'s daemon is gone (its connection "
                                   "closed and its port refuses)", "")

    async def _probe_silent(self, node: str) -> None:
        """Ping a silent `node` on fresh connections, each on its own (agent/silence.py)."""
        silence = self._of(node)
        async with asyncio.TaskGroup() as tg:
            while True:
                now = time.monotonic()
                if silence.probe_due(now):
                    silence.probed(now)
                    tg.create_task(self._answers(node))
                await asyncio.sleep(LISTEN_EVERY / 2)

    async def _watch_silence(self, node: str) -> None:
        """Fence `node` once it is gone silent and its leases go unrenewed (module
        docstring)."""
        while True:
            await asyncio.sleep(LISTEN_EVERY / 2)
            if self.silent_for(node) >= SILENT_FENCE - LOOK_EARLY:
                await asyncio.sleep(await self._silence(node))

    async def _silence(self, node: str) -> float:
        """One look at a silent `node`, which is fenced and freed if the store agrees that
        it is gone; the seconds until the next look (FENCE_RETRY after a failed fence: the
        takeover at the leases' expiry fences too)."""
        ctx = self.ctx
        try:
            owned = await self._owned_by(node)
            if not owned or not unrenewed(ctx.ttl, [await ctx.store.lease_ttl(lease)
                                                    for _t, _rec, lease in owned]):
                return LOOK_AGAIN
            kv = await ctx.store.get(alive_key(node))
        except StoreError:
            return LOOK_AGAIN  # the store is away for us: nothing to act on, leases decide
        alive = load(NodeRecord, kv.value) if kv is not None else None
        if alive is not None and alive.boot_id not in {rec.boot_id for _t, rec, _l in owned}:
            return LOOK_AGAIN  # a new instance is booting there; the old one's leases run out
        await self._look_at(owned)
        silence = self._of(node)
        while not silence.gone(time.monotonic()):
            if self.silent_for(node) < SILENT_FENCE - LOOK_EARLY:
                return 0.0  # it answered, on the watch's connection or a fresh one
            await asyncio.sleep(LISTEN_EVERY / 2)
        silent = self.silent_for(node)
        if not await self._fence_and_free(
                node, owned, f"{node} silent {silent:.1f}s, its leases unrenewed for "
                f"{UNRENEWED:g}s", f" (silent {silent:.1f}s)"):
            return FENCE_RETRY
        return LOOK_AGAIN

    async def _look_at(self, owned: list[tuple[str, OwnerRecord, int]]) -> None:
        """A look at the MMP block of each target in `owned`, on this node's device."""
        names = {t for t, _rec, _lease in owned}
        for t in self.ctx.targets:
            if t.name in names and self.ctx.name in t.devices:
                seen = await look(Path(t.devices[self.ctx.name]))
                if seen is not None:
                    self.ctx.mmp_looks[t.name] = seen

    async def _answers(self, node: str) -> None:
        """Ping `node` on a fresh connection, noting an answer within FRESH_PROBE s: after a
        flap the watch's own connection may wait out TCP's retransmission backoff for a
        second and more, while a new one to a live host answers in milliseconds."""
        deadline = time.monotonic() + FRESH_PROBE
        try:
            conn = await self._open(node, timeout=FRESH_PROBE)
        except (ShoalError, OSError):
            return  # refused, silent, or not itself: no answer
        try:
            left = max(0.01, deadline - time.monotonic())
            await conn.call(m.Request(1, "ping", NODE_TARGET, {}), timeout=left)
        except (ShoalError, OSError):
            return
        finally:
            await conn.close()
        self._heard(node)

    async def _fence_and_free(self, node: str, owned: list[tuple[str, OwnerRecord, int]],
                              why: str, quiet: str) -> bool:
        """Fence each instance of `node` that owns targets in `owned`, then revoke their
        leases; False if a fence failed (the leases then run out and the takeover fences
        again, marking the targets DOWN if that fails too)."""
        ctx = self.ctx
        for instance in sorted({rec.boot_id for _t, rec, _kv in owned}):
            names = [t for t, rec, _kv in owned if rec.boot_id == instance]
            for t in names:
                ctx.events.emit("detect", t, why, victim=node)
                ctx.events.emit("fence_start", t, f"fencing {node}{quiet}", victim=node)
            try:
                result = await ctx.power_off(node, instance)
            except ShoalError as exc:
                log.warning("partner %s: fence failed (%s): %s wait for the leases", node, exc,
                            ", ".join(names))
                return False
            for t in names:
                ctx.events.emit("fenced", t, result.detail, victim=node, method=result.method,
                                seconds=round(result.seconds, 3))
        await self._revoke(node, owned)
        return True

    async def _owned_by(self, node: str) -> list[tuple[str, OwnerRecord, int]]:
        """(target, owner record, its lease) for each of our targets `node` owns now, read
        from the store itself (the view may lag behind a clean stop's releases)."""
        out = []
        for t in self.ctx.targets:
            kv = await self.ctx.store.get(owner_key(t.name))
            rec = load(OwnerRecord, kv.value) if kv is not None else None
            if rec is not None and kv is not None and rec.node == node:
                out.append((t.name, rec, kv.lease))
        return out

    async def _revoke(self, node: str, owned: list[tuple[str, OwnerRecord, int]]) -> None:
        """Revoke the fenced instances' owner leases, and their node lease: the owner keys
        go, and nobody takes the node for alive any more."""
        store = self.ctx.store
        dead = {rec.boot_id for _t, rec, _lease in owned}
        leases = {lease for _t, _rec, lease in owned}
        try:
            kv = await store.get(alive_key(node))
            rec = load(NodeRecord, kv.value) if kv is not None else None
            if kv is not None and rec is not None and rec.boot_id in dead:
                leases.add(kv.lease)
            for lease in sorted(x for x in leases if x):
                await store.revoke_lease(lease)
        except StoreError as exc:
            log.warning("partner %s: leases not revoked (%s): they expire", node, exc)
