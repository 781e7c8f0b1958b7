"""Where an OST's extent locks meet the node's requests (issue 20): file data under locks.

A client that keeps a file's pages (the mount) asks each OST of the file's layout for an
extent lock on its object (`ldlm_enqueue`: {"oid", "mode": "PR" | "PW"}): PR before it
keeps pages it read, PW before it buffers writes. The lock is granted over the widest extent
that meets nobody else's (the whole object, usually: protocol/ldlm.py); the reply has its
`handle` and its extent (`start`, `end`).

A read, write or punch that names a lock its client holds on the object, of a mode and an
extent that cover it (`lock`: the handle), is served as it is: it may come while that very
lock is being called back (the holder lands its buffered writes before it cancels), and must
not wait for the callback its client is answering. One that names none (the library's, which
keeps no pages) takes a lock on the server's side for its own bytes while it is served, if
anyone holds a lock on the object (Lustre's srvlock): PR for a read, PW for a write or
punch. So the pages others keep of those bytes are dropped before a write is acknowledged,
and the writes others buffered have landed before a read is served.

An enqueue may give back locks of the client's own on the object with it (`cancel`). An
upgrade (`upgrade`: PR to PW, keeping what the PR lock covered, the kernel's pages) is
granted so only where no request waits on the object: then nothing is granted between the
two locks and nobody else's write comes between. Where one waits, nothing is done and the
reply says `again`: the client drops its pages while it still holds the PR lock (the
waiting writer cannot go on before), and asks again with a plain enqueue.

A read that names no lock may ask for one with it (`enqueue: "PR"`, Lustre's intents): a PR
lock on the whole object is granted if nothing conflicts, the read is served under it, and
the reply carries it (`granted`: [handle, mode, start, end]). A mount reading a small file
it keeps then needs one RPC, not an enqueue and a read. If something conflicts, nothing is
granted and the read is served as any other.

After a failover the clients replay their locks inside the recovery window (`replay`), and
the requests the window held are served through these rules once it closes (node/server.py),
so a write buffered under a PW lock before the failover is landed before anyone else's
request for those bytes after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from shoal.errors import ShoalError
from shoal.ldlm.server import LockManager
from shoal.protocol import messages as m
from shoal.protocol.ldlm import (
    ENQUEUE_OP,
    OBJECT_EOF,
    REPLAY_MAX,
    REPLAY_OP,
    Extent,
    Lock,
    Mode,
    Resource,
    covers,
)

Reply = m.Reply | Awaitable[m.Reply]
MODES = {"PR": Mode.PR, "PW": Mode.PW}


def resource(oid: int) -> Resource:
    return ("oid", oid)


def _span(req: m.Request) -> tuple[int, Mode, Extent] | None:
    """(object, mode, bytes) a data request touches; None for any other request, or one
    whose arguments the OST will refuse anyway."""
    a = req.args
    oid = a.get("oid")
    if not isinstance(oid, int) or oid < 0:
        return None
    if req.op == "read":
        off, n = a.get("offset"), a.get("length")
        if isinstance(off, int) and isinstance(n, int) and off >= 0 and n > 0:
            return oid, Mode.PR, Extent(off, min(OBJECT_EOF, off + n - 1))
    elif req.op == "write":
        off = a.get("offset")
        n = len(req.bulk) if req.bulk is not None else 0
        if isinstance(off, int) and off >= 0:
            return oid, Mode.PW, Extent(off, min(OBJECT_EOF, off + max(n, 1) - 1))
    elif req.op == "getattr":  # a glimpse: what the writers buffered counts
        return oid, Mode.PR, Extent(0, OBJECT_EOF)
    elif req.op == "punch":
        size = a.get("size")
        if isinstance(size, int) and 0 <= size <= OBJECT_EOF:
            return oid, Mode.PW, Extent(size, OBJECT_EOF)
    return None


def serve(lm: LockManager, client: str, req: m.Request, plain: Callable[[], Reply],
          wait_limit: float) -> Reply:
    """The request's reply, under the lock it names, a server-side lock, or none."""
    if req.op == ENQUEUE_OP:
        return _enqueue(lm, client, req, wait_limit)
    span = _span(req)
    if span is None:
        return plain()
    oid, mode, ext = span
    res = resource(oid)
    named = req.args.get("lock")
    if isinstance(named, int) and _holds(lm, client, named, res, mode, ext):
        return plain()
    if req.op == "read" and a_intent(req) and not isinstance(named, int):
        lk = lm.try_enqueue(client, res, Mode.PR, Extent(0, OBJECT_EOF))
        if lk is not None:
            return _with_grant(lm, plain(), lk)
    if not lm.busy(res, ext):
        return plain()  # nobody keeps these bytes: served in one step, as before locks
    return _under_server_lock(lm, res, mode, ext, plain, wait_limit)


def _holds(lm: LockManager, client: str, named: int, res: Resource, mode: Mode,
           ext: Extent) -> bool:
    """Whether the client holds a lock covering the request: the one it names, or another
    (a request sent before a failover names the handle its lock had there; the replay
    granted it under a new one)."""
    lk = lm.space.locks.get(named)
    if lk is not None and lk.client == client and lk.resource == res:
        return covers(lk.mode, lk.policy, mode, ext)
    granted, _waiting = lm.space.queue(res)
    return any(g.client == client and covers(g.mode, g.policy, mode, ext) for g in granted)


def replay(lm: LockManager, client: str, req: m.Request, *, in_window: bool) -> m.Reply:
    """A client's extent locks from before a failover ([handle, oid, mode] each), granted
    again: [old handle, new handle] for each. Only inside the recovery window, before any
    new request is served, where only the locks replayed before it are there to conflict
    (none should: they were granted together). After the window others may have touched
    the bytes under no lock: nothing new is granted, and the client drops what it kept.
    A replay sent again (the client reconnected inside the window) confirms the locks it
    names that it holds here already, window or not; the client's other locks here go."""
    locks = req.args.get("locks")
    if not isinstance(locks, list) or len(locks) > REPLAY_MAX:
        return m.Reply(req.xid, "EINVAL",
                       f"{REPLAY_OP}: locks must be a list of at most {REPLAY_MAX}")
    wants: list[tuple[int, int, Mode]] = []
    for want in locks:
        if not (isinstance(want, list) and len(want) == 3):
            continue
        old, oid, mode = want[0], want[1], MODES.get(str(want[2]))
        if isinstance(old, int) and isinstance(oid, int) and oid >= 0 and mode is not None:
            wants.append((old, oid, mode))
    whole = Extent(0, OBJECT_EOF)
    mine = {lk.handle: lk for lk in lm.space.locks.values() if lk.client == client}
    granted: list[list[int]] = []
    # a replay sent again (a reconnect inside the window) names what it was granted here:
    # confirmed, window or not
    for old, oid, mode in wants:
        lk = mine.get(old)
        if lk is not None and lk.resource == resource(oid) and covers(lk.mode, lk.policy,
                                                                      mode, whole):
            granted.append([old, old])
    kept = {old for old, _new in granted}
    for handle in set(mine) - kept:
        lm.cancel(handle)  # the client keeps nothing under them any more
    if not in_window:
        return m.Reply(req.xid, data={"granted": granted})
    for old, oid, mode in wants:
        if old in kept:
            continue
        lk = lm.try_enqueue(client, resource(oid), mode, whole)
        if lk is not None:
            granted.append([old, lk.handle])
    return m.Reply(req.xid, data={"granted": granted})


def a_intent(req: m.Request) -> bool:
    return req.args.get("enqueue") == "PR"


def _with_grant(lm: LockManager, result: Reply, lk: Lock) -> Reply:
    if isinstance(result, m.Reply):
        return _grant_in(lm, result, lk)
    return _granted_later(lm, result, lk)


async def _granted_later(lm: LockManager, result: Awaitable[m.Reply], lk: Lock) -> m.Reply:
    try:
        reply = await result
    except BaseException:
        lm.cancel(lk.handle)
        raise
    return _grant_in(lm, reply, lk)


def _grant_in(lm: LockManager, reply: m.Reply, lk: Lock) -> m.Reply:
    if reply.status is not None:
        lm.cancel(lk.handle)  # the read failed: nobody will keep anything under it
        return reply
    ext = lk.policy
    assert isinstance(ext, Extent)
    reply.data = {**reply.data, "granted": [lk.handle, lk.mode.name, ext.start, ext.end]}
    return reply


async def _under_server_lock(lm: LockManager, res: Resource, mode: Mode, ext: Extent,
                             plain: Callable[[], Reply], wait_limit: float) -> m.Reply:
    async with lm.held(res, mode, ext, timeout=wait_limit):
        result = plain()
        return result if isinstance(result, m.Reply) else await result


async def _enqueue(lm: LockManager, client: str, req: m.Request,
                   wait_limit: float) -> m.Reply:
    a: dict[str, Any] = req.args
    oid, mode = a.get("oid"), MODES.get(str(a.get("mode")))
    if not isinstance(oid, int) or oid < 0 or mode is None:
        return m.Reply(req.xid, "EINVAL", f"{ENQUEUE_OP}: needs an oid and a mode (PR or PW)")
    given = a.get("cancel")
    early = [h for h in given if isinstance(h, int)] if isinstance(given, list) else []
    res = resource(oid)
    if a.get("upgrade") is True:
        # the client gives its PR lock up for PW and keeps what it kept under it (the
        # kernel's pages): only where nothing waits on the object, so that nothing is
        # granted between the two and nobody else's write comes between. Otherwise the
        # PR lock stays, and the client drops its pages first and asks again (`again`)
        _granted, waiting = lm.space.queue(res)
        held = [lm.space.locks.get(h) for h in early]
        if (waiting or mode is not Mode.PW or not held
                or not all(lk is not None and lk.resource == res and lk.client == client
                           for lk in held)):
            return m.Reply(req.xid, data={"again": True})
    for h in early:  # the client's own locks it gives up for this one
        lm.cancel(h, client)
    try:
        lk = await lm.enqueue(client, res, mode, Extent(0, OBJECT_EOF),
                              timeout=wait_limit)
    except ShoalError as exc:
        return m.Reply(req.xid, exc.errno_name, str(exc))
    ext = lk.policy
    assert isinstance(ext, Extent)
    return m.Reply(req.xid, data={"handle": lk.handle, "mode": lk.mode.name,
                                  "start": ext.start, "end": ext.end})
