"""POSIX ACLs in Linux's xattr form (`system.posix_acl_access` / `_default`), and the three
rules a file system that keeps them must follow (the kernel's posix_acl.c), sans I/O:

- `update_mode`: setting an access ACL sets the mode's permission bits from it (the mask
  entry gives the group bits), and an ACL that says no more than the mode is not kept;
- `chmod`: a chmod rewrites the owner, mask (or group) and other entries of the access ACL;
- `create`: a new inode in a directory with a default ACL gets an access ACL from it, cut
  down by the mode it was created with (and a directory inherits the default ACL as well).

The form: a little-endian u32 version (2), then per entry u16 tag, u16 permissions (rwx as
4/2/1), u32 id (a uid for USER, a gid for GROUP, unused for the others).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shoal.errors import InvalidArgument

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
MAX_ENTRIES = 8190  # what fits an xattr value of 64 KiB


@dataclass(frozen=True, slots=True)
class Entry:
    tag: int
    perm: int
    id: int = UNDEFINED_ID


def decode(value: bytes) -> list[Entry]:
    """The entries of an ACL in xattr form, checked as posix_acl_valid() does (EINVAL);
    none for a header alone (Linux's posix_acl_from_xattr: no ACL)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise InvalidArgument(f"an ACL of {len(value)} bytes is not whole entries")
    (version,) = _HEADER.unpack_from(value)
    if version != VERSION:
        raise InvalidArgument(f"ACL version {version} (want {VERSION})")
    n = (len(value) - _HEADER.size) // _ENTRY.size
    if n == 0:
        return []  # no ACL at all: what removes one
    if n > MAX_ENTRIES:
        raise InvalidArgument(f"an ACL of {n} entries")
    entries = [Entry(*_ENTRY.unpack_from(value, _HEADER.size + i * _ENTRY.size))
               for i in range(n)]
    _check(entries)
    return entries


def encode(entries: list[Entry]) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(e.tag, e.perm, e.id) for e in entries)


def _check(entries: list[Entry]) -> None:
    seen: dict[int, int] = {}
    named: set[tuple[int, int]] = set()
    last = (0, -1)
    for e in entries:
        if e.perm & ~7:
            raise InvalidArgument(f"ACL permissions {e.perm:#o}")
        if e.tag not in (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER):
            raise InvalidArgument(f"ACL tag {e.tag:#x}")
        key = (e.tag, e.id if e.tag in (USER, GROUP) else -1)
        if key < last:
            raise InvalidArgument("ACL entries out of order")
        last = key
        if e.tag in (USER, GROUP):
            if e.id == UNDEFINED_ID:
                raise InvalidArgument("an ACL entry names no user or group")
            if (e.tag, e.id) in named:
                raise InvalidArgument(f"ACL names id {e.id} twice")
            named.add((e.tag, e.id))
        else:
            seen[e.tag] = seen.get(e.tag, 0) + 1
    if any(seen.get(t, 0) != 1 for t in (USER_OBJ, GROUP_OBJ, OTHER)) or seen.get(MASK, 0) > 1:
        raise InvalidArgument("an ACL needs one owner, one group and one other entry")
    if named and MASK not in seen:
        raise InvalidArgument("an ACL with named users or groups needs a mask entry")


def update_mode(entries: list[Entry], mode: int) -> tuple[int, bool]:
    """The mode an access ACL gives an inode whose mode was `mode`, and whether the ACL must
    be kept (False: it says no more than the mode)."""
    perms, extended = 0, False
    for e in entries:
        if e.tag == USER_OBJ:
            perms |= e.perm << 6
        elif e.tag == GROUP_OBJ:
            perms |= e.perm << 3
        elif e.tag == OTHER:
            perms |= e.perm
        elif e.tag == MASK:
            perms = (perms & ~0o070) | (e.perm << 3)
            extended = True
        else:
            extended = True
    return (mode & ~0o777) | perms, extended


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """The access ACL after chmod(mode): the mask (or, without one, the group entry) takes
    the group bits."""
    has_mask = any(e.tag == MASK for e in entries)
    out = []
    for e in entries:
        if e.tag == USER_OBJ:
            e = Entry(e.tag, (mode >> 6) & 7, e.id)
        elif e.tag == MASK or (e.tag == GROUP_OBJ and not has_mask):
            e = Entry(e.tag, (mode >> 3) & 7, e.id)
        elif e.tag == OTHER:
            e = Entry(e.tag, mode & 7, e.id)
        out.append(e)
    return out


def create(default: list[Entry], mode: int) -> tuple[int, list[Entry] | None]:
    """A new inode's mode and access ACL (None: none needed) from its directory's default
    ACL and the mode it was created with (posix_acl_create_masq)."""
    out: list[Entry] = []
    extended = False
    group_at = mask_at = -1
    for e in default:
        if e.tag == USER_OBJ:
            e = Entry(e.tag, e.perm & (mode >> 6) & 7, e.id)
            mode &= (e.perm << 6) | ~0o700
        elif e.tag == OTHER:
            e = Entry(e.tag, e.perm & mode & 7, e.id)
            mode &= e.perm | ~0o007
        elif e.tag == GROUP_OBJ:
            group_at = len(out)
        elif e.tag == MASK:
            mask_at = len(out)
            extended = True
        else:
            extended = True
        out.append(e)
    at = mask_at if mask_at >= 0 else group_at
    g = out[at]
    out[at] = Entry(g.tag, g.perm & (mode >> 3) & 7, g.id)
    mode &= (out[at].perm << 3) | ~0o070
    return mode, (out if extended else None)
