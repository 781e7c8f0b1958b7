"""The MDT's side of a directory's lock carried through a client's own change in it
(client/md_carry.py): a create, unlink or rmdir that asks for `"parent"` gets the
directory's UPDATE lock back with its reply (its early cancel gave the client's up), with
the directory's attributes read under it, and, where nothing but this change moved the
directory between the request's start and the grant, what it was just before the change:
a client whose kept attributes show just that keeps the names it knew in the directory
(an untar's next lookup, the kernel's getattr of the directory after each create, an
`rm -rf`'s lookups are then answered from its cache)."""

from __future__ import annotations

from collections.abc import Awaitable

from shoal.errors import ShoalError
from shoal.ldlm.server import LockManager
from shoal.protocol import messages as m
from shoal.protocol.ldlm import Bits, Mode
from shoal.target.mdt import MDT


def dir_stamp(svc: MDT, ino: int) -> tuple[float, int] | None:
    """What a change to directory `ino`'s entries moves: (ctime, nlink); None if gone."""
    try:
        a = svc.attr(ino)
    except ShoalError:
        return None
    return a["ctime"], a["nlink"]


async def with_parent(lm: LockManager, client: str, svc: MDT, req: m.Request,
                      before: tuple[float, int], after: tuple[float, int],
                      made: Awaitable[m.Reply], wait_limit: float) -> m.Reply:
    """The reply of the change `made` (request `req`, of args' parent and name), with
    `parent_lock` and `parent_attr`, and `parent_before` ([ctime, nlink] before the change)
    where the directory is still as the change left it (`after`) once the lock is granted
    and the name is what the change made of it: a create through a symbolic link made
    another name than the one asked for."""
    reply = await made
    if reply.status is not None:
        return reply
    parent, name = req.args["parent"], req.args.get("name")
    try:
        lk = await lm.enqueue(client, ("ino", parent), Mode.PR, Bits.UPDATE, timeout=wait_limit)
    except ShoalError:
        return reply
    try:
        now = svc.attr(parent)
    except ShoalError:
        lm.cancel(lk.handle)
        return reply
    reply.data = {**reply.data, "parent_lock": lk.handle, "parent_attr": now}
    fresh = reply.data.get("attr", reply.data)
    named = None if req.op in ("unlink", "rmdir") else fresh.get("ino")
    if ((now["ctime"], now["nlink"]) == after and isinstance(name, str)
            and svc.names(parent, name) == named):
        reply.data["parent_before"] = list(before)
    return reply
