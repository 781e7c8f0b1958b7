"""A directory's lock carried through this client's own changes in it (issue 20).

A create, unlink or rmdir changes its directory, so it gives the client's UPDATE lock on
the directory back with the request (early lock cancel), and with it what the lock kept:
the names looked up, the names known absent, the listing. Without more, an untar then asks
the MDT for the next name of every file (a lookup of a name known absent a moment ago) and
the kernel for the directory's attributes after every create, and an `rm -rf` looks up
every name it is about to remove.

So the change asks for the directory's lock back with its reply (`"parent"`: node/locks.py
`_with_parent`), and the client sets aside what the old lock kept until the reply comes
(`detach`): the reply says what the directory was just before the change (`parent_before`,
its ctime and nlink). Where that is what the client had kept, nothing but this change
touched the directory in between, and what was kept stays, with the change applied, under
the new lock (`learn`); the kernel is not told to forget it. Anything else (another
client's change came first, a callback, a failed request, a reconnect) lets it go, and the
kernel forgets it as for any lock that goes.
"""

from __future__ import annotations

from typing import Any, Protocol

from shoal.ldlm.client import HeldLock

ABSENT_KEPT = 4096  # names kept as absent per directory

Detached = tuple[int, dict[str, Any]]  # (the lock's handle, what it kept)


class CarryHost(Protocol):
    """What DirCarry uses of the lock cache it serves (client/md_locks.py MetadataLocks)."""

    generation: int

    def dir_lock(self, ino: int) -> HeldLock | None: ...

    def forget_quietly(self, handle: int) -> None: ...

    def take_dir_lock(self, handle: int, ino: int) -> HeldLock | None: ...

    def tell_dropped(self, ino: int, kept: dict[str, Any], handle: int) -> None: ...

    def give_back(self, handle: int) -> None: ...


class DirCarry:
    def __init__(self, md: CarryHost) -> None:
        self._md = md
        # by handle: (directory, what its lock kept), until the change's reply
        self._detached: dict[int, tuple[int, dict[str, Any]]] = {}

    def detach(self, ino: int) -> Detached | None:
        """Give up directory `ino`'s UPDATE lock for a change in it (its handle goes with
        the request as an early cancel), keeping what it covered aside."""
        lk = self._md.dir_lock(ino)
        if lk is None:
            return None
        self._md.forget_quietly(lk.handle)
        self._detached[lk.handle] = (ino, lk.data)
        return lk.handle, lk.data

    def child(self, parent: int, name: str) -> int | None:
        """What a lock set aside for a change in `parent` knew `name` to be. An rmdir's own
        directory may be known only there (a listing brings no LOOKUP lock of a directory),
        and its locks must go with the request: called back instead, they would wait for
        the kernel to forget its names, which it cannot while it holds that directory for
        the rmdir (SETTLE_WAIT, 0.5 s, on every directory of an `rm -rf`)."""
        for ino, data in self._detached.values():
            if ino == parent:
                return data["names"].get(name)
        return None

    def failed(self, prior: Detached | None) -> None:
        """The change's request failed: nothing is known of the directory now."""
        if prior is not None:
            self.let_go(prior[0])

    def learn(self, generation: int, parent: int, data: dict[str, Any],
              prior: Detached | None, name: str, made: dict[str, Any] | None) -> None:
        """The reply of a change of `name` in directory `parent` (`made`: what a create made
        there; None: an unlink or rmdir), sent at `generation`, with the directory's lock
        back. An unlink drops the listing (finding the name in it would cost a scan of the
        whole listing per unlink) and keeps the names."""
        md = self._md
        handle, attr, before = (data.get("parent_lock"), data.get("parent_attr"),
                                data.get("parent_before"))
        kept = self._detached.get(prior[0]) if prior is not None else None
        # the directory as it was when what the lock kept was read under it: at its grant
        # (never attributes a later reply brought, which may show a change whose callback
        # had not left yet when this change's early cancel gave the lock back)
        stamp = kept[1].get("stamp") if kept is not None else None
        carry = (kept is not None and generation == md.generation and stamp is not None
                 and isinstance(before, list) and stamp == before
                 and (made is None or isinstance(made.get("ino"), int)))
        lk = (md.take_dir_lock(handle, parent) if generation == md.generation
              and isinstance(handle, int) and isinstance(attr, dict) else None)
        if isinstance(handle, int) and lk is None:
            md.give_back(handle)  # a reply from before a reset: the server still holds it
        if prior is not None:
            if carry and kept is not None and lk is not None and lk.handle == handle:
                del self._detached[prior[0]]
                _apply(kept[1], name, made)
                lk.data.update(names=kept[1]["names"], absent=kept[1]["absent"],
                               listing=kept[1]["listing"])
            else:
                self.let_go(prior[0])
        if lk is not None and lk.handle == handle and isinstance(attr, dict):
            lk.data["attr"] = attr
            lk.data["stamp"] = [attr.get("ctime"), attr.get("nlink")]

    def let_go(self, handle: int) -> None:
        """A lock set aside is gone after all (called back, or its change's reply is not
        kept): others forget what it covered."""
        kept = self._detached.pop(handle, None)
        if kept is not None:
            self._md.tell_dropped(kept[0], kept[1], handle)

    def let_all_go(self) -> None:
        """The server dropped this client's locks, or another server answers now."""
        for handle in list(self._detached):
            self.let_go(handle)


def _apply(kept: dict[str, Any], name: str, made: dict[str, Any] | None) -> None:
    """What a directory's lock kept, after the change of `name` (made, or removed)."""
    if made is None:
        kept["names"].pop(name, None)
        kept["listing"] = None
        if len(kept["absent"]) < ABSENT_KEPT:
            kept["absent"].add(name)
    else:
        kept["names"][name] = made["ino"]
        kept["absent"].discard(name)
        if kept["listing"] is not None:
            kept["listing"].append((name, made["ino"], made.get("type")))
