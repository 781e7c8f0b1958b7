"""The quota slaves of the OSTs a node serves (Lustre's QSD): their grants from the master.

Each OST enforces block limits on its own, within grants MDT0 (the master) gave it
(target/ost_quota.py). This module keeps those grants current:

- when an OST starts it tells the master it is a new instance (`fresh`: what the last one
  held goes back) and what it has in use of every limited id; then every SYNC_EVERY
  seconds, and at once after deletes free some of a limited id, it asks again for what it
  uses (grants past that go back, so the other OSTs may have them);
- before a write that would pass a grant it asks for more, and the write waits for the
  answer, ACQUIRE_WAIT at most (as during an MDS failover): then it is refused with EDQUOT;
- when half of a grant's headroom is used it asks in the background, so that a stream of
  writes seldom waits;
- a client that set a limit says so (`quota_notify`): the OST learns it before answering.

One ask per OST is on its way at a time, and every write waiting meanwhile waits for that
one (each ask counts every waiting write in: OstQuota.hold). A write to an OST that has not
yet heard from the master waits up to READY_WAIT for it; once the master has been away that
long, writes go on unenforced until it is back (the master unreachable must not stop the
file system).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import NoDevice, ShoalError
from shoal.net.server import ServerConnection
from shoal.node.early_replies import keep_alive
from shoal.node.params import AT
from shoal.node.peers import PeerCalls
from shoal.protocol import messages as m
from shoal.protocol.quota import MAX_ASKS
from shoal.target.base import TargetService
from shoal.target.ost import OST
from shoal.target.ost_args import Owner
from shoal.target.ost_quota import Key

log = logging.getLogger(__name__)

SYNC_EVERY = 5.0
READY_WAIT = 10.0
ACQUIRE_WAIT = 60.0
RETRY = 0.5  # between asks while the master is away


@dataclass
class _Slave:
    """What the node keeps of one OST's talks with the master."""

    asking: asyncio.Task[bool] | None = None
    away_since: float | None = None  # the master has not answered since
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Held:
    """A write that waits for a grant: `wait()`, then serve it, then `release()`."""

    wait: Callable[[], Awaitable[None]]
    release: Callable[[], None]


class QuotaSlaves:
    def __init__(self, peers: PeerCalls | None, services: Mapping[str, TargetService]) -> None:
        """`peers`: the way to the master; None for a node that has none (a test's bare
        node): its writes are never held."""
        self.peers = peers
        self.services = services
        self._kick = asyncio.Event()
        self._slaves: dict[str, _Slave] = {}
        self.asks = 0  # asks the master answered
        self.waits = 0  # writes that waited for a grant

    def kick(self) -> None:
        """An OST started, or deletes freed some of a limited id: sync now."""
        self._kick.set()

    async def run(self) -> None:
        if self.peers is None:
            return
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SYNC_EVERY):
                        await self._kick.wait()
                self._kick.clear()
                for svc in list(self.services.values()):
                    if isinstance(svc, OST):
                        try:
                            await self.sync(svc)
                        except (ShoalError, OSError, sqlite3.Error) as exc:
                            # the OST stopped under us: the node must not go down for it
                            log.warning("%s: quota sync: %s", svc.name, exc)
        finally:
            await self.peers.close()

    def _slave(self, svc: OST) -> _Slave:
        return self._slaves.setdefault(svc.name, _Slave())

    async def sync(self, svc: OST) -> bool:
        """Tell the master what is in use here, learn the limits; False if unreachable."""
        if self.peers is None:
            return False
        return await self._round(svc, sync=True)

    async def _round(self, svc: OST, *, sync: bool) -> bool:
        """One exchange with the master, its asks made once the last one is answered."""
        slave = self._slave(svc)
        async with slave.lock:
            qt = svc.quota
            fresh = not qt.ready
            if sync and not fresh and slave.away_since is not None \
                    and not await self._call(svc, "quota_limited", {}):
                return False  # still away: keep the grants held (a sync may lower them)
            if fresh and not await self._call(svc, "quota_acquire", {
                    "slave": svc.name, "asks": [], "fresh": True, "sync": True}):
                return False
            asks = qt.asks(sync=sync)
            if sync and not asks and not fresh:
                return await self._call(svc, "quota_limited", {})  # a read: no transaction
            for i in range(0, len(asks), MAX_ASKS):
                if not await self._call(svc, "quota_acquire", {
                        "slave": svc.name, "asks": asks[i:i + MAX_ASKS], "sync": sync}):
                    return False
            return True

    async def _call(self, svc: OST, op: str, args: dict[str, Any]) -> bool:
        assert self.peers is not None
        slave = self._slave(svc)
        master = self.peers.target(svc.fs, "MDT", 0)
        reply = None if master is None else await self.peers.call(master, op, args)
        if reply is None or reply.status is not None:
            if reply is not None:
                log.warning("%s: %s refused: %s %s", svc.name, op, reply.status, reply.message)
            if slave.away_since is None:
                slave.away_since = time.monotonic()
            return False
        slave.away_since = None
        if self.services.get(svc.name) is svc:  # still served here by this instance
            svc.quota.learn(reply.data)
        self.asks += 1
        return True

    def _ask_soon(self, svc: OST) -> asyncio.Task[bool]:
        """The ask on its way for this OST, or a new one."""
        slave = self._slave(svc)
        if slave.asking is None or slave.asking.done():
            slave.asking = asyncio.ensure_future(self._round(svc, sync=False))
        return slave.asking

    def before_write(self, svc: OST, req: m.Request) -> Held | None:
        """None when a write may be served at once; else what it waits for first."""
        if req.op != "write" or req.flags & m.FLAG_REPLAY or self.peers is None:
            return None
        qt = svc.quota
        if qt.ready and not qt.limited:
            return None
        owner, blocks = svc.quota_need(req)
        if not qt.ready:
            away = self._slave(svc).away_since
            if away is not None and time.monotonic() - away > READY_WAIT:
                self.kick()
                return None  # unenforced until the master is back (logged when it went)
            return self._held(svc, owner, blocks)
        if qt.short(owner, blocks):
            self.waits += 1
            return self._held(svc, owner, blocks)
        if qt.low(owner):
            self._ask_soon(svc)
        return None

    def _held(self, svc: OST, owner: Owner, blocks: int) -> Held:
        qt = svc.quota
        keys = qt.hold(owner, blocks)

        def release() -> None:
            qt.unhold(keys, blocks)
            keys.clear()

        async def wait() -> None:
            await self._wait(svc, owner, blocks, keys)

        return Held(wait, release)

    async def _wait(self, svc: OST, owner: Owner, blocks: int, keys: list[Key]) -> None:
        """Until the write fits, or the master said no (an ask made with this write counted
        in was answered), or it was away too long. `keys`: what the write holds."""
        qt = svc.quota
        start = time.monotonic()
        if not qt.ready:
            while not qt.ready and (left := READY_WAIT - (time.monotonic() - start)) > 0:
                try:
                    async with asyncio.timeout(left):  # one ask for every write waiting
                        ok = await asyncio.shield(self._ask_soon(svc))
                except TimeoutError:
                    break
                if not ok:
                    await asyncio.sleep(min(RETRY, max(0.0, left)))
            if not qt.ready:
                log.warning("%s: no word from the quota master in %.0f s: writes go on "
                            "unenforced until it answers", svc.name, READY_WAIT)
                return
            keys.extend(qt.hold(owner, blocks))  # which ids are limited is known only now
        answered = 0
        while qt.short(owner, blocks) and answered < 2:
            # the first answer may be to an ask made before this write was held
            left = ACQUIRE_WAIT - (time.monotonic() - start)
            if left <= 0:
                return  # the write is refused with EDQUOT
            try:
                async with asyncio.timeout(left):
                    ok = await asyncio.shield(self._ask_soon(svc))
            except TimeoutError:
                return
            if ok:
                answered += 1
            else:
                await asyncio.sleep(min(RETRY, max(0.0, left)))

    async def then(self, held: Held, conn: ServerConnection, svc: OST,
                   req: m.Request, serve: Callable[[], m.Reply | Awaitable[m.Reply]]) -> m.Reply:
        """A write that waits for a grant first, then is served; early replies keep its
        client from resending it meanwhile."""
        stop = keep_alive(lambda extra: conn.send(m.EarlyReply(req.xid, extra)),
                          time.monotonic(), AT)
        try:
            try:
                await held.wait()
            finally:
                stop()
            if self.services.get(req.target) is not svc:
                exc = NoDevice(f"{req.target} is not served here any more")
                return m.Reply(req.xid, exc.errno_name, str(exc))
            reply = serve()
            return reply if isinstance(reply, m.Reply) else await reply
        finally:
            held.release()

    async def recount(self, svc: OST, req: m.Request) -> m.Reply:
        """quota_check's recount of an OST: its files stat'ed on a worker thread, so that a
        large OST does not stall the node's loop (and its health check)."""
        real = await asyncio.to_thread(svc.quota.count_files, svc.committed_owners(),
                                       svc.objects_dir)
        return m.Reply(req.xid, None, "", 0, svc.last_committed,
                       {"drift": svc.quota.drift(real)})

    async def notified(self, svc: OST, req: m.Request) -> m.Reply:
        """A limit was set: learn it before answering."""
        ok = await self.sync(svc)
        return m.Reply(req.xid, None, "", 0, svc.last_committed, {"synced": ok})


__all__ = ["Held", "QuotaSlaves"]
