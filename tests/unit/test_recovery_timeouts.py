"""protocol/recovery_timeouts.py: how long a window waits when IR cannot reach every client
(Lustre's IR_STARTUP), on a fake clock."""

from __future__ import annotations

from shoal.protocol.recovery import ServerRecovery, soft_window
from shoal.protocol.recovery_timeouts import REACH_MARGIN, ir_ready, reach


def test_a_window_without_ir_waits_for_an_idle_clients_next_ping() -> None:
    """A client idle when its MGS and MDT host lost power hears no IR notice (the MGS moved
    too) and notices only at its next ping: the window must outlast that, or it evicts the
    client with what it had to replay (the rig: 5 s windows, pings then every 25 s)."""
    reach_s = reach(25.0)
    assert reach_s == 25.0 + REACH_MARGIN
    assert soft_window(10.0, ir=False, reach_s=reach_s) == reach_s
    assert soft_window(10.0, ir=True, reach_s=reach_s) == 5.0  # IR tells the idle too
    assert soft_window(60.0, ir=False, reach_s=reach_s) == 60.0  # never shorter than asked
    r = ServerRecovery("t", {"a": 0}, 0, 0.0, ir=False, reach_s=reach_s)
    # the hard limit moves as far (a soft expiry's replays and gap skips still need time)
    assert r.next_deadline() == reach_s and r.hard_deadline == 30.0 + reach_s - 10.0
    r = ServerRecovery("t", {"a": 0}, 0, 0.0, ir=False, soft=50.0, hard=60.0, reach_s=40.0)
    assert r.next_deadline() == 50.0 and r.hard_deadline == 60.0


def test_ir_counts_only_once_the_mgs_has_settled() -> None:
    """Lustre's IR_STARTUP: the MGS's notices reach only the clients that found it again."""
    assert not ir_ready(None, 1000.0, 31.0)  # the MGS is not UP
    assert not ir_ready(990.0, 1000.0, 31.0)  # moved 10 s ago (with the MDT, say)
    assert ir_ready(969.0, 1000.0, 31.0)
