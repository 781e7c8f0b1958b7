"""RAID-0 striping: where each byte of a file lives, as Lustre's LOV computes it.

A file of stripe_count stripes of stripe_size bytes puts stripe unit k (bytes
[k*size, (k+1)*size)) on stripe k % count, at object offset (k // count) * size. A contiguous
file range therefore maps to one contiguous range per object, which lets the client send one
RPC per OST for a large write instead of one per stripe unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Layout:
    stripe_size: int
    osts: tuple[int, ...]  # OST index of each stripe, in stripe order
    oid: int

    @property
    def stripe_count(self) -> int:
        return len(self.osts)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(int(d["stripe_size"]), tuple(int(i) for i in d["osts"]), int(d["oid"]))


@dataclass(frozen=True, slots=True)
class Piece:
    """A contiguous run of one stripe's object covering part of a file range."""

    stripe: int
    obj_offset: int
    length: int
    file_offsets: tuple[tuple[int, int], ...]  # (file offset, length) runs it is made of


def osts_touched(layout: Layout, start: int, end: int) -> set[int]:
    """The OSTs (indexes) whose objects hold bytes [start, end) of the file."""
    if end <= start:
        return set()
    first, last = start // layout.stripe_size, (end - 1) // layout.stripe_size
    if last - first + 1 >= layout.stripe_count:
        return set(layout.osts)
    return {layout.osts[u % layout.stripe_count] for u in range(first, last + 1)}


def map_range(layout: Layout, offset: int, length: int) -> list[Piece]:
    """The per-stripe object ranges that hold file bytes [offset, offset+length)."""
    size, count = layout.stripe_size, layout.stripe_count
    runs: dict[int, list[tuple[int, int, int]]] = {}  # stripe -> [(obj_off, file_off, len)]
    pos, end = offset, offset + length
    while pos < end:
        unit = pos // size
        within = pos - unit * size
        n = min(size - within, end - pos)
        stripe = unit % count
        obj_off = (unit // count) * size + within
        runs.setdefault(stripe, []).append((obj_off, pos, n))
        pos += n
    pieces: list[Piece] = []
    for stripe, parts in runs.items():
        start = parts[0][0]
        cur = start
        files: list[tuple[int, int]] = []
        for obj_off, file_off, n in parts:
            if obj_off != cur:  # not contiguous in the object (cannot happen for one range)
                pieces.append(Piece(stripe, start, cur - start, tuple(files)))
                start, files = obj_off, []
            files.append((file_off, n))
            cur = obj_off + n
        pieces.append(Piece(stripe, start, cur - start, tuple(files)))
    return pieces


def split_piece(piece: Piece, max_bytes: int) -> list[Piece]:
    """Cut a piece into pieces of at most max_bytes (one RPC each)."""
    if piece.length <= max_bytes:
        return [piece]
    out: list[Piece] = []
    obj_off = piece.obj_offset
    cur: list[tuple[int, int]] = []
    cur_len = 0
    for file_off, n in piece.file_offsets:
        while n > 0:
            take = min(n, max_bytes - cur_len)
            cur.append((file_off, take))
            cur_len += take
            file_off += take
            n -= take
            if cur_len == max_bytes:
                out.append(Piece(piece.stripe, obj_off, cur_len, tuple(cur)))
                obj_off += cur_len
                cur, cur_len = [], 0
    if cur:
        out.append(Piece(piece.stripe, obj_off, cur_len, tuple(cur)))
    return out


def object_size(layout: Layout, file_size: int, stripe: int) -> int:
    """How long stripe `stripe`'s object is for a file of file_size bytes (for truncate)."""
    size, count = layout.stripe_size, layout.stripe_count
    full_units, rest = divmod(file_size, size)
    units_here, extra = divmod(full_units, count)
    length = units_here * size
    if stripe < extra:
        length += size
    elif stripe == extra:
        length += rest
    return length


def file_size_from_objects(layout: Layout, sizes: list[int]) -> int:
    """The file size implied by its objects' sizes (a glimpse)."""
    size, count = layout.stripe_size, layout.stripe_count
    best = 0
    for stripe, obj_size in enumerate(sizes):
        if obj_size <= 0:
            continue
        last = obj_size - 1
        unit_in_obj, within = divmod(last, size)
        file_off = (unit_in_obj * count + stripe) * size + within
        best = max(best, file_off + 1)
    return best


def pages_touched(offset: int, length: int) -> int:
    """The 4 KiB pages a write of `length` bytes at `offset` touches (what it may allocate on
    the OSTs: the MDT adds them up as the file's blocks in use)."""
    if length <= 0:
        return 0
    return (offset + length - 1) // 4096 - offset // 4096 + 1
