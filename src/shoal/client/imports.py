"""A client's import: its connection to one target, and everything needed to survive a restart.

The import sends requests to the NID that serves its target, and when that fails it moves on
round robin over the target's failover NIDs, resending what had no reply. Every request that
got a transno stays on the replay list, ordered by (transno, xid), until the target's
last_committed passes it (invariant 1). When the target comes back in a new epoch, the list is
replayed in order before anything new is sent.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.errors import IOFailure, NoDevice, NotConnected, ShoalError, TimedOut, from_errno_name
from shoal.protocol import messages as m

if TYPE_CHECKING:
    from shoal.client.client import Client

log = logging.getLogger(__name__)

NODE_TARGET = "@node"


@dataclass(order=True)
class ReplayEntry:
    transno: int
    xid: int
    request: m.Request = field(compare=False)
    nbytes: int = field(compare=False, default=0)


class Import:
    """One client's connection state for one target."""

    def __init__(self, client: Client, target: str, kind: str, nids: list[str]) -> None:
        self.client = client
        self.target = target
        self.kind = kind
        self.nids = nids
        self.current = 0  # index into nids
        self.state = "NEW"
        self.state_history: deque[tuple[float, str]] = deque(maxlen=16)
        self.epoch = 0
        self.last_committed = 0
        self.replay: list[ReplayEntry] = []
        self.uncommitted_bytes = 0
        self.connect_attempts = 0
        self.last_tried: dict[int, float] = {}
        self._connected = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self._set_state("NEW")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.state_history.append((time.time(), state))

    @property
    def nid(self) -> str:
        return self.nids[self.current]

    # -- connecting ----------------------------------------------------------------------
    async def _ensure_connected(self) -> None:
        if self._connected.is_set() and self.state == "FULL":
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect_loop())
        await asyncio.shield(self._connecting)

    async def _connect_loop(self) -> None:
        deadline = time.monotonic() + self.client.recovery_timeout
        delay = 0.05
        while True:
            self._set_state("CONNECTING")
            self.connect_attempts += 1
            self.last_tried[self.current] = time.monotonic()
            try:
                conn = await self.client.connection(self.nid)
                reply = await conn.call(self._request("connect", {"target": self.target},
                                                      target=NODE_TARGET),
                                        timeout=self.client.connect_timeout)
                if reply.status is not None:
                    raise from_errno_name(reply.status, reply.message)
                await self._connected_to(reply.data)
                return
            except (NotConnected, TimedOut, NoDevice) as exc:
                log.debug("%s: connect via %s failed: %s", self.target, self.nid, exc)
                self._set_state("DISCONN")
                self.current = self._next_nid()
            if time.monotonic() > deadline:
                raise IOFailure(f"{self.target}: no server answered for "
                                f"{self.client.recovery_timeout:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _next_nid(self) -> int:
        """The next NID not tried since the last success, else the least recently tried."""
        untried = [i for i in range(len(self.nids)) if i not in self.last_tried]
        if untried:
            return untried[0]
        return min(range(len(self.nids)), key=lambda i: self.last_tried[i])

    async def _connected_to(self, info: dict[str, Any]) -> None:
        epoch = int(info.get("epoch", 0))
        new_life = self.epoch != 0 and epoch != self.epoch
        self.epoch = epoch
        self._observe_committed(int(info.get("last_committed", 0)))
        if new_life and self.replay:
            self._set_state("REPLAY")
            await self._replay_all()
        self.last_tried.clear()
        self._set_state("FULL")
        self._connected.set()

    async def _replay_all(self) -> None:
        conn = await self.client.connection(self.nid)
        for entry in list(self.replay):
            req = entry.request
            req.flags |= m.FLAG_REPLAY
            req.transno = entry.transno
            reply = await conn.call(req, timeout=self.client.request_timeout)
            self._observe_committed(reply.last_committed)

    def disconnect(self) -> None:
        if self._connected.is_set():
            self._connected.clear()
            self._set_state("DISCONN")

    # -- requests ------------------------------------------------------------------------
    def _request(self, op: str, args: dict[str, Any], *, target: str | None = None,
                 bulk: bytes | None = None) -> m.Request:
        return m.Request(self.client.next_xid(), op, target or self.target, args,
                         known_xid=self.client.known_xid(), bulk=bulk)

    async def call(self, op: str, args: dict[str, Any], bulk: bytes | None = None) -> m.Reply:
        """Send until a reply comes; raise the server's error as a ShoalError."""
        req = self._request(op, args, bulk=bulk)
        self.client.inflight.add(req.xid)
        try:
            reply = await self._send(req)
        finally:
            self.client.inflight.discard(req.xid)
        self._observe_committed(reply.last_committed)
        if reply.transno and reply.transno > self.last_committed:
            entry = ReplayEntry(reply.transno, req.xid, req, len(bulk) if bulk else 0)
            bisect.insort(self.replay, entry)
            self.uncommitted_bytes += entry.nbytes
            self.client.uncommitted_bytes += entry.nbytes
        if reply.status is not None:
            raise from_errno_name(reply.status, reply.message)
        return reply

    async def _send(self, req: m.Request) -> m.Reply:
        deadline = time.monotonic() + self.client.recovery_timeout
        while True:
            await self._ensure_connected()
            try:
                conn = await self.client.connection(self.nid)
                reply = await conn.call(req, timeout=self.client.request_timeout)
            except (NotConnected, TimedOut) as exc:
                log.debug("%s: %s xid %d via %s: %s", self.target, req.op, req.xid, self.nid, exc)
                self.disconnect()
                req.flags |= m.FLAG_RESEND
                if time.monotonic() > deadline:
                    raise IOFailure(f"{self.target}: {req.op} got no reply") from None
                continue
            if reply.status == "ENODEV":
                # the target is not (or no longer) served there: find where it went
                self.disconnect()
                self.current = self._next_nid()
                req.flags |= m.FLAG_RESEND
                if time.monotonic() > deadline:
                    raise NoDevice(reply.message)
                await asyncio.sleep(0.05)
                continue
            return reply

    def _observe_committed(self, last_committed: int) -> None:
        if last_committed < self.last_committed and last_committed >> 32 == self.epoch:
            log.warning("%s: server went back in time (last_committed %#x < %#x)",
                        self.target, last_committed, self.last_committed)
        if last_committed <= self.last_committed:
            return
        self.last_committed = last_committed
        cut = bisect.bisect_right(self.replay, last_committed, key=lambda e: e.transno)
        if cut:
            freed = sum(e.nbytes for e in self.replay[:cut])
            del self.replay[:cut]
            self.uncommitted_bytes -= freed
            self.client.uncommitted_bytes -= freed

    async def sync(self) -> None:
        """Force the target to commit (the reply waits for it) and drop what it covered."""
        try:
            await self.call("sync", {})
        except ShoalError as exc:
            log.warning("%s: sync failed: %s", self.target, exc)
            raise
