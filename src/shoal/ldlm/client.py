"""A client's locks and what it caches under them (Lustre's client-side ldlm namespace).

Each granted lock carries what the client may cache while it holds it (the attributes an
inodebits lock came with, say). A lookup first looks for a held lock that covers what it
needs (`match`): a lock of the same or a stronger mode on the resource whose bits include
the ones asked for, or whose extent contains the bytes; a hit needs no round trip.

A lock goes when:
- the server calls it back (`called_back`): what it covered is dropped at once, and its
  handle is queued for a cancel to the server (after the caller flushes what it must);
- the cache holds more than `limit` locks: the least recently used ones are cancelled
  (Lustre's lru_size);
- the client is about to ask for a lock that conflicts with one of its own (`early_cancel`,
  Lustre's ELC): it cancels its own first and sends the handles with the request, saving
  the server a callback and a round trip;
- its import is evicted (`clear`): nothing it covered can be trusted any more.

After a failover the locks still held are replayed (`held`), and the new server's handles
replace the old ones (`rehandle`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from shoal.protocol.ldlm import Mode, Policy, Resource, conflicts, covers

LRU_SIZE = 10_000  # locks a client keeps before it cancels the least recently used

@dataclass(eq=False)
class HeldLock:
    handle: int
    resource: Resource
    mode: Mode
    policy: Policy
    data: Any = None  # what the client caches under it


class LockCache:
    def __init__(self, *, limit: int = LRU_SIZE,
                 dropped: Callable[[HeldLock], None] = lambda lk: None) -> None:
        self.limit = limit
        self.dropped = dropped  # told of every lock that goes, to drop what it covered
        self._locks: OrderedDict[int, HeldLock] = OrderedDict()  # least recently used first
        self._by_resource: dict[Hashable, set[int]] = {}
        self.to_cancel: list[int] = []  # handles the server must be told of
        self.stats = {"hits": 0, "misses": 0, "callbacks": 0, "lru": 0, "early": 0}

    def __len__(self) -> int:
        return len(self._locks)

    def add(self, handle: int, resource: Resource, mode: Mode, policy: Policy,
            data: Any = None) -> HeldLock:
        """A lock the server granted; the least recently used go past `limit`."""
        lk = HeldLock(handle, resource, mode, policy, data)
        self._locks[handle] = lk
        self._by_resource.setdefault(resource, set()).add(handle)
        while len(self._locks) > self.limit:
            oldest = next(iter(self._locks))
            self.stats["lru"] += 1
            self._drop(oldest, cancel=True)
        return lk

    def match(self, resource: Resource, mode: Mode, policy: Policy) -> HeldLock | None:
        """A held lock that serves (mode, policy) on `resource`, made most recently used."""
        for handle in self._by_resource.get(resource, ()):
            lk = self._locks[handle]
            if covers(lk.mode, lk.policy, mode, policy):
                self._locks.move_to_end(handle)
                self.stats["hits"] += 1
                return lk
        self.stats["misses"] += 1
        return None

    def touch(self, lk: HeldLock | None) -> HeldLock | None:
        """A lock the caller found by its own index, used now (most recently used), or the
        miss of none; counted as match() counts."""
        if lk is None:
            self.stats["misses"] += 1
            return None
        self._locks.move_to_end(lk.handle)
        self.stats["hits"] += 1
        return lk

    def called_back(self, handle: int) -> HeldLock | None:
        """The server wants the lock back: drop what it covered, queue its cancel. None if
        the client no longer holds it (cancelled already: the server hears of that)."""
        lk = self.cancel(handle)
        if lk is not None:
            self.stats["callbacks"] += 1
        return lk

    def cancel(self, handle: int) -> HeldLock | None:
        """Give a held lock back of the client's own accord (its cancel is queued); None if
        it is not held."""
        if handle not in self._locks:
            return None
        return self._drop(handle, cancel=True)

    def forget(self, handle: int) -> HeldLock | None:
        """Drop a lock the server does not hold (or has been told of already): nothing to
        cancel. None if it is not held."""
        if handle not in self._locks:
            return None
        return self._drop(handle, cancel=False)

    def early_cancel(self, resource: Resource, mode: Mode, policy: Policy) -> list[int]:
        """Cancel this client's own locks that a request for (mode, policy) would conflict
        with; their handles go with the request."""
        out = []
        for handle in sorted(self._by_resource.get(resource, ())):
            lk = self._locks[handle]
            if conflicts(lk.mode, lk.policy, mode, policy):
                self._drop(handle, cancel=False)
                out.append(handle)
        self.stats["early"] += len(out)
        return out

    def take_cancels(self) -> list[int]:
        """The handles queued for a cancel RPC (emptied)."""
        out, self.to_cancel = self.to_cancel, []
        return out

    def held(self) -> list[HeldLock]:
        """Every lock held, for replay after a failover."""
        return list(self._locks.values())

    def rehandle(self, old: int, new: int) -> None:
        """The new server granted the replayed lock `old` under handle `new`."""
        lk = self._locks.pop(old)
        lk.handle = new
        self._locks[new] = lk
        ids = self._by_resource[lk.resource]
        ids.discard(old)
        ids.add(new)

    def clear(self) -> None:
        """Evicted: every lock is gone on the server already; drop what they covered."""
        for handle in list(self._locks):
            self._drop(handle, cancel=False)
        self.to_cancel.clear()

    def _drop(self, handle: int, *, cancel: bool) -> HeldLock:
        lk = self._locks.pop(handle)
        ids = self._by_resource[lk.resource]
        ids.discard(handle)
        if not ids:
            del self._by_resource[lk.resource]
        if cancel:
            self.to_cancel.append(handle)
        self.dropped(lk)
        return lk
