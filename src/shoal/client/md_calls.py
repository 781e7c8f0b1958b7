"""Requests to the MDT with the lock cache's part in them: early lock cancel on every change
(`md_call`), and the intents of creates and setattrs (`make_call`, `setattr_call`), whose
replies bring locks on what they made or changed and the attributes read again under them
(node/locks.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.client import md_extras as extras

if TYPE_CHECKING:
    from collections.abc import Callable

    from shoal.client.imports import Import
    from shoal.client.md_locks import MetadataLocks


async def make_call(mdt: Import, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """A create of some kind (create, mkdir, symlink, mknod, an open with O_CREAT) of
    args' (parent, name). With the lock cache it asks for locks on what it makes (an
    intent: node/locks.py) and keeps the attributes and the name under them, and the
    directory's lock back (`_in_directory`)."""
    md = mdt.md_locks
    if md is None:
        return await md_call(mdt, op, args)
    gen = md.generation
    data, kept_on = await _in_directory(md, mdt, op, args, ["self", "name"])
    _learn_intent(md, gen, data, parent=args["parent"], name=args["name"])
    made = made_attr(data)
    if op == "mkdir" and "lock" in data and data.get("ctime") == made.get("ctime"):
        md.learn_listing(gen, made["ino"], None, [], md.attr_lock(made["ino"]))  # empty yet
    kept_on(made)
    return data


async def unname_call(mdt: Import, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """An unlink or rmdir of args' (parent, name). With the lock cache it asks for the
    directory's lock back, and keeps what it knew of the directory where nothing else
    changed it (as make_call): an `rm -rf` then looks up none of the names left."""
    md = mdt.md_locks
    if md is None:
        return await md_call(mdt, op, args)
    data, kept_on = await _in_directory(md, mdt, op, args, [])
    kept_on(None)
    return data


async def _in_directory(md: MetadataLocks, mdt: Import, op: str, args: dict[str, Any],
                        lock: list[str]) -> tuple[dict[str, Any], Callable[[Any], None]]:
    """A change of args' (parent, name), asking for `lock` and the directory's lock back.
    The directory's lock goes with the request (early cancel), but what it kept waits for
    the reply: kept on if nothing but this change touched the directory (client/md_carry.py),
    which the returned function does, given what was made (None: a name went)."""
    gen = md.generation
    parent, name = args["parent"], args["name"]
    prior = md.carry.detach(parent)
    try:
        data = await md_call(mdt, op, {**args, "lock": [*lock, "parent"]},
                             cancel=[prior[0]] if prior is not None else [])
    except BaseException:
        md.carry.failed(prior)
        raise
    return data, lambda made: md.carry.learn(gen, parent, data, prior, name, made)


def _learn_intent(md: MetadataLocks, gen: int, data: dict[str, Any], *,
                  parent: int | None = None, name: str = "") -> None:
    """Keep what a change's reply brought under the locks its intent asked for (node/locks.py
    `_with_intent`): the attributes read again under them, and which xattrs the inode has."""
    if "lock" not in data and "name_lock" not in data:
        return
    made = made_attr(data)
    md.learn(gen, {**made, "lock": data.get("lock"), "name_lock": data.get("name_lock")},
             parent=parent, name=name)
    if isinstance(data.get("xattrs"), list) and gen == md.generation:
        extras.learn_xattr_names(md, made["ino"], data["xattrs"])


async def setattr_call(mdt: Import, args: dict[str, Any]) -> dict[str, Any]:
    """A setattr's new attributes. With the lock cache it asks for the lock on the inode
    back with the reply (its early cancel gave this client's own up), so that what it set
    is kept: a program that changes a file's times, owner and mode in a row (tar) has the
    kernel check the attributes between them, each a round trip otherwise."""
    md = mdt.md_locks
    if md is None:
        return await md_call(mdt, "setattr", args)
    gen = md.generation
    # the names kept under the same lock go with it: asked back, as the MDT confirms them
    ino = args.get("ino")
    path = args.get("path")
    if not isinstance(ino, int) and isinstance(path, str):
        # the library's setattrs name a path: the inode it names, as far as kept (not a
        # symbolic link, which the MDT follows). Its name must come back too, or the next
        # setattr cannot find the inode to give its lock back, and is called back for it
        where = md.resolve(path)
        found = where[2] if where is not None else None
        if found is None or md.kind(found) in (None, "l"):
            # a lock asked back here could not be found by the next setattr of this path
            # either: its own change would call it back. Asked for nothing, as uncached
            return await md_call(mdt, "setattr", args)
        ino = found
    names = md.combined_names(ino) if isinstance(ino, int) else []
    ask = {**args, "lock": ["self", "name"], "names": [list(n) for n in names]} if names \
        else {**args, "lock": ["self"]}
    data = await md_call(mdt, "setattr", ask)
    _learn_intent(md, gen, data)
    if names:
        confirmed = {(n[0], n[1]) for n in data.get("names") or ()}
        md.rebind(gen, ino, data.get("name_lock"), sorted(confirmed))
        md.forget_names([n for n in names if n not in confirmed])
    return made_attr(data)


def made_attr(data: dict[str, Any]) -> dict[str, Any]:
    """The attributes in a create's reply: read again under its locks (`attr`), or the
    reply itself (an open's always has `attr`)."""
    fresh = data.get("attr")
    return fresh if isinstance(fresh, dict) else data


async def md_call(mdt: Import, op: str, args: dict[str, Any], *,
                  cancel: list[int] | None = None) -> dict[str, Any]:
    """An MDT request's reply data; a change takes this client's own locks on what it
    touches back with it (client/md_locks.py, early lock cancel), and `cancel`."""
    md = mdt.md_locks
    if md is None:
        return (await mdt.call(op, args)).data
    cancel = [*(cancel or ()), *md.cancels_for(op, args)]
    if cancel:
        try:
            return (await mdt.call(op, {**args, "cancel": cancel})).data
        except BaseException:
            md.unspare(op, args)
            raise
    return (await mdt.call(op, args)).data
