"""What a target keeps for each client so that a resend or a replay is answered, never done
twice (Lustre's tgt_lastrcvd): the client's last_rcvd slot (its last xid and transno) and the
reply data of its changes that it has not yet acknowledged.

It lives in memory and reaches the disk with the target's commits: `take()` hands a commit
what changed since the last one (last_rcvd.py writes the rows), `restore()` puts back what a
failed commit did not write, and `committed()` answers the connects that waited for their
new slot to be on disk.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from shoal.target.last_rcvd import FREE_SLOT, CachedReply, CommitBatch, pack_result

Slot = tuple[int, int]  # (last xid, last transno)


class ClientTable:
    def __init__(self) -> None:
        self.replies: dict[str, dict[int, CachedReply]] = defaultdict(dict)
        self.slots: dict[str, Slot] = {}
        self._uncommitted: list[tuple[str, int, int, bytes]] = []  # reply rows to write
        self._forget: dict[str, int] = {}  # client: drop its reply rows below this xid
        self._dirty: dict[str, Slot] = {}  # slots to write (FREE_SLOT: to free)
        self._new: set[str] = set()  # slots given but not on disk yet
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # client: the highest known_xid it sent; every request below it has had its reply
        # (or was given up), so a copy of one that comes now is a dead connection's
        self.answered_below: dict[str, int] = {}

    def load(self, replies: dict[str, dict[int, CachedReply]], slots: dict[str, Slot]) -> None:
        """What the device held at open."""
        for client, cache in replies.items():
            self.replies[client].update(cache)
        self.slots.update(slots)

    # -- the request path --------------------------------------------------------------------
    def cached(self, client: str, xid: int) -> CachedReply | None:
        return self.replies.get(client, {}).get(xid)

    def record(self, client: str, xid: int, cached: CachedReply) -> None:
        """A change was done for `client`'s request `xid`: keep its reply for a resend."""
        self.replies[client][xid] = cached
        self._uncommitted.append((client, xid, cached.transno, pack_result(cached)))
        self._dirty[client] = self.slots[client] = (xid, cached.transno)

    def forget_below(self, client: str, known_xid: int) -> None:
        """The client has its replies below `known_xid`: their data may go."""
        if known_xid > self.answered_below.get(client, 0):
            self.answered_below[client] = known_xid
        cache = self.replies.get(client)
        if not cache:
            return
        if known_xid > self._forget.get(client, 0):
            self._forget[client] = known_xid
            for xid in [x for x in cache if x < known_xid]:
                del cache[xid]

    def slot_reached(self, client: str, transno: int) -> bool:
        """Whether the client's slot, written in the same commits as its changes, has
        reached `transno`: a change of it at or below that is committed."""
        slot = self.slots.get(client)
        return slot is not None and slot[1] >= transno

    # -- clients coming and going ------------------------------------------------------------
    def add(self, client: str) -> bool:
        """Give `client` a slot if it has none; True while that slot is not on disk yet."""
        if client not in self.slots:
            self._dirty[client] = self.slots[client] = (0, 0)
            self._new.add(client)
        return client in self._new

    def wait_slot(self, client: str) -> asyncio.Future[None]:
        """Done once the client's new slot is on disk (a commit after this call)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(client, []).append(fut)
        return fut

    def stale(self, client: str, xid: int) -> bool:
        """Whether request `xid` of `client` is one it has had the reply to (or gave up)."""
        return xid < self.answered_below.get(client, 0)

    def restarted(self, client: str) -> None:
        """The client connects anew, as a new process: its xids start again."""
        self.answered_below.pop(client, None)

    def forget_client(self, client: str) -> bool:
        """Drop the client's slot and reply data, in memory now and on disk with the next
        commit; False if there was nothing to drop."""
        cache = self.replies.pop(client, {})
        slot = self.slots.pop(client, None)
        if slot is None and not cache:
            return False
        # reply data rows of the old export go with the next commit; rows of a new export
        # under the same uuid have higher xids (a client's xids only grow), so they stay
        top = max([*cache, slot[0] if slot else 0]) + 1
        self._forget[client] = max(self._forget.get(client, 0), top)
        self._dirty[client] = FREE_SLOT
        return True

    # -- commits -----------------------------------------------------------------------------
    def changed(self) -> bool:
        """Something to write although no transno moved."""
        return bool(self._forget or self._dirty)

    def take(self, upto: int) -> CommitBatch:
        """Everything to write in a commit up to transno `upto`, no longer kept here."""
        batch = CommitBatch(upto, self._uncommitted, self._forget, self._dirty)
        self._uncommitted, self._forget, self._dirty = [], {}, {}
        return batch

    def restore(self, batch: CommitBatch) -> None:
        """Put a failed commit's rows back in front of what came since."""
        self._uncommitted = batch.replies + self._uncommitted
        for client, known in batch.forget.items():
            self._forget[client] = max(known, self._forget.get(client, 0))
        self._dirty = {**batch.slots, **self._dirty}

    def committed(self, batch: CommitBatch) -> None:
        """`batch` is on disk: the connects waiting for its new slots are answered."""
        for client, slot in batch.slots.items():
            if slot == FREE_SLOT:
                continue  # freed, then given again since: the next batch writes it
            self._new.discard(client)
            for fut in self._waiters.pop(client, ()):
                if not fut.done():
                    fut.set_result(None)

    def drop_waiters(self) -> Iterable[asyncio.Future[None]]:
        """The connects still waiting (the target stops): for the caller to fail."""
        waiting, self._waiters = self._waiters, {}
        return [fut for futs in waiting.values() for fut in futs]
