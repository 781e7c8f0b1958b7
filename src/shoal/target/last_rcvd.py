"""A target's last_rcvd and reply data: the rows that let a resent request be answered without
doing it twice, and tell a restarted target which clients may hold replies it lost.

Per client, last_rcvd keeps one slot (last xid, last transno); reply_data keeps the result of
each change the client has not yet acknowledged (known_xid). Both reach the disk in the same
commit as the changes themselves (a CommitBatch), so after a crash they agree with the
journal. The tables are created with the rest of target.db (base._SCHEMA); TargetService
keeps the in-memory copies and decides what goes into each batch.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgpack

# last_rcvd row of a slot given back (eviction, fresh export): open() skips it. Written
# through the ordinary commit batch, so freeing a slot is as durable as filling one.
FREE_SLOT = (-1, -1)


@dataclass(slots=True)
class CommitBatch:
    upto: int  # every transno <= upto is in this batch
    replies: list[tuple[str, int, int, bytes]]  # (client, xid, transno, result)
    forget: dict[str, int]  # client -> known_xid: reply data below may be dropped
    slots: dict[str, tuple[int, int]]  # client -> (last_xid, last_transno)


@dataclass(slots=True)
class CachedReply:
    transno: int
    status: str | None
    message: str
    data: dict[str, Any]
    pre_versions: list[int]


def pack_result(c: CachedReply) -> bytes:
    return msgpack.packb([c.status, c.message, c.data, c.pre_versions], use_bin_type=True)


def unpack_result(transno: int, blob: bytes) -> CachedReply:
    status, message, data, pre = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    return CachedReply(transno, status, message, data, pre)


def load(db: sqlite3.Connection) -> tuple[dict[str, dict[int, CachedReply]],
                                          dict[str, tuple[int, int]]]:
    """The reply data (client -> xid -> reply) and the slots in use (client -> (last_xid,
    last_transno)) as the last commit left them."""
    replies: defaultdict[str, dict[int, CachedReply]] = defaultdict(dict)
    for client, xid, transno, blob in db.execute(
            "SELECT client, xid, transno, result FROM reply_data"):
        replies[client][xid] = unpack_result(transno, blob)
    slots: dict[str, tuple[int, int]] = {}
    for client, last_xid, last_transno in db.execute(
            "SELECT client, last_xid, last_transno FROM last_rcvd"):
        if (last_xid, last_transno) != FREE_SLOT:
            slots[client] = (last_xid, last_transno)
    return replies, slots


def write_rows(db: sqlite3.Connection, batch: CommitBatch, epoch: int) -> None:
    """SQL for the batch's last_rcvd slots and reply data (call inside a transaction)."""
    db.executemany(
        "INSERT OR REPLACE INTO reply_data (client, xid, transno, result) VALUES (?,?,?,?)",
        batch.replies)
    for client, known in batch.forget.items():
        db.execute("DELETE FROM reply_data WHERE client=? AND xid<?", (client, known))
    for client, (xid, transno) in batch.slots.items():
        db.execute(
            "INSERT OR REPLACE INTO last_rcvd (client, last_xid, last_transno, epoch, "
            "connected_at) VALUES (?,?,?,?,?)", (client, xid, transno, epoch, time.time()))
