"""node/evictor.py: the eviction timeout, from fs_defs or set_param, is checked in one place."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidArgument
from shoal.node.evictor import NodeEvictor
from shoal.protocol.ping_evict import PINGS_PER_TIMEOUT


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "abc", "", None])
def test_a_bad_timeout_is_refused_and_changes_nothing(bad: object) -> None:
    ev = NodeEvictor({}, {})
    ev.set_timeout("12", "PING_EVICT_TIMEOUT")
    with pytest.raises(InvalidArgument, match="PING_EVICT_TIMEOUT=.*seconds, 0 or more"):
        ev.set_timeout(bad, "PING_EVICT_TIMEOUT")
    assert ev.timeout == 12.0


def test_clients_are_told_to_ping_six_times_a_timeout() -> None:
    ev = NodeEvictor({}, {})
    ev.set_timeout(30, "node.n.evict_timeout")
    assert ev.ping_interval == pytest.approx(30 / PINGS_PER_TIMEOUT)
    ev.set_timeout("0", "node.n.evict_timeout")  # off
    assert ev.timeout == 0.0
