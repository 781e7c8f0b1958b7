"""The OST's pending-write log: acknowledged changes not yet written to the object files.

Theory of operation. A modifying request is applied to a PendingLog, in memory, and answered;
the object files only change when a commit writes a whole log out (`ost_files.apply_log`).
A crash therefore loses exactly the uncommitted tail, the way a server loses its page cache,
and client replay restores it. Reads see the files overlaid with the pending entries, so a
client always reads back what it was told is written.

Per object the log keeps the entries in request order: a write (offset, bytes), a punch (new
size: shrink, or extend with zeros) and a destroy (the object and its file go away; a later
write starts a new, empty object). Order matters: a punch after a write cuts it, a write after
a punch lands on zeros, so an overlay replays the entries one by one over the range read.

Write entries hold the request's bulk as is: a 4 MiB write is never copied on its way in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Write:
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(slots=True)
class Punch:
    """Truncate or extend to `size`; every byte past `size` reads as zero afterwards."""

    size: int


@dataclass(slots=True)
class Destroy:
    """The object is removed; for reads it is a punch to zero."""


Entry = Write | Punch | Destroy


@dataclass(slots=True)
class PendingLog:
    """Changes applied and acknowledged but not yet on the object files."""

    entries: dict[int, list[Entry]] = field(default_factory=dict)
    nbytes: int = 0  # bulk bytes held, what dirty_bytes() reports

    def __bool__(self) -> bool:
        return bool(self.entries)

    def add(self, oid: int, entry: Entry) -> None:
        lst = self.entries.get(oid)
        if lst is None:
            self.entries[oid] = [entry]
        else:
            lst.append(entry)
        if isinstance(entry, Write):
            self.nbytes += len(entry.data)

    def get(self, oid: int) -> list[Entry] | None:
        return self.entries.get(oid)

    def pending_bytes(self, oid: int) -> int:
        return sum(len(e.data) for e in self.entries.get(oid, ()) if isinstance(e, Write))

    def prepend(self, older: PendingLog) -> None:
        """Put `older`'s entries before ours (a failed commit goes back in front)."""
        merged = {oid: list(lst) for oid, lst in older.entries.items()}
        for oid, lst in self.entries.items():
            merged.setdefault(oid, []).extend(lst)
        self.entries = merged
        self.nbytes += older.nbytes


def overlay(entries: Iterable[Entry], buf: bytearray, start: int) -> None:
    """Replay `entries` in order over `buf`, which holds bytes [start, start+len(buf))."""
    end = start + len(buf)
    for e in entries:
        if isinstance(e, Write):
            lo = max(start, e.offset)
            hi = min(end, e.end)
            if lo < hi:
                buf[lo - start:hi - start] = memoryview(e.data)[lo - e.offset:hi - e.offset]
        else:
            cut = 0 if isinstance(e, Destroy) else e.size
            if cut < end:
                lo = max(start, cut)
                buf[lo - start:] = bytes(end - lo)


def last_destroy(entries: list[Entry]) -> int:
    """Index of the last Destroy in `entries`, or -1: what comes before it is moot."""
    for i in range(len(entries) - 1, -1, -1):
        if isinstance(entries[i], Destroy):
            return i
    return -1
