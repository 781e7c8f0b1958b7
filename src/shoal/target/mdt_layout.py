"""Striping layouts: which OST objects hold a file, decided once when the file is created.

A layout is RAID-0 over `stripe_count` OSTs in `osts` order, `stripe_size` bytes per stripe
unit, and one object id (`oid`) shared by every stripe: oid = (mdt index << 48) | ino, so
an object can be traced back to its file from the OST alone (Lustre keeps the parent FID in
the object's xattr for the same reason).

The settings come, most specific first, from the create request, from the nearest ancestor
directory's default layout (setstripe on a directory), and from the MDT's defaults. A field
may be left unset at any level and is then filled from the next one, as `lfs setstripe -c 2`
keeps the file system's stripe size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.errors import InvalidArgument

STRIPE_UNIT = 64 << 10  # stripe sizes are multiples of this (Lustre's LOV_MIN_STRIPE_SIZE)
OID_SHIFT = 48
STRIPE_KEYS = ("stripe_count", "stripe_size", "stripe_offset")


@dataclass(frozen=True, slots=True)
class StripeArgs:
    """Requested striping; None fields inherit. count -1: every OST; offset -1: round robin."""

    count: int | None = None
    size: int | None = None
    offset: int | None = None

    def over(self, base: StripeArgs | None) -> StripeArgs:
        """These settings, with unset fields taken from `base`."""
        if base is None:
            return self
        return StripeArgs(base.count if self.count is None else self.count,
                          base.size if self.size is None else self.size,
                          base.offset if self.offset is None else self.offset)

    def as_dict(self) -> dict[str, int | None]:
        return {"stripe_count": self.count, "stripe_size": self.size,
                "stripe_offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StripeArgs:
        return cls(d.get("stripe_count"), d.get("stripe_size"), d.get("stripe_offset"))


def _int_or_none(args: dict[str, Any], key: str) -> int | None:
    v = args.get(key)
    if v is None:
        return None
    if type(v) is not int or not -(1 << 31) <= v < 1 << 40:
        raise InvalidArgument(f"{key} must be an integer of sane size, not {v!r}")
    return v


class LayoutPolicy:
    """Validates striping requests and turns them into layouts for new files."""

    def __init__(self, mdt_index: int, ost_count: int, default_size: int,
                 default_count: int) -> None:
        if ost_count < 0:
            raise InvalidArgument(f"ost_count must be >= 0, not {ost_count}")
        self.mdt_index = mdt_index
        self.ost_count = ost_count
        self.defaults = StripeArgs(default_count, default_size, -1)
        self.check(self.defaults)
        self._rr = 0  # where the next round-robin file starts

    def parse(self, args: dict[str, Any]) -> StripeArgs | None:
        """The stripe arguments of a request, validated; None when it gives none."""
        if "stripe_count" not in args and "stripe_size" not in args \
                and "stripe_offset" not in args:
            return None
        count = _int_or_none(args, "stripe_count")
        size = _int_or_none(args, "stripe_size")
        offset = _int_or_none(args, "stripe_offset")
        if count is None and size is None and offset is None:
            return None
        sa = StripeArgs(count, size, offset)
        self.check(sa)
        return sa

    def check(self, sa: StripeArgs) -> None:
        if sa.size is not None and (sa.size <= 0 or sa.size % STRIPE_UNIT):
            raise InvalidArgument(
                f"stripe_size {sa.size} is not a positive multiple of {STRIPE_UNIT}")
        if sa.count is not None and sa.count < -1:
            raise InvalidArgument(f"stripe_count {sa.count} is not -1, 0 or positive")
        if sa.offset is not None and not -1 <= sa.offset < max(self.ost_count, 1):
            raise InvalidArgument(
                f"stripe_offset {sa.offset} is not -1 or an OST index below {self.ost_count}")

    def make(self, ino: int, sa: StripeArgs | None) -> dict[str, Any]:
        """The layout of new file `ino` (sa already merged over inherited settings)."""
        n = self.ost_count
        d = self.defaults
        if sa is None:
            sa = d
        count = sa.count if sa.count else d.count  # 0 and None: the default
        if count is None or count == -1 or count > n:
            count = n
        size = sa.size or d.size
        offset = sa.offset
        if offset is None or offset == -1:
            offset = self._rr % n if n else 0
            self._rr += 1
        return {"pattern": "raid0", "stripe_count": count, "stripe_size": size,
                "osts": [(offset + i) % n for i in range(count)],
                "oid": (self.mdt_index << OID_SHIFT) | ino}

    def replayed(self, ino: int, layout: Any) -> dict[str, Any] | None:
        """The layout a replayed create carries (what its first execution chose), if valid.

        A replay must recreate the same striping: the client may already have written to
        those objects before the server died."""
        if not isinstance(layout, dict):
            return None
        osts = layout.get("osts")
        size = layout.get("stripe_size")
        if (not isinstance(osts, list) or not isinstance(size, int)
                or not all(isinstance(o, int) and 0 <= o < self.ost_count for o in osts)):
            return None
        self.check(StripeArgs(None, size, None))
        return {"pattern": "raid0", "stripe_count": len(osts), "stripe_size": size,
                "osts": list(osts), "oid": (self.mdt_index << OID_SHIFT) | ino}
