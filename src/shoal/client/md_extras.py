"""What a client keeps with an inode's attributes, under the same lock (client/md_locks.py):
a symbolic link's target, the extended attributes asked for and which ones exist. Each
answer is kept only if the lock held when it was asked still is: a change calls that lock
back, and the same inode number on another inode comes under another lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.client.md_locks import MetadataLocks
    from shoal.ldlm.client import HeldLock


def link_target(md: MetadataLocks, ino: int) -> str | None:
    """Symbolic link `ino`'s target, if kept."""
    lk = md.attr_lock(ino)
    return lk.data.get("target") if lk is not None else None


def learn_target(md: MetadataLocks, before: HeldLock | None, ino: int, target: str) -> None:
    """A readlink's answer, asked while `before` was held (a link's target never changes)."""
    if (lk := md.still_held(before, ino)) is not None:
        lk.data["target"] = target


def xattr(md: MetadataLocks, ino: int, name: bytes) -> bytes | bool | None:
    """Inode `ino`'s extended attribute `name`, if kept: its value, False if known absent,
    None if not known."""
    lk = md.attr_lock(ino)
    if lk is None:
        return None
    kept = lk.data.get("xattrs")
    if kept is not None and name in kept:
        return kept[name]
    names = lk.data.get("xattr_names")
    return False if names is not None and name not in names else None


def learn_xattr(md: MetadataLocks, before: HeldLock | None, ino: int, name: bytes,
                value: bytes | bool) -> None:
    """A getxattr's answer (False: ENODATA), asked while `before` was held."""
    if (lk := md.still_held(before, ino)) is not None:
        lk.data.setdefault("xattrs", {})[name] = value


def learn_xattr_names(md: MetadataLocks, ino: int, names: list[bytes]) -> None:
    """Every extended attribute inode `ino` has, as a create's intent answered."""
    lk = md.attr_lock(ino)
    if lk is not None:
        lk.data["xattr_names"] = {bytes(n) for n in names}
