"""POSIX ACLs on the MDT: what the kernel leaves to a FUSE file system that enforces them
(FUSE_POSIX_ACL: "userspace is responsible for keeping the file mode in sync with the ACL,
and ensuring inheritance of default ACLs when new filesystem nodes are created"). Done here,
in the same transaction as the change itself, so a replay after an MDS failover redoes it
whole. The rules are protocol/posix_acl.py's; the kernel of the client enforces the ACLs.
"""

from __future__ import annotations

import stat as st

from shoal.errors import PermissionDenied
from shoal.protocol import posix_acl
from shoal.protocol.xattr_names import ACL_ACCESS, ACL_DEFAULT
from shoal.target.mdt_namespace import Namespace

_GET = "SELECT value FROM xattrs WHERE ino=? AND name=?"
_PUT = "INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?,?,?)"
_DEL = "DELETE FROM xattrs WHERE ino=? AND name=?"


def _get(ns: Namespace, ino: int, name: bytes) -> bytes | None:
    row = ns.sql(_GET, (ino, name)).fetchone()
    return None if row is None else bytes(row[0])


def set_acl(ns: Namespace, ino: int, mode: int, name: bytes, value: bytes) -> int | None:
    """Store an ACL xattr (an empty value removes it); the inode's new mode when an access
    ACL changed it (None: the mode stays)."""
    if name == ACL_DEFAULT and mode & 0o170000 != st.S_IFDIR:
        raise PermissionDenied("only a directory has a default ACL")
    entries = posix_acl.decode(value) if value else []
    if not entries:  # an empty value, or a header without entries, removes it (as Linux)
        ns.sql(_DEL, (ino, name))
        return None
    if name == ACL_DEFAULT:
        ns.sql(_PUT, (ino, name, posix_acl.encode(entries)))
        return None
    new_mode, keep = posix_acl.update_mode(entries, mode)
    if keep:
        ns.sql(_PUT, (ino, name, posix_acl.encode(entries)))
    else:
        ns.sql(_DEL, (ino, name))  # the mode says it all, as ext4 keeps it
    return new_mode


def chmod(ns: Namespace, ino: int, mode: int) -> None:
    """A chmod moves the access ACL's owner, mask (or group) and other entries with it."""
    value = _get(ns, ino, ACL_ACCESS)
    if value is not None:
        entries = posix_acl.chmod(posix_acl.decode(value), mode)
        ns.sql(_PUT, (ino, ACL_ACCESS, posix_acl.encode(entries)))


def inherited(ns: Namespace, parent: int, mode: int) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The mode and ACL xattrs of a new inode of `mode` (type bits included) in `parent`:
    unchanged and none when the parent has no default ACL. A new directory keeps the
    default ACL too. (Through the mount the mode comes already cut by the umask: pyfuse3
    cannot ask the kernel for FUSE_DONT_MASK, so a default ACL does not restore bits the
    umask took, as it would on ext4.)"""
    value = _get(ns, parent, ACL_DEFAULT)
    if value is None:
        return mode, []
    default = posix_acl.decode(value)
    new_mode, access = posix_acl.create(default, mode)
    rows = [] if access is None else [(ACL_ACCESS, posix_acl.encode(access))]
    if mode & 0o170000 == st.S_IFDIR:
        rows.append((ACL_DEFAULT, value))
    return new_mode, rows


def store(ns: Namespace, ino: int, rows: list[tuple[bytes, bytes]]) -> None:
    for name, value in rows:
        ns.sql(_PUT, (ino, name, value))
