"""The quota slaves of the OSTs a node serves (Lustre's QSD): their grants from the master.

Each OST enforces block limits on its own, within grants MDT0 (the master) gave it
(target/ost_quota.py). This module keeps those grants current:

- when an OST starts, and every SYNC_EVERY seconds after, it tells the master what it has
  in use of every limited id and learns which ids are limited now (a new OST instance holds
  no grant: it asks for what it has in use, so the master's record follows it);
- before a write that would pass a grant, it asks for more, and the write waits for the
  answer (at most ACQUIRE_WAIT while the master is away, as during an MDS failover);
- when a grant is nearly used up, it asks for more in the background, so that a stream of
  writes seldom waits;
- a client that set a limit says so (`quota_notify`): the OST learns it before answering.

A write to an OST that has not yet heard from the master waits up to READY_WAIT for it, then
goes on unenforced (the master unreachable must not stop the file system).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shoal.errors import NoDevice
from shoal.net.server import ServerConnection
from shoal.node.early_replies import keep_alive
from shoal.node.params import AT
from shoal.node.peers import PeerCalls
from shoal.protocol import messages as m
from shoal.target.base import TargetService
from shoal.target.ost import OST

log = logging.getLogger(__name__)

SYNC_EVERY = 5.0
READY_WAIT = 10.0
ACQUIRE_WAIT = 60.0
RETRY = 0.5  # between asks while the master is away


class QuotaSlaves:
    def __init__(self, peers: PeerCalls | None, services: Mapping[str, TargetService]) -> None:
        """`peers`: the way to the master; None for a node that has none (a test's bare
        node): its writes are never held."""
        self.peers = peers
        self.services = services
        self._kick = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}  # per OST: one ask at a time
        self._background: set[asyncio.Task[bool]] = set()
        self.asks = 0  # asks the master answered
        self.waits = 0  # writes that waited for a grant

    def kick(self) -> None:
        """An OST started: sync now."""
        self._kick.set()

    async def run(self) -> None:
        if self.peers is None:
            return
        while True:
            try:
                async with asyncio.timeout(SYNC_EVERY):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            for svc in list(self.services.values()):
                if isinstance(svc, OST):
                    await self.sync(svc)

    async def sync(self, svc: OST) -> bool:
        """Tell the master what is in use here, learn the limits; False if unreachable."""
        if self.peers is None:
            return False
        first = not svc.quota.ready
        if not await self._ask(svc, svc.quota.sync_asks()):
            return False
        if first and svc.quota.limited:
            return await self._ask(svc, svc.quota.sync_asks())  # now it knows what to ask
        return True

    async def _ask(self, svc: OST, asks: list[list[Any]]) -> bool:
        lock = self._locks.setdefault(svc.name, asyncio.Lock())
        async with lock:
            assert self.peers is not None
            master = self.peers.target(svc.fs, "MDT", 0)
            if master is None:
                return False
            reply = await self.peers.call(master, "quota_acquire",
                                          {"slave": svc.name, "asks": asks})
            if reply is None or reply.status is not None:
                if reply is not None:
                    log.warning("%s: quota ask refused: %s %s", svc.name, reply.status,
                                reply.message)
                return False
            if self.services.get(svc.name) is svc:  # still served here by this instance
                svc.quota.learn(reply.data)
            self.asks += 1
            return True

    def before_write(self, svc: OST, req: m.Request) -> Awaitable[None] | None:
        """None when a write may be served at once; else what to wait for first."""
        if req.op != "write" or req.flags & m.FLAG_REPLAY or self.peers is None:
            return None
        qt = svc.quota
        if qt.ready and not qt.limited:
            return None
        owner, blocks = svc.quota_need(req)
        if not qt.ready:
            return self._until_ready(svc, owner, blocks)
        short = qt.short(owner, blocks)
        if short:
            self.waits += 1
            return self._acquire(svc, owner, blocks)
        low = qt.low(owner)
        lock = self._locks.get(svc.name)
        if low and not (lock is not None and lock.locked()):  # one ask at a time is enough
            task = asyncio.ensure_future(self._ask(svc, low))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return None

    async def _until_ready(self, svc: OST, owner: tuple[int, int, int], blocks: int) -> None:
        """The OST has not heard from the master since it started: learn the limits, then
        ask for what this write needs as any other write would."""
        deadline = time.monotonic() + READY_WAIT
        while not svc.quota.ready and time.monotonic() < deadline:
            if not await self.sync(svc):
                await asyncio.sleep(RETRY)
        if not svc.quota.ready:
            log.warning("%s: no word from the quota master in %.0f s: a write goes on "
                        "unenforced", svc.name, READY_WAIT)
            return
        if svc.quota.short(owner, blocks):
            await self._acquire(svc, owner, blocks)

    async def _acquire(self, svc: OST, owner: tuple[int, int, int], blocks: int) -> None:
        """Ask until the master answers (the write then fits, or is refused with EDQUOT)."""
        deadline = time.monotonic() + ACQUIRE_WAIT
        while time.monotonic() < deadline:
            asks = svc.quota.short(owner, blocks)
            if not asks or await self._ask(svc, asks):
                return
            await asyncio.sleep(RETRY)

    async def then(self, wait: Awaitable[None], conn: ServerConnection, svc: OST,
                   req: m.Request, serve: Callable[[], m.Reply | Awaitable[m.Reply]]) -> m.Reply:
        """A write that waits for a grant first, then is served; early replies keep its
        client from resending it meanwhile."""
        stop = keep_alive(lambda extra: conn.send(m.EarlyReply(req.xid, extra)),
                          time.monotonic(), AT)
        try:
            await wait
        finally:
            stop()
        if self.services.get(req.target) is not svc:
            exc = NoDevice(f"{req.target} is not served here any more")
            return m.Reply(req.xid, exc.errno_name, str(exc))
        reply = serve()
        return reply if isinstance(reply, m.Reply) else await reply

    async def notified(self, svc: OST, req: m.Request) -> m.Reply:
        """A limit was set: learn it before answering."""
        ok = await self.sync(svc)
        return m.Reply(req.xid, None, "", 0, svc.last_committed, {"synced": ok})

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()


__all__ = ["QuotaSlaves"]
