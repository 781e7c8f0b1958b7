"""A recovering target's log of the new clients it refuses (target/recovery.py): one line a
second, with the count of the others, however fast they retry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shoal.errors import Busy
from shoal.target.recovery import REFUSALS_LOGGED_EVERY, TargetRecovery
from tests.unit.test_target_recovery import Peer, crash_and_restart, mdt_at


async def test_refused_new_clients_are_logged_once_a_second_with_a_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mdt = mdt_at(tmp_path / "mdt")
    Peer("a").do(mdt, "mkdir", path="/a")
    await mdt.commit()
    mdt = await crash_and_restart(mdt, mdt_at)
    rec = TargetRecovery(mdt, soft_timeout=5.0, hard_timeout=10.0, ir=False)
    try:
        with caplog.at_level(logging.INFO, logger="shoal.target.recovery"):
            with pytest.raises(Busy, match="Denying connection for new client stranger, "
                                           r"waiting for 1 known clients .* try again later"):
                rec.connect("stranger", ["initial"])
            for i in range(50):  # new clients retrying while the window lasts
                with pytest.raises(Busy):
                    rec.connect(f"stranger{i}", ["initial"])
            rec._refusal_logged_at -= REFUSALS_LOGGED_EVERY  # a second later
            with pytest.raises(Busy):
                rec.connect("stranger", ["initial"])
        denials = [r.getMessage() for r in caplog.records if "Denying" in r.getMessage()]
        assert len(denials) == 2, denials  # one a second, and the count of the others
        assert "stranger," in denials[0] and denials[1].endswith("(and 50 more refused since)")
    finally:
        rec.close()
        await mdt.stop()
