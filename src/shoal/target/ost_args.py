"""Arguments of OST requests, checked: what a malformed one gets instead is EINVAL."""

from __future__ import annotations

from typing import Any

from shoal.errors import InvalidArgument
from shoal.protocol import quota as q

Owner = tuple[int, int, int]  # (uid, gid, projid): whose quotas an object's blocks count in
ROOT: Owner = (0, 0, 0)


def uint_arg(args: dict[str, Any], key: str, limit: int | None = None) -> int:
    if key not in args:
        raise InvalidArgument(f"missing argument {key!r}")
    v = args[key]
    if type(v) is not int or v < 0:  # bool is an int subclass; it is not an offset
        raise InvalidArgument(f"{key} must be a non-negative integer, not {v!r}")
    if limit is not None and v > limit:
        raise InvalidArgument(f"{key} {v} is larger than {limit}")
    return v


def oid_list(args: dict[str, Any], limit: int) -> list[int]:
    oids = args.get("oids")
    if not isinstance(oids, list) or len(oids) > limit:
        raise InvalidArgument(f"oids must be a list of at most {limit} object ids")
    return [uint_arg({"oid": o}, "oid") for o in oids]


def owner_arg(v: Any) -> Owner:
    if (not isinstance(v, list | tuple) or len(v) != 3
            or any(type(x) is not int or not 0 <= x < 1 << 32 for x in v)):
        raise InvalidArgument(f"an owner is [uid, gid, projid] of 32-bit ids, not {v!r}")
    return (v[0], v[1], v[2])


def owner_of(current: Owner, owned: bool, args: dict[str, Any]) -> tuple[Owner, bool]:
    """A write's owner, and whether it is known: its object's, once known (named by a
    write or a setowner); else the one the write gives (the file's, sent by its client), as
    Lustre's OSTs take it; else root's, until one comes."""
    if owned:
        return current, True
    v = args.get("owner")
    return (current, False) if v is None else (owner_arg(v), True)


def owners_arg(args: dict[str, Any], limit: int) -> list[tuple[int, Owner]]:
    """setowner's [[oid, uid, gid, projid], ...]."""
    objs = args.get("objects")
    if not isinstance(objs, list) or len(objs) > limit:
        raise InvalidArgument(f"objects must be a list of at most {limit}")
    out = []
    for row in objs:
        if not isinstance(row, list) or len(row) != 4:
            raise InvalidArgument(f"an object's owner is [oid, uid, gid, projid], not {row!r}")
        out.append((uint_arg({"oid": row[0]}, "oid"), owner_arg(row[1:])))
    return out


def qkey_arg(args: dict[str, Any]) -> tuple[str, int]:
    try:
        return q.check_qtype(args.get("qtype")), q.check_id(args.get("id"))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


__all__ = ["ROOT", "Owner", "oid_list", "owner_arg", "owner_of", "owners_arg", "qkey_arg",
           "uint_arg"]
