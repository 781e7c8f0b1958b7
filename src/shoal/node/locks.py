"""Where an MDT's locks meet the node's requests (issue 20).

A client that caches asks for a lock with what it reads: `getattr`, `lookup` and `readdir`
(by inode) with `lock=["self"]` get, besides the attributes or entries, the handle (`lock`)
of a PR lock on the inode (UPDATE bit) under which the client may keep them; a lookup may
also ask for one on the directory (`"parent"`, answered as `parent_lock`), under which the
client keeps the name. Once granted, the attributes are read afresh, so what comes
back is at least as new as the lock.

A change runs first, then calls back the locks on every inode it changed (MDT.take_touched)
and waits until they are gone before its reply goes out: the change is not acknowledged
until no client can serve the old attributes any more, and a client that reads meanwhile is
concurrent with an unacknowledged change. A change that meets no lock replies at once.

Names are kept under two kinds of lock, as Lustre's inodebits do: a directory's UPDATE lock
covers its entries (a listing, the names looked up in it), and a LOOKUP lock on an inode
(`lock=["name"]` on a lookup, answered as `name_lock`) covers the name it was looked up by.
A change in a directory calls back the first; only a name that goes (unlink, rmdir, rename:
MDT.take_unnamed) calls back the second, so a client creating files in a directory keeps the
name of the directory itself. A create (`create`, `mkdir`, `symlink`, `mknod`, `open`) with
`lock=["self", "name"]` gets both locks on the inode it made with its reply (Lustre's
intents), so the creator's next stat of it needs no round trip. A lookup that finds nothing
and asks `"absent"` gets the directory's UPDATE lock with its ENOENT (`parent_lock`), under
which the client keeps the name's absence (a negative dentry). A `readdir` with `plus` lists
each entry's attributes too, and with `"children"` in `lock` an UPDATE lock on each entry
that can be granted at once comes with them (`child_locks`).

A client's locks go when it connects (again) to the target: it dropped its cache then, and
a callback it may have missed while away must not hold anyone up; and when it is evicted.
After a failover the new MDT has none, and a client that kept its cache asks for its locks
again once the recovery window has closed (`ldlm_replay`, `_replay`): each is granted where
what the client kept under it is still true.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from shoal.errors import ShoalError
from shoal.ldlm.server import LockManager
from shoal.node import data_locks
from shoal.node.dir_carry import dir_stamp, with_parent
from shoal.protocol import messages as m
from shoal.protocol.ldlm import (
    CALLBACK,
    CANCEL_OP,
    REPLAY_MAX,
    REPLAY_OP,
    Bits,
    Lock,
    Mode,
    Resource,
    meets,
)
from shoal.target.mdt import MDT
from shoal.target.ost import OST

log = logging.getLogger(__name__)

LOCK_BITS = Bits.UPDATE  # what the cached attributes and a directory's names are kept under
NAME_BITS = Bits.LOOKUP  # what a name is kept under, on the inode it names
OPEN_BITS = Bits.OPEN  # what a client keeps an idle read-only open handle under
# what a request's `lock` list may ask for on the inode it reads or makes: (reply key, word,
# bits)
_KINDS = (("lock", "self", LOCK_BITS), ("name_lock", "name", NAME_BITS),
          ("open_lock", "open", OPEN_BITS))
_NOT_CACHED_OPEN = os.O_ACCMODE | os.O_CREAT | os.O_TRUNC  # an open kept must change nothing
# changes that make an inode and may ask for a lock on it with their reply (an intent)
INTENT_OPS = frozenset({"create", "mkdir", "symlink", "mknod", "open"})
# changes in a directory (by parent and name) that may ask for its lock back ("parent")
PARENT_OPS = INTENT_OPS | {"unlink", "rmdir"}
Reply = m.Reply | Awaitable[m.Reply]


class NodeLocks:
    def __init__(self, send: Callable[[str, m.Notice], None],
                 evict: Callable[[str, str, str], None], callback_timeout: float) -> None:
        self.send = send  # (client, notice)
        self.evict = evict  # (target, client, reason)
        self.callback_timeout = callback_timeout
        self.managers: dict[str, LockManager] = {}
        self._revoking: set[asyncio.Task[None]] = set()

    @property
    def wait_limit(self) -> float:
        # a holder that does not answer is evicted at the callback timeout: past it, and a
        # little more, a wait can only mean a bug, and is reported as one
        return self.callback_timeout + 5.0

    def attach(self, svc: MDT | OST) -> None:
        name = svc.name
        self.managers[name] = LockManager(
            name, send_callback=partial(self._callback, name),
            evict=partial(self.evict, name), callback_timeout=self.callback_timeout,
            first_handle=(svc.epoch << 32) + 1)  # no handle of an earlier instance reappears
        if isinstance(svc, MDT):
            svc.take_touched()  # replays changed things under no lock
            svc.take_rewritten()

    def detach(self, name: str) -> None:
        lm = self.managers.pop(name, None)
        if lm is not None:
            lm.close()

    def client_gone(self, target: str, client: str) -> None:
        lm = self.managers.get(target)
        if lm is not None:
            lm.client_gone(client)

    def serve_data(self, client: str, svc: OST, req: m.Request,
                   plain: Callable[[], Reply]) -> Reply:
        """An OST request's reply, under the extent locks it names or needs
        (node/data_locks.py)."""
        lm = self.managers.get(svc.name)
        if lm is None:
            return plain()
        if req.op == CANCEL_OP:
            return self._cancel(lm, client, req)
        return data_locks.serve(lm, client, req, plain, self.wait_limit)

    def replay_data(self, client: str, svc: OST, req: m.Request, *,
                    in_window: bool) -> m.Reply:
        """A client's extent locks from before a failover (node/data_locks.py)."""
        lm = self.managers.get(svc.name)
        if lm is None:
            return m.Reply(req.xid, data={"granted": []})
        return data_locks.replay(lm, client, req, in_window=in_window)

    @staticmethod
    def _cancel(lm: LockManager, client: str, req: m.Request) -> m.Reply:
        handles = req.args.get("handles")
        if not isinstance(handles, list):
            return m.Reply(req.xid, "EINVAL", f"{CANCEL_OP}: handles must be a list")
        for h in handles:
            if isinstance(h, int):
                lm.cancel(h, client)
        return m.Reply(req.xid, data={})

    def serve(self, client: str, svc: MDT, req: m.Request,
              plain: Callable[[], Reply]) -> Reply:
        """The request's reply, with the locks it asks for and the callbacks its change
        needs; `plain` serves it as if there were no locks. A regular file that another
        client has open for writing is marked `writers` in every attribute dict of it: its
        size may be past the MDT's, and the client asks the OSTs (a glimpse)."""
        result = self._serve(client, svc, req, plain)
        if isinstance(result, m.Reply):
            _mark_writers(svc, client, result)
            return result
        return self._marked(client, svc, result)

    @staticmethod
    async def _marked(client: str, svc: MDT, result: Awaitable[m.Reply]) -> m.Reply:
        reply = await result
        _mark_writers(svc, client, reply)
        return reply

    def _serve(self, client: str, svc: MDT, req: m.Request,
               plain: Callable[[], Reply]) -> Reply:
        lm = self.managers.get(svc.name)
        if lm is None:
            return plain()
        early = req.args.get("cancel")
        if isinstance(early, list):  # the client's own locks, given back with its change
            for h in early:
                if isinstance(h, int):
                    lm.cancel(h, client)
        if req.op == REPLAY_OP:
            return self._replay(lm, client, svc, req)
        if req.op == CANCEL_OP:
            return self._cancel(lm, client, req)
        wanted = req.args.get("lock")
        if wanted and req.op in ("getattr", "lookup", "readdir"):
            return self._locked_read(lm, client, svc, req, plain)
        parent = req.args.get("parent")
        before = (dir_stamp(svc, parent) if isinstance(wanted, list) and "parent" in wanted
                  and req.op in PARENT_OPS and isinstance(parent, int) else None)
        result = plain()
        spec = svc.ops.get(req.op)
        if spec is None or not spec.modifying:
            return result
        after = dir_stamp(svc, parent) if before is not None else None
        held = _to_call_back(lm, svc)
        if isinstance(wanted, list) and req.op == "setattr" and "self" in wanted:
            # the lock its own early cancel gave up, back with the reply: the kernel's next
            # check of the attributes (a chown's, after a utimens) needs no round trip; and
            # with "name", the names it was kept under, those still true (`names`)
            return self._with_intent(lm, client, svc, [w for w in wanted
                                                       if w in ("self", "name")],
                                     held, result, req.args.get("names"))
        if isinstance(wanted, list) and wanted and req.op in INTENT_OPS:
            if "open" in wanted and (req.op != "open" or not isinstance(
                    flags := req.args.get("flags", 0), int) or flags & _NOT_CACHED_OPEN):
                wanted = [w for w in wanted if w != "open"]
            reply = self._with_intent(lm, client, svc, wanted, held, result)
            if before is None or after is None or before == after:
                return reply
            return with_parent(lm, client, svc, req, before, after, reply, self.wait_limit)
        if before is not None and after is not None and before != after:
            done = self._after_callbacks(lm, held, result, client) if held else _reply(result)
            return with_parent(lm, client, svc, req, before, after, done, self.wait_limit)
        if not held:
            return result
        return self._after_callbacks(lm, held, result, client)

    async def _with_intent(self, lm: LockManager, client: str, svc: MDT, wanted: list[Any],
                           held: list[tuple[Resource, Bits]], result: Reply,
                           names: Any = None) -> m.Reply:
        """A create that asked for locks on what it made (Lustre's intent): `"self"` (its
        attributes) and `"name"` (the name it was made under) come with the reply as `lock`
        and `name_lock`, and the attributes read again under them as `attr`; a setattr's
        `"self"` likewise, and its `"name"` covers those of `names` ([directory, name])
        that still name the inode once the lock is held (answered as `names`: one renamed
        while the setattr waited is not). The change is made either way: without the
        locks it is answered uncached."""
        reply = (await self._after_callbacks(lm, held, result, client) if held
                 else await _reply(result))
        made = reply.data.get("attr", reply.data) if reply.status is None else {}
        ino = made.get("ino") if isinstance(made, dict) else None
        if not isinstance(ino, int):
            return reply
        if made.get("type") != "f":  # only a file's open is kept
            wanted = [w for w in wanted if w != "open"]
        kinds = _bundle([(k, b) for k, w, b in _KINDS if w in wanted], made.get("type"))
        try:
            granted = await self._grant(lm, client, [(("ino", ino), k, b) for k, b in kinds])
        except ShoalError:
            return reply
        try:
            fresh = svc.attr(ino)  # a change that came between is seen, or called them back
        except ShoalError:
            for handle in set(granted.values()):
                lm.cancel(handle)
            return reply
        reply.data = {**reply.data, **granted, "attr": fresh}
        if "name_lock" in granted and isinstance(names, list):
            reply.data["names"] = _naming(svc, ino, names)
        if "lock" in granted:
            # what it was made with (an inherited ACL): every other name is known absent,
            # and a writer's check for file capabilities needs no round trip
            reply.data["xattrs"] = svc.xattr_names(ino)
        return reply

    async def _grant(self, lm: LockManager, client: str,
                     plan: list[tuple[Resource, tuple[str, ...], Bits]]) -> dict[str, int]:
        """A PR lock for each (resource, reply keys, bits) of `plan`, in order: the handle
        under each of its keys. If one cannot be had, none is held and its error raised."""
        granted: dict[str, int] = {}
        try:
            for resource, keys, bits in plan:
                lk = await lm.enqueue(client, resource, Mode.PR, bits,
                                      timeout=self.wait_limit)
                granted.update(dict.fromkeys(keys, lk.handle))
        except ShoalError:
            for handle in set(granted.values()):
                lm.cancel(handle)
            raise
        return granted

    async def _after_callbacks(self, lm: LockManager, held: list[tuple[Resource, Bits]],
                               result: Reply, cause: str) -> m.Reply:
        await self._revoke(lm, held, cause)
        return result if isinstance(result, m.Reply) else await result

    async def _revoke(self, lm: LockManager, held: list[tuple[Resource, Bits]],
                      cause: str | None = None) -> None:
        try:
            for bits in {b for _r, b in held}:
                await lm.revoke([r for r, b in held if b == bits], bits,
                                timeout=self.wait_limit, cause=cause)
        except ShoalError as exc:
            # the change is made: its reply must go; a holder that kept its lock this long
            # should have been evicted, so say so
            log.error("%s: locks on %s not called back: %s", lm.target, held, exc)

    def changed_outside(self, svc: MDT) -> None:
        """Inodes changed by no request: an eviction closing a writer's handles moves its
        files' ctime (so that pages kept of them are dropped: mount/handles.py), and may
        drop an orphan. Their locks are called back in the background, as nobody waits
        for a reply; the callbacks leave before the loop serves anything else."""
        lm = self.managers.get(svc.name)
        held = _to_call_back(lm, svc) if lm is not None else []
        if lm is None or not held:
            return
        task = asyncio.get_running_loop().create_task(self._revoke(lm, held))
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)

    async def _locked_read(self, lm: LockManager, client: str, svc: MDT, req: m.Request,
                           plain: Callable[[], Reply]) -> m.Reply:
        wanted = req.args.get("lock")
        if not isinstance(wanted, list):
            return m.Reply(req.xid, "EINVAL", f"{req.op}: lock must be a list")
        known = req.args.get("ino") if req.op in ("getattr", "readdir") else None
        first: m.Reply | None = None
        if isinstance(known, int):
            ino = known  # the lock can come first, and the one read under it
        else:
            first = await _reply(plain())  # which inode (a lookup's), and the errors
            if first.status == "ENOENT" and "absent" in wanted and req.op == "lookup":
                return await self._absent(lm, client, req, plain, first)
            if first.status is not None:
                return first
            ino = first.data.get("ino")
            if not isinstance(ino, int):
                return first  # by path: served, not locked
        kinds = _bundle([(k, b) for k, w, b in _KINDS if w in wanted and w != "open"
                         and (w != "name" or req.op == "lookup")],
                        first.data.get("type") if first is not None else None)
        plan = [(("ino", ino), keys, bits) for keys, bits in kinds]
        if "parent" in wanted and req.op == "lookup":
            plan.insert(0, (("ino", req.args.get("parent")), ("parent_lock",), LOCK_BITS))
        try:
            granted = await self._grant(lm, client, plan)
        except ShoalError as exc:
            return m.Reply(req.xid, exc.errno_name, str(exc))
        # read (again) under the lock: a first read may predate a change it missed
        again = await _reply(plain())
        if again.status is not None or (first is not None and again.data.get("ino") != ino):
            for handle in set(granted.values()):
                lm.cancel(handle)
            return again  # the name moved meanwhile: what it names now, uncached
        data: dict[str, Any] = dict(again.data)
        data.update(granted)
        if "children" in wanted and req.op == "readdir":
            # in the same step as the read: nothing changes in between
            data["child_locks"] = self._child_locks(lm, client, data.get("entries", []))
        again.data = data
        return again

    @staticmethod
    def _child_locks(lm: LockManager, client: str, entries: list[Any]) -> list[list[int]]:
        """[inode, handle] of an UPDATE lock on each entry listed with its attributes (a
        readdirplus), where one is granted at once: the client keeps the attributes under
        them, as Lustre's statahead does. Anything but a directory gets the LOOKUP bit in
        the same lock, as a lookup's does (`_bundle`), and [inode, handle, 1] says so: its
        name in the listing then outlives the directory's lock, which the client's own next
        create or unlink there gives back (an `rm -rf` after a listing asks no lookups)."""
        out = []
        for e in entries:
            if isinstance(e, list) and len(e) > 3 and isinstance(e[1], int):
                named = e[2] != "d"
                lk = lm.try_enqueue(client, ("ino", e[1]), Mode.PR,
                                    LOCK_BITS | NAME_BITS if named else LOCK_BITS)
                if lk is not None:
                    out.append([e[1], lk.handle, 1] if named else [e[1], lk.handle])
        return out

    async def _absent(self, lm: LockManager, client: str, req: m.Request,
                      plain: Callable[[], Reply], first: m.Reply) -> m.Reply:
        """A name that is not there, kept so under the directory's UPDATE lock (a negative
        dentry): any change to the directory's entries calls it back."""
        parent = req.args.get("parent")
        if not isinstance(parent, int):
            return first
        try:
            lk = await lm.enqueue(client, ("ino", parent), Mode.PR, LOCK_BITS,
                                  timeout=self.wait_limit)
        except ShoalError:
            return first
        again = await _reply(plain())  # the name may have come meanwhile
        if again.status != "ENOENT":
            lm.cancel(lk.handle)
            return again
        again.data = {"parent_lock": lk.handle}
        return again

    def _replay(self, lm: LockManager, client: str, svc: MDT, req: m.Request) -> m.Reply:
        """A client's locks from before a failover, granted again where what it kept under
        them is still true: the attributes of the same version and ctime (ctime moves with
        every change, to the entries of a directory too), every name still naming the
        inode, the open still open. Checked and granted in one step, with nothing in
        between: a change made before it shows in the check, a change after it calls the
        lock back. A lock that is not granted is dropped by the client with what it kept.

        The client asks once the window has closed: every replay and every request held
        during it changed the namespace under no lock, and is seen by the check."""
        locks = req.args.get("locks")
        if not isinstance(locks, list) or len(locks) > REPLAY_MAX:
            return m.Reply(req.xid, "EINVAL",
                           f"{REPLAY_OP}: locks must be a list of at most {REPLAY_MAX}")
        granted = []
        opened = svc.open_inodes(client)
        for want in locks:
            try:
                ok = isinstance(want, dict) and _still_true(svc, opened, want)
            except ShoalError:
                ok = False  # the inode is gone
            if not ok:
                continue
            lk = lm.try_enqueue(client, ("ino", want["ino"]), Mode.PR, Bits(want["bits"]))
            if lk is not None:
                granted.append([want["h"], lk.handle])
        return m.Reply(req.xid, data={"granted": granted})

    def _callback(self, target: str, lock: Lock, by: Lock) -> None:
        """A blocking callback; `own`: the change it is for is the holder's own request,
        which holds (in the holder's kernel) whatever the holder would wait for before it
        cancels (mount/kernel_cache.py)."""
        data: dict[str, Any] = {"target": target, "handle": lock.handle}
        lm = self.managers.get(target)
        if lm is not None and lm.cause_of(by.handle) == lock.client:
            data["own"] = True
        self.send(lock.client, m.Notice(CALLBACK, data))


_KNOWN_BITS = int(LOCK_BITS | NAME_BITS | OPEN_BITS)


def _still_true(svc: MDT, opened: set[int], want: dict[str, Any]) -> bool:
    """Whether what a client kept under the lock it replays (`want`) is still so (`opened`:
    the inodes it has open)."""
    ino, bits, h = want.get("ino"), want.get("bits"), want.get("h")
    if not (isinstance(ino, int) and isinstance(h, int) and isinstance(bits, int)
            and bits and not bits & ~_KNOWN_BITS):
        return False
    attr = svc.attr(ino)  # NotFound: gone
    if bits & LOCK_BITS and (want.get("version") != attr["version"]
                             or want.get("ctime") != attr["ctime"]):
        return False
    if bits & NAME_BITS:
        names = want.get("names")
        if not isinstance(names, list) or _naming(svc, ino, names) != names:
            return False
    return not bits & OPEN_BITS or ino in opened


def _naming(svc: MDT, ino: int, names: list[Any]) -> list[Any]:
    """Those of `names` ([directory, name], as a client sends them) that name `ino` now."""
    return [n for n in names if isinstance(n, list) and len(n) == 2 and isinstance(n[0], int)
            and isinstance(n[1], str) and svc.names(n[0], n[1]) == ino]


def _mark_writers(svc: MDT, client: str, reply: m.Reply) -> None:
    if reply.status is not None or not isinstance(reply.data, dict) or not svc.written():
        return  # (most replies: nothing is open for writing anywhere)
    data = reply.data
    for a in (data, data.get("attr")):
        _mark(svc, client, a)
    entries = data.get("entries")
    if isinstance(entries, list):
        for e in entries:
            if isinstance(e, list) and len(e) > 3:
                _mark(svc, client, e[3])


def _mark(svc: MDT, client: str, a: Any) -> None:
    if (isinstance(a, dict) and a.get("type") == "f" and isinstance(ino := a.get("ino"), int)
            and svc.others_writing(ino, client)):
        a["writers"] = True


def _to_call_back(lm: LockManager, svc: MDT) -> list[tuple[Resource, Bits]]:
    """The locks the MDT's changes since the last call meet: UPDATE on every inode changed;
    LOOKUP and OPEN on every inode that lost a name (it may have lost its last: a client
    that keeps an idle open of it closes it as it gives the lock back, and the orphan goes
    at once rather than when some client's LRU lets it go)."""
    touched = set(svc.take_touched())
    # an open or close for writing changes only what the others keep (`writers`): the
    # opener's own lock stays (called back, it waited on the kernel's lock of a directory
    # that an unlink after the close held: mount/kernel_cache.py)
    touched |= {ino for ino, client in svc.take_rewritten()
                if ino not in touched and _others_hold(lm, ("ino", ino), client)}
    held = [(("ino", ino), LOCK_BITS) for ino in sorted(touched)
            if lm.busy(("ino", ino), LOCK_BITS)]
    held += [(("ino", ino), NAME_BITS | OPEN_BITS) for ino in svc.take_unnamed()
             if lm.busy(("ino", ino), NAME_BITS | OPEN_BITS)]
    return held


def _others_hold(lm: LockManager, res: Resource, client: str) -> bool:
    """Whether a client other than `client` holds or waits for an UPDATE lock on `res`."""
    granted, waiting = lm.space.queue(res)
    return any(lk.client != client and meets(lk.policy, LOCK_BITS)
               for lk in (*granted, *waiting))


def _bundle(kinds: list[tuple[str, Bits]], kind: Any) -> list[tuple[tuple[str, ...], Bits]]:
    """The locks to grant for `kinds` (reply key, bits) on an inode of type `kind`: the
    attributes and the name of anything but a directory under one lock with both bits, as
    Lustre's lookups grant, which halves the locks a client keeps for a tree (one a file, so
    that a tree of 7,600 entries fits a client's LRU). A directory keeps two: its UPDATE
    lock is called back by every name made or removed in it, and its name must outlive that
    (a busy directory is on many paths)."""
    keys = [k for k, _b in kinds]
    if kind == "d" or not {"lock", "name_lock"} <= set(keys):
        return [((k,), b) for k, b in kinds]
    out: list[tuple[tuple[str, ...], Bits]] = [(("lock", "name_lock"), LOCK_BITS | NAME_BITS)]
    return out + [((k,), b) for k, b in kinds if k not in ("lock", "name_lock")]


async def _reply(result: Reply) -> m.Reply:
    return result if isinstance(result, m.Reply) else await result

