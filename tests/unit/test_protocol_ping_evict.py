"""The ping eviction rule (protocol/ping_evict.py), on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.protocol.ping_evict import (
    DEFAULT_PING_INTERVAL,
    PINGS_PER_TIMEOUT,
    PingEvictor,
    check_interval,
    ping_interval,
)


def test_a_client_heard_within_the_timeout_stays() -> None:
    ev = PingEvictor(timeout=10.0)
    ev.heard_from("a", 100.0)
    assert ev.expired(["a"], 109.9, since=0.0) == []
    assert ev.expired(["a"], 110.1, since=0.0) == ["a"]


def test_every_request_or_ping_restarts_the_count() -> None:
    ev = PingEvictor(timeout=10.0)
    for t in range(0, 100, 9):  # a ping every 9 s against a 10 s timeout
        ev.heard_from("a", float(t))
        assert ev.expired(["a"], t + 9.5, since=0.0) == []


def test_a_client_never_heard_counts_from_when_the_target_began_serving() -> None:
    ev = PingEvictor(timeout=10.0)
    assert ev.expired(["b"], 50.0, since=45.0) == []
    assert ev.expired(["b"], 56.0, since=45.0) == ["b"]


def test_time_before_the_target_served_does_not_count() -> None:
    """Heard at 0, the target (failed over) serves from 100: the client gets a whole timeout
    from 100, not from its last request to the old instance."""
    ev = PingEvictor(timeout=10.0)
    ev.heard_from("a", 0.0)
    assert ev.expired(["a"], 105.0, since=100.0) == []
    assert ev.silent_for("a", 105.0, since=100.0) == pytest.approx(5.0)


def test_only_the_clients_asked_about_are_considered() -> None:
    ev = PingEvictor(timeout=1.0)
    ev.heard_from("stateless", 0.0)
    assert ev.expired(["with-state"], 10.0, since=0.0) == ["with-state"]


def test_timeout_zero_turns_eviction_off_and_negative_is_refused() -> None:
    ev = PingEvictor(timeout=5.0)
    ev.set_timeout(0.0)
    assert ev.expired(["a", "b"], 1e9, since=0.0) == []
    with pytest.raises(ValueError):
        ev.set_timeout(-1.0)
    assert ev.timeout == 0.0


def test_forget_drops_what_was_heard() -> None:
    ev = PingEvictor(timeout=10.0)
    ev.heard_from("a", 100.0)
    ev.forget("a")
    assert ev.expired(["a"], 105.0, since=0.0) == ["a"]


@given(timeout=st.floats(min_value=0.01, max_value=1e5))
def test_a_client_pinging_as_told_is_never_evicted(timeout: float) -> None:
    """Pings every ping_interval(timeout), however late the node checks: never expired."""
    ev = PingEvictor(timeout=timeout)
    every = ping_interval(timeout)
    if every >= timeout:
        return  # only below MIN_PING_INTERVAL*6: such a timeout cannot be kept alive
    t = 0.0
    for _ in range(20):
        ev.heard_from("a", t)
        assert ev.expired(["a"], t + every, since=0.0) == []
        t += every
    assert check_interval(timeout) <= max(timeout, 0.2)


def test_intervals() -> None:
    assert ping_interval(150.0) == pytest.approx(150.0 / PINGS_PER_TIMEOUT)
    assert ping_interval(0.0) == DEFAULT_PING_INTERVAL
    assert ping_interval(0.3) == pytest.approx(0.2)  # not a busy loop
    assert check_interval(150.0) == pytest.approx(15.0)


def test_prune_forgets_only_clients_silent_past_the_timeout() -> None:
    ev = PingEvictor(timeout=10.0)
    ev.heard_from("old", 0.0)
    ev.heard_from("recent", 15.0)
    assert ev.prune(20.0) == 1
    assert set(ev.heard) == {"recent"}
    # pruned or not, a client with state past the timeout is expired all the same
    assert ev.expired(["old", "recent"], 20.0, since=0.0) == ["old"]
    ev.set_timeout(0.0)
    assert ev.prune(1e9) == 0 and set(ev.heard) == {"recent"}


def test_a_node_that_was_away_itself_notices() -> None:
    """Checks every timeout/10; a gap of half a timeout means the node was not running
    (paused, its loop stalled), not that its clients were silent."""
    ev = PingEvictor(timeout=10.0)
    assert not ev.node_was_away(100.0)  # the first check has nothing to compare
    for t in (101.0, 102.5, 104.0):
        assert not ev.node_was_away(t)
    assert ev.node_was_away(109.5)
    assert not ev.node_was_away(110.5)
    ev.set_timeout(0.0)
    assert not ev.node_was_away(1e6)
