"""Read-only opens kept past their close, under the MDT's OPEN lock (Lustre's open cache).

A program start opens hundreds of files read-only, and each open and close is an MDT round
trip. A read-only open of a file asks for an OPEN lock with its reply (node/locks.py); while
the client holds it, a close keeps the MDT's handle instead of sending a close, and the next
read-only open of the same file takes it again with no round trip. The server calls the lock
back when the file loses a name (it may have lost its last: the orphan must not wait for
us); the handle is then closed as soon as nobody uses it.

A handle kept is an open the MDT keeps too (and the client replays it after a failover, as
any open not yet closed). Idle handles are closed past `limit`, least recently used first,
and whenever their lock goes: called back, pushed out of the lock LRU, or dropped at a
reconnect or an eviction (the server holds no lock of this client then; a close after an
eviction fails and is let go, the server has closed it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shoal.client.md_locks import MetadataLocks
from shoal.errors import ShoalError

log = logging.getLogger(__name__)

OPEN_KEPT = 1024  # idle handles a client keeps
NOT_KEPT = os.O_ACCMODE | os.O_CREAT | os.O_TRUNC  # an open kept must be read-only, change nothing


@dataclass(slots=True)
class KeptOpen:
    handle: int  # the MDT's open handle
    lock: int  # the OPEN lock's handle
    users: int = 0  # Files using it now
    locked: bool = True  # the lock is still held: the handle may be kept when idle


class OpenCache:
    def __init__(self, md: MetadataLocks, close: Callable[[int], Awaitable[Any]], *,
                 limit: int = OPEN_KEPT) -> None:
        self.md = md
        self._close = close  # (MDT handle): a close sent to the MDT
        self.limit = limit
        self.kept: dict[int, KeptOpen] = {}  # inode -> its kept handle
        self._idle: OrderedDict[int, None] = OrderedDict()  # inodes kept unused, LRU first
        self._closing: set[asyncio.Task[None]] = set()
        self.stats = {"hits": 0, "kept": 0, "closed": 0}
        md.on_drop.append(self._dropped)
        md.on_rehandle.append(self._rehandled)

    def take(self, ino: int) -> int | None:
        """A kept handle of inode `ino` to use, or None (an open must go to the MDT)."""
        k = self.kept.get(ino)
        if k is None or not k.locked:
            return None
        k.users += 1
        self._idle.pop(ino, None)
        self.stats["hits"] += 1
        return k.handle

    def learn(self, generation: int, ino: int, handle: int, lock: Any) -> bool:
        """An open's reply: its `handle`, and the OPEN `lock` that came with it (or None),
        for a request sent at `generation`. True if the handle is kept (its user releases
        it here instead of closing it)."""
        if generation != self.md.generation or not isinstance(lock, int) or ino in self.kept:
            if isinstance(lock, int):
                self.md.give_back(lock)
            return False
        if not self.md.keep_open(lock, ino):
            return False  # called back before its reply came
        self.kept[ino] = KeptOpen(handle, lock, users=1)
        self.stats["kept"] += 1
        return True

    def release(self, ino: int, handle: int) -> bool:
        """A File of `handle` closed: True if the handle is kept (no close to send)."""
        k = self.kept.get(ino)
        if k is None or k.handle != handle:
            return False
        k.users -= 1
        if k.users > 0:
            return True
        if not k.locked:
            del self.kept[ino]
            return False
        self._idle[ino] = None
        while len(self._idle) > self.limit:
            oldest, _ = self._idle.popitem(last=False)
            self.md.give_back(self.kept[oldest].lock)  # closes it (_dropped)
        return True

    def _dropped(self, ino: int, data: dict[str, Any], lock: int) -> None:
        k = self.kept.get(ino)
        if k is None or k.lock != lock:
            return
        k.locked = False
        if k.users == 0:
            del self.kept[ino]
            self._idle.pop(ino, None)
            task = asyncio.get_running_loop().create_task(self._send_close(k.handle))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _rehandled(self, ino: int, old: int, new: int) -> None:
        k = self.kept.get(ino)
        if k is not None and k.lock == old:
            k.lock = new  # the new server granted it again (a failover)

    async def _send_close(self, handle: int) -> None:
        try:
            await self._close(handle)
            self.stats["closed"] += 1
        except ShoalError as exc:
            log.debug("kept open handle %d: close failed (%s); the server closes it when "
                      "it drops this client", handle, exc)

    async def close_now(self, handle: int) -> None:
        """Close a handle that was not kept, and wait."""
        await self._send_close(handle)

    async def settle(self) -> None:
        """Wait for the closes under way (a test, or a client about to leave)."""
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
