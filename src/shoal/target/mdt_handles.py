"""Open file handles: who has which inode open, kept in memory and in target.db.

The MDT must know a file is open so that unlinking it leaves an orphan (the inode stays,
with nlink 0, until the last close) rather than destroying objects a client still writes.
Handles are written to the same transaction as the open itself: a committed open survives
a restart even though the base answers its replay from the reply data instead of running it
again, and an uncommitted one vanishes together with everything else its replay will redo.
A handle number is the open's transno, so a replayed open gets back the handle it first had.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass

from shoal.errors import BadFileHandle

SCHEMA = ("CREATE TABLE IF NOT EXISTS open_handles (handle INTEGER PRIMARY KEY, "
          "ino INTEGER NOT NULL, client TEXT NOT NULL, flags INTEGER NOT NULL)",)


@dataclass(slots=True)
class OpenFile:
    ino: int
    client: str
    flags: int


class HandleTable:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.handles: dict[int, OpenFile] = {}
        self.opens: Counter[int] = Counter()  # ino -> open handles
        for handle, ino, client, flags in db.execute(
                "SELECT handle, ino, client, flags FROM open_handles"):
            self.handles[handle] = OpenFile(ino, client, flags)
            self.opens[ino] += 1

    def is_open(self, ino: int) -> bool:
        return ino in self.opens

    def get(self, handle: object, client: str) -> OpenFile:
        of = self.handles.get(handle) if isinstance(handle, int) else None
        if of is None or of.client != client:
            raise BadFileHandle(f"no open handle {handle!r}")
        return of

    # add/remove run last in a handler, after everything that may fail, so the in-memory
    # table never disagrees with a rolled-back savepoint
    def add(self, handle: int, ino: int, client: str, flags: int) -> None:
        self.db.execute("INSERT INTO open_handles (handle, ino, client, flags) VALUES (?,?,?,?)",
                        (handle, ino, client, flags))
        self.handles[handle] = OpenFile(ino, client, flags)
        self.opens[ino] += 1

    def remove(self, handle: int) -> int:
        """Forget a handle; returns how many handles its inode still has."""
        self.db.execute("DELETE FROM open_handles WHERE handle=?", (handle,))
        of = self.handles.pop(handle)
        left = self.opens[of.ino] - 1
        if left:
            self.opens[of.ino] = left
        else:
            del self.opens[of.ino]
        return left

    def of_client(self, client: str) -> list[int]:
        return [h for h, of in self.handles.items() if of.client == client]
