"""Open file handles: who has which inode open, kept in memory and in target.db.

The MDT must know a file is open so that unlinking it leaves an orphan (the inode stays,
with nlink 0, until the last close) rather than destroying objects a client still writes.
Handles are written to the same transaction as the open itself: a committed open survives
a restart even though the base answers its replay from the reply data instead of running it
again, and an uncommitted one vanishes together with everything else its replay will redo.
A handle number is the open's transno, so a replayed open gets back the handle it first had.
"""

from __future__ import annotations

import os
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
        # ino -> client -> its handles open for writing: a file written elsewhere may be
        # larger than the MDT knows (a writer reports its size at close), and other clients
        # ask its OSTs (node/locks.py marks its attributes `writers`)
        self.writers: dict[int, Counter[str]] = {}
        for handle, ino, client, flags in db.execute(
                "SELECT handle, ino, client, flags FROM open_handles"):
            self.handles[handle] = OpenFile(ino, client, flags)
            self.opens[ino] += 1
            self._count_writer(ino, client, flags, 1, note=False)

    def is_open(self, ino: int) -> bool:
        return ino in self.opens

    def others_writing(self, ino: int, client: str) -> bool:
        """Whether a client other than `client` has `ino` open for writing."""
        c = self.writers.get(ino)
        return c is not None and (len(c) > 1 or client not in c)

    def _count_writer(self, ino: int, client: str, flags: int, delta: int, *,
                      note: bool = True) -> None:
        if not flags & (os.O_WRONLY | os.O_RDWR):
            return
        c = self.writers.setdefault(ino, Counter())
        before = c[client]
        c[client] = before + delta
        if c[client] <= 0:
            del c[client]
            if not c:
                del self.writers[ino]
        if note and (before == 0) != (before + delta <= 0):
            # who writes it changed: the attributes others keep (`writers`) are called back
            self.db.execute("INSERT OR IGNORE INTO temp.rewritten VALUES (?, ?)",
                            (ino, client))

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
        self._count_writer(ino, client, flags, 1)

    def remove(self, handle: int) -> int:
        """Forget a handle; returns how many handles its inode still has."""
        self.db.execute("DELETE FROM open_handles WHERE handle=?", (handle,))
        of = self.handles.pop(handle)
        self._count_writer(of.ino, of.client, of.flags, -1)
        left = self.opens[of.ino] - 1
        if left:
            self.opens[of.ino] = left
        else:
            del self.opens[of.ino]
        return left

    def of_client(self, client: str) -> list[int]:
        return [h for h, of in self.handles.items() if of.client == client]
