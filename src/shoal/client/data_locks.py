"""A client's extent locks on one OST's objects, under which it keeps file data (issue 20).

The mount keeps a file's pages in the kernel, and buffers its writes, only under a lock on
each object of the file's layout: PR to keep what it read, PW to buffer writes (a PW lock
serves reads as well). One lock per object, asked for over the whole object
(node/data_locks.py). The library keeps no data and holds none: its reads and writes take
a lock on the server's side, which calls back what others keep.

- `hold(oid, mode)`: the lock's handle, asked for if not held (an upgrade from PR to PW
  keeps what the PR lock covered where nothing waits on the object, and otherwise gives
  it up first, with what it covered: `_enqueue`). A lock being called back serves no
  new user: `hold` waits for it to go and asks again, behind the lock that called it back.
- `handle_for(oid, mode)`: the handle a read or write names when it is sent (the server
  serves it under that lock, even while it is being called back: the holder lands its
  buffered writes before it cancels).
- A callback runs the holder's `release(oid, mode)` (land what was buffered, drop the
  pages), then the cancel goes. A callback that overtakes its grant's reply is remembered,
  and the grant is given back when it comes.
- At most `limit` locks are held; the least recently used go first (Lustre's lru_size),
  as if called back.
- `reset()`: the server has dropped every lock of this client (it connected again, or was
  evicted): what they covered is dropped.
- After a failover the locks are replayed inside the new server's recovery window, before
  anyone's new request is served there (Lustre's REPLAY_LOCKS): `suspend()` as the import
  connects, `replayable()` for the replay, `replayed(granted)` with the answer. A lock
  granted again keeps what it covers (the pages, the buffered writes) under its new handle;
  the others go as if called back. So a write buffered before the failover still lands
  before another client's read or write of those bytes after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from shoal.errors import ShoalError
from shoal.ldlm.client import HeldLock
from shoal.protocol.ldlm import CANCEL_OP, ENQUEUE_OP, Extent, Mode

log = logging.getLogger(__name__)

EARLY_KEPT = 1024  # callbacks remembered for grants whose replies have not come yet
LRU_SIZE = 4096  # locks held before the least recently used go


def serves(held: Mode, wanted: Mode) -> bool:
    return held is Mode.PW or wanted is Mode.PR


def under_lock(dl: DataLocks | None, args: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """`args` of a read, write or punch of object args["oid"], naming the lock of `mode`
    this client holds on it, if any: the OST then serves the request under it instead of
    taking one of its own (node/data_locks.py), which would call this client's back."""
    if dl is not None and (handle := dl.handle_for(args["oid"], mode)) is not None:
        args["lock"] = handle
    return args


def note_served(served: dict[int, int | None], ost: int, handle: int | None) -> None:
    """Record that bytes from OST `ost` were read under `handle`: a read's parts served
    under different locks of one OST count as under none."""
    served[ost] = handle if served.get(ost, handle) == handle else None


class DataLocks:
    def __init__(self, call: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]],
                 release: Callable[[Mode, Any], Awaitable[None]], *,
                 limit: int = LRU_SIZE) -> None:
        self._call = call  # an RPC to the OST: its reply's data
        self._release_hook = release  # (mode, what the holder said the lock was for)
        self.limit = limit
        self._held: OrderedDict[int, HeldLock] = OrderedDict()  # by object, LRU first
        self._asking: dict[int, asyncio.Future[None]] = {}  # by object: an enqueue on its way
        self._releasing: dict[int, asyncio.Task[None]] = {}  # by handle
        self._early: dict[int, None] = {}  # handles called back before their grant came
        self._intent: dict[int, int] = {}  # by object: a read asking for a lock, its generation
        self._sending: set[asyncio.Task[None]] = set()  # cancels on their way
        self._upgrading: dict[int, HeldLock] = {}  # by handle: PR locks being upgraded
        self.generation = 0
        # between a failover's connect and the lock replay: held, not served under
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.stats = {"enqueues": 0, "callbacks": 0, "upgrades": 0, "kept": 0, "lru": 0,
                      "replayed": 0, "not_replayed": 0}

    def __len__(self) -> int:
        return len(self._held)

    def handle_for(self, oid: int, mode: Mode) -> int | None:
        lk = self._held.get(oid)
        return lk.handle if lk is not None and serves(lk.mode, mode) else None

    def holds(self, oid: int, mode: Mode) -> bool:
        """Held, and not being called back: what it covers may be kept."""
        lk = self._held.get(oid)
        return (lk is not None and serves(lk.mode, mode) and lk.handle not in self._releasing
                and self._resumed.is_set())

    @property
    def suspended(self) -> bool:
        return not self._resumed.is_set()

    async def hold(self, oid: int, mode: Mode, data: Any = None) -> int:
        """The handle of a lock of `mode` (or stronger) on object `oid`, asked for if need
        be; `data` goes to the release hook when it goes."""
        while True:
            if not self._resumed.is_set():
                await self._resumed.wait()
                continue
            lk = self._held.get(oid)
            if lk is not None and lk.handle in self._releasing:
                await asyncio.shield(self._releasing[lk.handle])
                continue
            if lk is not None and serves(lk.mode, mode):
                self._held.move_to_end(oid)
                return lk.handle
            asking = self._asking.get(oid)
            if asking is not None:
                await asyncio.shield(asking)
                continue
            handle = await self._enqueue(oid, mode, lk, data)
            if handle is not None:
                self._trim()
                return handle

    def _trim(self) -> None:
        """Past `limit`, the least recently used go, as if called back."""
        over = len(self._held) - len(self._releasing) - self.limit
        if over <= 0:
            return  # as after every grant: no copy of the whole LRU for nothing
        for lk in list(self._held.values()):
            if over <= 0:
                break
            if lk.handle not in self._releasing:
                self.stats["lru"] += 1
                self._releasing[lk.handle] = asyncio.get_running_loop().create_task(
                    self._release(lk, cancel=True))
                over -= 1

    async def _enqueue(self, oid: int, mode: Mode, upgrade: HeldLock | None,
                       data: Any) -> int | None:
        """One enqueue: the handle, or None to look again (a reset or a callback came).

        An upgrade asks the OST to swap our PR lock for PW and to keep what the PR lock
        covered (the kernel's pages): it does where nothing waits on the object
        (node/data_locks.py). Where something does, the PR lock stays (`again`): its pages
        go first, while it still holds the waiting writer back, and then it goes with a
        plain enqueue, as every upgrade once did. Dropped first every time, the pages
        waited on the very page whose writeback asked for the PW lock (half a second a
        write into a file the mount had read). While the upgrade is on its way the PR lock
        is `_upgrading`: a callback for it is a waiting writer (it goes as any lock does),
        a reset drops its pages, and a callback for a handle not known yet, perhaps the
        new lock's, is answered once the pages of every upgrade then on its way are
        dropped (`called_back`: SETTLE_WAIT at most, not the upgrade's own wait)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asking[oid] = done
        given = upgrade if upgrade is not None and self._held.get(oid) is upgrade else None
        try:
            args: dict[str, Any] = {"oid": oid, "mode": mode.name, "cancel": []}
            if given is not None:
                self.stats["upgrades"] += 1
                del self._held[oid]
                self._upgrading[given.handle] = given
                args.update(cancel=[given.handle], upgrade=True)
            gen = self.generation
            self.stats["enqueues"] += 1
            try:
                reply = await self._call(ENQUEUE_OP, args)
                if given is not None and reply.get("again") is True:
                    if given.handle in self._releasing or gen != self.generation:
                        return None  # called back (or dropped) meanwhile: look again
                    await self._told(given)
                    self.stats["enqueues"] += 1
                    reply = await self._call(ENQUEUE_OP, {"oid": oid, "mode": mode.name,
                                                          "cancel": [given.handle]})
                    given = None  # its pages are gone
                elif given is not None:
                    self.stats["kept"] += 1
            except BaseException:
                if given is not None:
                    self._drop(given)
                raise
            handle = int(reply["handle"])
            if gen != self.generation:
                return None  # the server dropped our locks meanwhile: this one too
            if handle in self._early:  # called back before we knew it
                del self._early[handle]
                if given is None:
                    self._send_cancel([handle])
                else:  # the pages it was to keep go before it does (even if cancelled)
                    await asyncio.shield(self._background(
                        self._dropped_then_cancel([given], None, handle)))
                return None
            self._held[oid] = HeldLock(handle, ("oid", oid), Mode[str(reply["mode"])],
                                       Extent(int(reply["start"]), int(reply["end"])), data)
            return handle
        finally:
            del self._asking[oid]
            done.set_result(None)
            if upgrade is not None:
                self._upgrading.pop(upgrade.handle, None)

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return task

    async def _dropped_then_cancel(self, locks: list[HeldLock],
                                   release: asyncio.Task[None] | None, handle: int) -> None:
        """Cancel `handle` once what `locks` covered is dropped and `release` is over."""
        await asyncio.gather(*(self._told(lk) for lk in locks))
        if release is not None:
            await asyncio.wait({release})
        await self._cancel([handle])

    def ask_with_read(self, oid: int) -> bool:
        """Whether a read of `oid` should ask for a PR lock with it (node/data_locks.py):
        none held and none asked for. If so, `learn` must follow with its answer."""
        if oid in self._held or oid in self._asking or oid in self._intent:
            return False
        self._intent[oid] = self.generation
        return True

    def learn(self, oid: int, granted: Any, data: Any) -> int | None:
        """The answer to a read that asked for a lock: `granted` ([handle, mode, start,
        end]) or None (refused, or the read failed). The handle now held under which the
        read was served, or None (none granted, or given back at once: it was called back
        first, or another lock on the object came meanwhile)."""
        gen = self._intent.pop(oid, None)
        if not (isinstance(granted, list) and len(granted) == 4):
            return None
        handle = int(granted[0])
        if gen != self.generation:
            return None  # the server dropped our locks since: this one too
        if handle in self._early or oid in self._held:  # called back first, or held anew
            self._early.pop(handle, None)
            self._send_cancel([handle])
            return None
        self._held[oid] = HeldLock(handle, ("oid", oid), Mode[str(granted[1])],
                                   Extent(int(granted[2]), int(granted[3])), data)
        self._trim()
        return handle

    def still_under(self, oid: int, handle: int | None) -> bool:
        """Whether bytes of `oid` read under lock `handle` (None: under no lock of ours)
        may be kept now: that very lock is still held, and not being called back. Another
        lock held now is not enough: it may have come after the read was served."""
        return handle is not None and self.handle_for(oid, Mode.PR) == handle \
            and self.holds(oid, Mode.PR)

    def called_back(self, handle: int) -> None:
        lk = (next((x for x in self._held.values() if x.handle == handle), None)
              or self._upgrading.get(handle))
        if lk is None:
            if self._asking or self._intent:  # perhaps a grant still on its way
                self._early[handle] = None
                while len(self._early) > EARLY_KEPT:
                    self._early.pop(next(iter(self._early)))
            release = self._releasing.get(handle)  # a lock given up on its way, dropping
            if self._upgrading or release is not None:
                # perhaps an upgrade's new lock, or its PR lock let go after a failure: what
                # they were to keep goes first
                self._background(self._dropped_then_cancel(
                    list(self._upgrading.values()), release, handle))
                return
            self._send_cancel([handle])
            return
        if handle in self._releasing:
            return
        self.stats["callbacks"] += 1
        task = asyncio.get_running_loop().create_task(self._release(lk, cancel=True))
        self._releasing[handle] = task

    async def _told(self, lk: HeldLock) -> None:
        """The holder's release hook for `lk`: what it covered is landed and dropped."""
        try:
            await self._release_hook(lk.mode, lk.data)
        except ShoalError as exc:
            log.warning("object %d: lock %d given back after a failure: %s", lk.resource[1],
                        lk.handle, exc)
        except Exception:
            log.exception("object %d: releasing lock %d failed", lk.resource[1], lk.handle)

    async def _release(self, lk: HeldLock, *, cancel: bool) -> None:
        oid = lk.resource[1]
        try:
            await self._told(lk)
        finally:
            if self._held.get(oid) is lk:
                del self._held[oid]
            self._releasing.pop(lk.handle, None)
        if cancel:
            await self._cancel([lk.handle])

    def reset(self) -> None:
        """The server holds none of our locks any more: drop what they covered."""
        self.generation += 1
        self._early.clear()
        for lk in [*self._held.values(), *self._upgrading.values()]:
            self._drop(lk)
        self._resumed.set()

    def _drop(self, lk: HeldLock) -> None:
        if lk.handle not in self._releasing:
            self._releasing[lk.handle] = asyncio.get_running_loop().create_task(
                self._release(lk, cancel=False))

    # -- a failover --------------------------------------------------------------------
    def suspend(self) -> None:
        """Connected to a new server in its recovery window: keep the locks and what they
        cover until the replay's answer; a grant on its way from the old server is void."""
        self.generation += 1
        self._early.clear()
        for lk in self._upgrading.values():  # given up on its way: not replayed, pages go
            self._drop(lk)
        self._resumed.clear()

    def replayable(self) -> list[list[Any]]:
        """What the replay asks for: [handle, oid, mode] of each lock held, those being
        called back too: their writes are still landing, and must land before the request
        that called them back is served again after the failover."""
        return [[lk.handle, oid, lk.mode.name] for oid, lk in self._held.items()]

    def replayed(self, granted: Any) -> None:
        """The new server's answer, [old handle, new handle] for each lock it granted
        again (anything else: none): those are held under their new handles, the others
        go with what they covered."""
        again: dict[int, int] = {}
        if isinstance(granted, list):
            for pair in granted:
                if (isinstance(pair, list) and len(pair) == 2
                        and all(isinstance(h, int) for h in pair)):
                    again[pair[0]] = pair[1]
        for lk in list(self._held.values()):
            new = again.get(lk.handle)
            if new is None:
                self.stats["not_replayed"] += 1
                self._drop(lk)
            else:
                self.stats["replayed"] += 1
                if (task := self._releasing.pop(lk.handle, None)) is not None:
                    self._releasing[new] = task  # its cancel names the new handle
                lk.handle = new
        self._resumed.set()

    def _send_cancel(self, handles: list[int]) -> None:
        self._background(self._cancel(handles))

    async def _cancel(self, handles: list[int]) -> None:
        try:
            await self._call(CANCEL_OP, {"handles": handles})
        except ShoalError as exc:
            log.debug("lock cancels not sent (%s): the server drops them at reconnect", exc)

    async def close(self) -> None:
        self._resumed.set()  # nobody waits for a replay that will not come
        for task in [*self._releasing.values(), *self._sending]:
            task.cancel()
