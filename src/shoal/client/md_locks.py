"""What a client keeps of the MDT under its locks (issue 20): attributes and names.

Under a PR lock on an inode (the UPDATE bit) the client keeps that inode's attributes and,
for a directory, the names it looked up in it and its listing; a getattr or lookup that finds them needs no
round trip. The server calls the lock back before it acknowledges any change to the inode
(node/locks.py), so nothing kept here is older than an acknowledged change:

- a read made while the lock is held is kept with it; a callback that arrives first has
  dropped the lock, and the read is then not kept;
- a callback can overtake the grant it is about (the server granted, then a change called
  it back, before the reply went out): its handle is remembered, and the grant, when its
  reply comes, is given back at once;
- after the import connects again to the same server, or is evicted, the server has dropped
  every lock of this client: so does the cache (`reset`), and replies to requests sent
  before are not kept;
- after a failover (the import connects to a server in recovery) what is kept stays but is
  not served (`suspend`: the namespace waits on `usable`) until the new server has answered
  the lock replay sent once its window closed (`replayable`, `replayed`): the locks it
  granted take their new handles, the others go with what they kept.

Cancels are sent in batches, in the background; one that fails changes nothing (the
server drops this client's locks when it next connects).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from shoal.client import md_changes as changes
from shoal.client.md_carry import ABSENT_KEPT, DirCarry
from shoal.errors import ShoalError
from shoal.ldlm.client import LRU_SIZE, HeldLock, LockCache
from shoal.protocol.ldlm import Bits, Mode
from shoal.protocol.messages import ROOT_INO

log = logging.getLogger(__name__)

BITS = Bits.UPDATE  # attributes, and a directory's entries
NAME_BITS = Bits.LOOKUP  # the names an inode was looked up (or made) by
OPEN_BITS = Bits.OPEN  # a read-only open handle kept past its close (client/open_cache.py)
EARLY_KEPT = 4096  # callbacks remembered for grants whose replies have not come yet
_DOTS = (".", "..")  # never kept as names (client/namespace.py answers them)


def _res(ino: int) -> tuple[str, int]:
    return ("ino", ino)


class MetadataLocks:
    def __init__(self, cancel: Callable[[list[int]], Awaitable[object]], *,
                 limit: int = LRU_SIZE) -> None:
        self._send_cancel = cancel
        self.cache = LockCache(limit=limit, dropped=self._dropped)
        self.generation = 0  # bumped at each reset: older replies are not kept
        self._early: OrderedDict[int, None] = OrderedDict()
        # (directory, name) -> inode, kept under the inode's own lock (its data's "bound")
        self._bound: dict[tuple[int, str], int] = {}
        # the lock each inode's attributes (UPDATE) and names (LOOKUP) are kept under: this
        # client holds at most one of each per inode (_take), and a cached stat finds them
        # here rather than by a match over the resource's locks
        self._update: dict[int, HeldLock] = {}
        self._lookup: dict[int, HeldLock] = {}
        self._flushing: asyncio.Task[None] | None = None
        # (ino, what was kept, the lock's handle), for every lock that goes
        self.on_drop: list[Callable[[int, dict[str, Any], int], None]] = []
        # awaited with the handles about to be cancelled, and those of them called back for
        # this client's own change: what others keep of what those locks covered is gone
        # first
        self.before_cancel: list[Callable[[list[int], list[int]], Awaitable[None]]] = []
        # (ino, old handle, new handle), for every lock a failover's replay kept
        self.on_rehandle: list[Callable[[int, int, int], None]] = []
        # (ino, what was kept, the lock's handle), for every lock held over a failover:
        # what others were handed of it (the kernel) must be asked again, as it is here
        self.on_suspend: list[Callable[[int, dict[str, Any], int], None]] = []
        self._ready = asyncio.Event()
        self._ready.set()
        self._held_over: set[int] = set()
        # the names an own change makes or removes, while its early cancel drops the locks
        # they were kept under: what others were handed of them need not be forgotten (the
        # kernel sets those names from the change's reply), unless the change fails
        self.spared: frozenset[tuple[int, str]] = frozenset()
        self.on_unspared: list[Callable[[list[tuple[int, str]]], None]] = []
        # directories' locks set aside through an own change in them (client/md_carry.py)
        self.carry = DirCarry(self)
        self._quiet = False  # a lock set aside goes without telling on_drop
        # handles called back for this client's own change: what others were handed of them
        # (the kernel's entries) is forgotten as for any, but the cancel waits for it only a
        # moment: the kernel forgets an entry under its directory's lock, which that very
        # change may hold until its reply comes, and the reply waits for this cancel
        self._own: set[int] = set()

    # -- lookups ---------------------------------------------------------------------------
    def _held(self, ino: int) -> HeldLock | None:
        return self.cache.touch(self._update.get(ino))

    def holds(self, ino: int) -> bool:
        return self._held(ino) is not None

    def attrs(self, ino: int) -> dict[str, Any] | None:
        lk = self._held(ino)
        return lk.data.get("attr") if lk is not None else None

    def child(self, parent: int, name: str) -> int | None:
        """The inode `name` in directory `parent` names, if kept: under the directory's
        lock (a lookup, a listing), or under the child's own (the server calls a child's
        lock back when a name of it goes: node/locks.py), as Lustre's LOOKUP bit."""
        ino = self._bound.get((parent, name))  # first: the hot case, a walk of a path
        if ino is not None and self._named(ino) is not None:
            return ino
        lk = self._held(parent)
        return lk.data["names"].get(name) if lk is not None else None

    def named(self, parent: int, name: str) -> int | None:
        """The inode `name` in directory `parent` names, if kept under that inode's own
        LOOKUP lock (not under the directory's)."""
        ino = self._bound.get((parent, name))
        return ino if ino is not None and self._named(ino) is not None else None

    def _named(self, ino: int) -> HeldLock | None:
        return self.cache.touch(self._lookup.get(ino))

    def kind(self, ino: int) -> str | None:
        """The type letter of inode `ino`, if kept (an inode's type never changes)."""
        nlk = self._named(ino)
        if nlk is not None and nlk.data.get("type"):
            return str(nlk.data["type"])
        kept = self.attrs(ino)
        return str(kept["type"]) if kept is not None and "type" in kept else None

    def resolve(self, path: str) -> tuple[int, str, int | None] | None:
        """(directory, name, the inode it names or None) of `path` from what is kept, with
        no round trip; None where a name on the way is not kept (or is "." or "..")."""
        names = [p for p in path.split("/") if p]
        if not names or any(n in (".", "..") for n in names):
            return None
        cur = ROOT_INO
        for name in names[:-1]:
            nxt = self.child(cur, name)
            if nxt is None:
                return None
            cur = nxt
        return cur, names[-1], self.child(cur, names[-1])

    def absent(self, parent: int, name: str) -> bool:
        """Whether `name` is known not to be in directory `parent`: a lookup found nothing
        under its lock, or the listing kept under it has no such name."""
        lk = self._held(parent)
        if lk is None or name in _DOTS:  # a listing has no "." or "..": they are not absent
            return False
        if name in lk.data["absent"]:
            return True
        return lk.data["listing"] is not None and name not in lk.data["names"]

    def learn_absent(self, generation: int, parent: int, name: str, handle: Any) -> None:
        """A lookup's ENOENT, with the directory's lock `handle` it came with (or None)."""
        if generation != self.generation:
            return
        lk = self._take(handle, parent)
        if lk is not None and len(lk.data["absent"]) < ABSENT_KEPT:
            lk.data["absent"].add(name)

    def keep_absent(self, parent: int, name: str) -> bool:
        """Note that `name`'s absence from `parent` was handed out (to the kernel, which
        must forget it when the lock goes); False if it cannot be noted (no lock held, or
        ABSENT_KEPT names noted already)."""
        lk = self._held(parent)
        if lk is None or (name not in lk.data["absent"]
                          and len(lk.data["absent"]) >= ABSENT_KEPT):
            return False
        lk.data["absent"].add(name)
        return True

    def attr_lock(self, ino: int) -> HeldLock | None:
        """The lock inode `ino`'s attributes are kept under, if one is held."""
        return self._held(ino)

    def still_held(self, before: HeldLock | None, ino: int) -> HeldLock | None:
        """`before`, held when a question about inode `ino` was asked, if it still is the
        lock its attributes are kept under (an answer is kept only under it). What else is
        kept with the attributes (xattrs, a link's target): client/md_extras.py."""
        return before if before is not None and self._held(ino) is before else None

    def listing(self, ino: int) -> list[tuple[str, int, str]] | None:
        """Directory `ino`'s entries (name, inode, type), if kept."""
        lk = self._held(ino)
        return lk.data["listing"] if lk is not None else None

    # -- what the server answered ---------------------------------------------------------
    def learn(self, generation: int, data: dict[str, Any], *,
              parent: int | None = None, name: str = "") -> None:
        """A getattr's or lookup's reply `data`, for a request sent at `generation`."""
        if generation != self.generation:
            return  # the server dropped its locks since: nothing here is covered
        ino = data.get("ino")
        if not isinstance(ino, int):
            return
        handle, name_handle = data.get("lock"), data.get("name_lock")
        if isinstance(handle, int) and handle == name_handle:  # one lock for both
            self._take(handle, ino, BITS | NAME_BITS)
            handle = name_handle = None
        lk = self._take(handle, ino)
        if lk is not None:
            lk.data["attr"] = data
            if lk.handle == handle:  # read with its grant: what a carry compares with
                lk.data["stamp"] = [data.get("ctime"), data.get("nlink")]
        if name in _DOTS:  # not a name of `ino`: "." and ".." come from the attributes
            parent = None
        if parent is not None:
            nlk = self._take(name_handle, ino, NAME_BITS)
            if nlk is not None:
                self._bound[(parent, name)] = ino
                nlk.data["bound"].add((parent, name))
                nlk.data["type"] = data.get("type")
        if parent is not None:
            plk = self._take(data.get("parent_lock"), parent)
            if plk is not None:
                plk.data["names"][name] = ino
        if self.cache.to_cancel:  # the least recently used went for these
            self._kick()

    def learn_listing(self, generation: int, ino: int, handle: Any,
                      entries: list[tuple[str, int, str]],
                      before: HeldLock | None = None) -> None:
        """A whole listing of directory `ino`, its first page sent at `generation` with the
        lock `handle` (None: read under `before`, a lock held already). Kept only if that
        lock still covers it: a page read before a change and one after would otherwise
        stay together under a newer lock (another reply's), as if current."""
        if generation != self.generation:
            return
        if isinstance(handle, int):
            if handle in self._early:  # called back while the later pages came
                self._early.pop(handle, None)
                return
        elif self.still_held(before, ino) is None:
            return
        lk = self._take(handle, ino)
        if lk is not None:
            lk.data["listing"] = entries
            lk.data["names"].update((name, child) for name, child, _t in entries)
        if self.cache.to_cancel:
            self._kick()

    def _take(self, handle: Any, ino: int, bits: Bits = BITS) -> HeldLock | None:
        """The lock (of `bits`: UPDATE, LOOKUP, or both in one lock) to keep what came with
        the reply under: a new one granted with it, or the one already held (a new one
        then goes back at once, unless it brings a bit not held yet). For both bits, the
        UPDATE one is returned; the LOOKUP one is then `_named(ino)`."""
        indexes = [ix for b, ix in ((BITS, self._update), (NAME_BITS, self._lookup))
                   if bits & b]
        if isinstance(handle, int):
            if handle in self._early:
                self._early.pop(handle, None)  # given back when its callback came
            elif free := [ix for ix in indexes if ino not in ix]:
                data: dict[str, Any] = {}
                if bits & NAME_BITS:
                    data["bound"] = set()
                if bits & BITS:
                    data.update(attr=None, names={}, listing=None, absent=set())
                lk = self.cache.add(handle, _res(ino), Mode.PR, bits, data)
                for ix in free:
                    ix[ino] = lk
            else:
                self.cache.to_cancel.append(handle)
                self._kick()
        return self.cache.touch(indexes[0].get(ino))

    def keep_open(self, handle: int, ino: int) -> bool:
        """The OPEN lock `handle` on inode `ino` came with an open's reply: held from now
        on, or False if its callback came first (it is given back then)."""
        if handle in self._early:
            self._early.pop(handle, None)
            return False
        self.cache.add(handle, _res(ino), Mode.PR, OPEN_BITS, {"open": True})
        if self.cache.to_cancel:
            self._kick()
        return True

    def give_back(self, handle: int) -> None:
        """Cancel a lock this client no longer wants (held or not)."""
        if self.cache.cancel(handle) is None:
            self.cache.to_cancel.append(handle)
        self._kick()

    def cancels_for(self, op: str, args: dict[str, Any]) -> list[int]:
        """Early lock cancel: this client's locks that `op` on `args` would call back,
        dropped now; their handles go with the request (its `cancel` argument)."""
        entries = op in changes.ENTRY_OPS
        if op == "open":
            # an open changes what it creates in (O_CREAT) or truncates (O_TRUNC), and a
            # callback for it would wait on the kernel's lock of the directory this very
            # request holds (mount/kernel_cache.py)
            flags = args.get("flags", 0)
            if not isinstance(flags, int) or not flags & (os.O_CREAT | os.O_TRUNC):
                return []
            entries = bool(flags & os.O_CREAT)
        elif op not in changes.ELC_OPS:
            return []
        inos = {args.get(k) for k in changes.INODE_ARGS}
        named = {self.child(parent, name) or self.carry.child(parent, name)
                 for parent, name in changes.names_in(args)}
        for key in changes.PATH_ARGS:  # the library's changes by path, as far as known
            path = args.get(key)
            where = self.resolve(path) if isinstance(path, str) else None
            if where is not None:
                if entries and not (op == "link" and key == "src"):
                    inos.add(where[0])
                named.add(where[2])
        inos |= named
        out: list[int] = []
        self.spared = frozenset(changes.own_names(op, args)
                                if entries or op == "setattr" else ())
        try:
            for ino in sorted(i for i in inos if isinstance(i, int)):
                out += self.cache.early_cancel(_res(ino), Mode.EX, BITS)
            if op in changes.UNNAMING_OPS:
                for ino in sorted(i for i in named if isinstance(i, int)):
                    out += self.cache.early_cancel(_res(ino), Mode.EX, NAME_BITS | OPEN_BITS)
        finally:
            self.spared = frozenset()
        return out

    def unspare(self, op: str, args: dict[str, Any]) -> None:
        """Change `op` with `args` failed: the names it would have set are forgotten after
        all (the kernel may keep one as absent that another client has made meanwhile)."""
        self.forget_names(changes.own_names(op, args))

    def forget_names(self, names: list[tuple[int, str]]) -> None:
        """Spared names that nothing covers after all: what others were handed goes."""
        if names:
            for hook in self.on_unspared:
                hook(names)

    def combined_names(self, ino: int) -> list[tuple[int, str]]:
        """The names kept under inode `ino`'s lock if it holds its attributes too (one
        lock with both bits): a setattr's early cancel gives them back with it."""
        lk = self._held(ino)
        return sorted(lk.data["bound"]) if lk is not None and lk is self._named(ino) else []

    def rebind(self, generation: int, ino: int, handle: Any,
               names: list[tuple[int, str]]) -> None:
        """`names`, confirmed by the MDT under the lock `handle` that came with a reply
        sent at `generation`, kept under it again."""
        nlk = self._named(ino)
        if generation != self.generation or nlk is None or nlk.handle != handle:
            self.forget_names(names)
            return
        for key in names:
            self._bound[key] = ino
            nlk.data["bound"].add(key)

    def called_back(self, handle: int, *, own: bool = False) -> None:
        """The server's blocking callback. For a handle this client does not hold (a grant
        whose reply is still on its way, or a lock it gave back already) it answers with a
        cancel all the same: a cancel of a lock the server no longer holds changes nothing,
        and an answer never depends on which of the two it was. `own`: for a change this
        client asked for (`before_cancel` is told, and waits only a moment)."""
        if own:
            self._own.add(handle)
        self.carry.let_go(handle)  # another's change came first: nothing is carried on
        if self.cache.called_back(handle) is None:
            self._early[handle] = None
            while len(self._early) > EARLY_KEPT:
                self._early.popitem(last=False)
            self.cache.to_cancel.append(handle)
        self._kick()

    def reset(self) -> None:
        """The server has dropped every lock of this client."""
        self.generation += 1
        self.carry.let_all_go()
        self.cache.clear()
        self._early.clear()
        self._bound.clear()
        self._update.clear()
        self._lookup.clear()
        self._own.clear()
        self._held_over = set()
        self._ready.set()

    # -- after a failover: the locks replayed ---------------------------------------------
    @property
    def ready(self) -> bool:
        """False between a failover's reconnect and the answer to the lock replay: what is
        kept may not be served until the new server has said it is still true."""
        return self._ready.is_set()

    async def usable(self) -> None:
        await self._ready.wait()

    def suspend(self) -> None:
        """The import connected to a server in recovery (a failover): keep what is kept,
        serve none of it until `replayed`."""
        self.generation += 1  # a reply to a request sent before is not kept
        self._ready.clear()
        self.carry.let_all_go()  # their changes' replies are not kept
        # the old server's locks (a create's intent may bring a new server's meanwhile)
        held = self.cache.held()
        self._held_over = {lk.handle for lk in held}
        for lk in held:
            for hook in self.on_suspend:
                hook(lk.resource[1], lk.data, lk.handle)

    def replayable(self) -> list[dict[str, Any]]:
        """The locks to replay, each with what the new server checks: the attributes'
        version and ctime (UPDATE), the names kept (LOOKUP). A lock whose attributes were
        never kept cannot be checked and is dropped here."""
        out = []
        for lk in self.cache.held():
            if lk.handle not in self._held_over:
                continue
            bits = int(lk.policy)
            want: dict[str, Any] = {"h": lk.handle, "ino": lk.resource[1], "bits": bits}
            if bits & BITS:
                attr = lk.data.get("attr")
                if attr is None:
                    self.cache.forget(lk.handle)  # the new server never had it
                    continue
                want["version"], want["ctime"] = attr.get("version"), attr.get("ctime")
            if bits & NAME_BITS:
                want["names"] = [list(key) for key in lk.data.get("bound", ())]
            out.append(want)
        return out

    def replayed(self, granted: list[Any]) -> None:
        """The new server's answer: [old handle, new handle] of the locks it granted
        again; every other one goes with what it kept. Then what is kept is served."""
        new_of = {g[0]: g[1] for g in granted
                  if isinstance(g, list) and len(g) == 2 and all(isinstance(h, int) for h in g)}
        for lk in self.cache.held():
            if lk.handle not in self._held_over:
                continue
            new = new_of.get(lk.handle)
            if new is None:
                self.cache.forget(lk.handle)  # not granted: the server holds nothing
                continue
            old = lk.handle
            self.cache.rehandle(old, new)
            for hook in self.on_rehandle:
                hook(lk.resource[1], old, new)
            if new in self._early:  # called back before this answer was read: its cancel
                self._early.pop(new, None)  # is on its way already
                self.cache.forget(new)
        self._held_over = set()
        self._ready.set()

    # -- internals -------------------------------------------------------------------------
    def _dropped(self, lk: HeldLock) -> None:
        ino = lk.resource[1]
        for index in (self._update, self._lookup):
            if index.get(ino) is lk:
                del index[ino]
        for key in lk.data.get("bound", ()):
            if self._bound.get(key) == lk.resource[1]:
                del self._bound[key]
        if not self._quiet:
            self.tell_dropped(lk.resource[1], lk.data, lk.handle)

    def tell_dropped(self, ino: int, kept: dict[str, Any], handle: int) -> None:
        """What lock `handle` on `ino` kept is gone: so is what others were handed of it."""
        for hook in self.on_drop:
            hook(ino, kept, handle)

    # -- for DirCarry ----------------------------------------------------------------------
    def dir_lock(self, ino: int) -> HeldLock | None:
        """Directory `ino`'s lock if it is an UPDATE lock alone (one that holds names too is
        not set aside)."""
        lk = self._update.get(ino)
        return lk if lk is not None and lk.policy == BITS else None

    def forget_quietly(self, handle: int) -> None:
        """Drop lock `handle` without telling on_drop: what it kept is set aside."""
        self._quiet = True
        try:
            self.cache.forget(handle)
        finally:
            self._quiet = False

    def take_dir_lock(self, handle: int, ino: int) -> HeldLock | None:
        """The directory lock a change's reply brought, held from now on (as `learn`)."""
        return self._take(handle, ino)

    def _kick(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while handles := self.cache.take_cancels():
            own = [h for h in handles if h in self._own]
            self._own.difference_update(handles)
            for settle in self.before_cancel:
                await settle(handles, own)
            try:
                await self._send_cancel(handles)
            except ShoalError as exc:
                log.debug("lock cancels not sent (%s): the server drops them at reconnect",
                          exc)

    async def close(self) -> None:
        if self._flushing is not None and not self._flushing.done():
            self._flushing.cancel()
