"""The agent's fencing: one fence of a partner for every target that needs it, in two halves.

A fence orders the node off and then checks that it is off (fence/agent.py: `action=off`,
then `action=status`; a real BMC or PDU takes seconds for each). The order must come before
anything of the node's is taken; the check only before its device is mounted. So the order
is given first (`power_off`), and the check runs on while the taker wins the owner key and
claims the MMP block (which itself refuses a node that still writes); the takeover awaits it
(`verified`) before it starts the target.

Takeovers of several of a node's targets, and the partner watch, share one fence: a node
fenced within a TTL is not fenced again. A failed check forgets the fence, so the next
attempt orders the node off again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shoal.agent.records import FenceRecord, dump, fenced_key
from shoal.errors import StoreError
from shoal.fence.base import FenceDriver, FenceFailed, FenceResult
from shoal.store.base import Store

log = logging.getLogger(__name__)

FENCE_RETRY = 5.0  # seconds before trying again after a failed fence


@dataclass
class Fencing:
    """One fence of one instance of a node."""

    at: float  # monotonic: when the off order succeeded
    instance: str  # the boot id it was aimed at
    off: FenceResult  # what the order did
    check: asyncio.Task[FenceResult]  # the check that the node is off


class Fencer:
    def __init__(self, me: str, store: Store, ttl: float,
                 driver: Callable[[str], FenceDriver]) -> None:
        self.me = me
        self.store = store
        self.ttl = ttl
        self.driver = driver  # the driver for a node, made afresh (its settings may change)
        self._locks: dict[str, asyncio.Lock] = {}
        self._fenced: dict[str, Fencing] = {}

    def _current(self, node: str) -> Fencing | None:
        f = self._fenced.get(node)
        if f is None or time.monotonic() - f.at >= self.ttl:
            return None
        if f.check.done() and (f.check.cancelled() or f.check.exception() is not None):
            return None  # not verified: it counts for nothing
        return f

    async def power_off(self, node: str, instance: str) -> FenceResult:
        """Order `node` off (its process `instance`, a boot id) unless that was done within
        a TTL; raises FenceFailed if the order fails. The check that it is off runs on."""
        async with self._locks.setdefault(node, asyncio.Lock()):
            recent = self._current(node)
            if recent is not None:
                return recent.off
            off, verified = await self.driver(node).begin(node, instance)
            check = asyncio.get_running_loop().create_task(self._check(node, verified))
            check.add_done_callback(_quiet)
            self._fenced[node] = Fencing(time.monotonic(), instance, off, check)
            return off

    async def _check(self, node: str, verified: Callable[[], Awaitable[FenceResult]]
                     ) -> FenceResult:
        result = await verified()
        try:
            await self.store.put(fenced_key(node), dump(FenceRecord(
                node, self.me, result.method, time.time(), result.detail)))
        except StoreError as exc:
            log.warning("fence record for %s not stored: %s", node, exc)
        return result

    async def verified(self, node: str) -> FenceResult | None:
        """The checked result of this node's fence of `node` (None: it fenced nothing there
        lately); raises FenceFailed when the check failed."""
        f = self._fenced.get(node)
        if f is None or time.monotonic() - f.at >= self.ttl and f.check.done():
            return None
        try:
            return await asyncio.shield(f.check)
        except asyncio.CancelledError:
            if f.check.cancelled():
                raise FenceFailed(f"the check that {node} is off was cancelled") from None
            raise

    def fenced_recently(self, node: str, instance: str) -> bool:
        """Whether this node ordered that instance of `node` off within a TTL (and its check
        has not failed)."""
        f = self._current(node)
        return f is not None and f.instance == instance


def _quiet(task: asyncio.Task[FenceResult]) -> None:
    """A failed check is reported to whoever awaits it; unawaited, it is only logged."""
    if not task.cancelled() and task.exception() is not None:
        log.info("fence check: %s", task.exception())
