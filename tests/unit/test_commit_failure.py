"""A commit that fails keeps everything it was carrying: the next commit writes it all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shoal.errors import ShoalError
from shoal.protocol import messages as m
from shoal.target.ost import OST


async def test_failed_commit_keeps_reply_data_and_slots(tmp_path: Path):
    ost = OST("scratch-OST0000", tmp_path / "ost0", fs="scratch", commit_interval=3600)
    ost.open(create=True)
    ost.db.execute("PRAGMA busy_timeout=50")
    data = b"x" * 4096
    reply, _ = ost.handle("client-1", m.Request(7, "write", ost.name,
                                                {"oid": 1, "offset": 0},
                                                bulk=data))
    assert reply.status is None and reply.transno > ost.last_committed

    # a real failure: another connection holds the database's write lock
    blocker = sqlite3.connect(tmp_path / "ost0" / "target.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises((sqlite3.Error, ShoalError)):
        await ost.commit()
    assert ost.last_committed < reply.transno
    blocker.execute("ROLLBACK")
    blocker.close()

    assert await ost.commit() >= reply.transno
    rows = ost.db.execute("SELECT transno FROM reply_data WHERE client='client-1' AND xid=7")
    assert rows.fetchall() == [(reply.transno,)]
    slot = ost.db.execute("SELECT last_xid, last_transno FROM last_rcvd WHERE client='client-1'")
    assert slot.fetchone() == (7, reply.transno)
    await ost.stop()
