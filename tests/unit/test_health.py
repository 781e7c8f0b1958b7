"""The health check's stuck journal: changes waiting too long for a commit, measured from
when they were made. An idle target commits nothing, so the time since its last commit says
nothing: measured from there, the first write after a quiet spell (a metadata-only phase
of a job) made every OST look stuck, and their agents failed them all over at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.node import health
from shoal.node.health import HealthMonitor
from shoal.target.ost import OST
from tests.unit.ost_client import NAME, Client


async def test_a_write_after_a_quiet_spell_is_not_a_stuck_journal(tmp_path: Path) -> None:
    ost = OST(NAME, tmp_path / "ost0", fs="scratch", commit_interval=1.0)
    ost.format()
    await ost.start()
    try:
        mon = HealthMonitor({NAME: ost})
        # (no await from here to the check: the commit loop cannot run in between); the
        # target started, and committed nothing since, however long ago that was
        assert Client(ost).write(1, 0, b"x" * 4096).status is None
        assert ost.last_transno > ost.last_committed
        assert mon.problem(NAME) is None
    finally:
        await ost.stop()


async def test_changes_that_wait_past_the_grace_are_a_stuck_journal_until_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "COMMIT_GRACE", 0.3)
    ost = OST(NAME, tmp_path / "ost0", fs="scratch", commit_interval=0.05)
    ost.format()
    await ost.start()
    try:
        mon = HealthMonitor({NAME: ost})
        refused = {"on": True}

        def guard() -> None:  # the device refuses writes: every commit fails
            if refused["on"]:
                raise OSError("EIO: the device is gone")

        ost.commit_guard = guard
        assert Client(ost).write(1, 0, b"x" * 4096).status is None
        assert mon.problem(NAME) is None  # a change just made is not late
        await _until(lambda: mon.problem(NAME) is not None)
        assert "has not committed changes made" in (mon.problem(NAME) or "")
        refused["on"] = False
        await _until(lambda: ost.last_committed == ost.last_transno)
        assert mon.problem(NAME) is None and ost.uncommitted_since is None
    finally:
        await ost.stop()


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
