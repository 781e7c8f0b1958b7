"""protocol/presence.py: the MGS declares a client dead only on evidence; and the recovery
window (protocol/recovery.py) takes its word only for a client that has not reconnected."""

from __future__ import annotations

from shoal.protocol.presence import Presence
from shoal.protocol.recovery import ClientState, Complete, Evict
from tests.unit.test_recovery_window import T, executed, machine, run


def test_never_seen_is_not_dead_however_long_the_mgs_has_been_up() -> None:
    p = Presence(bound=4.0)
    assert p.dead(["a"], connected=set(), now=1e9) == []


def test_a_closed_connection_is_death_only_after_the_bound() -> None:
    p = Presence(bound=4.0)
    p.closed("a", 100.0)
    assert p.dead(["a"], set(), 103.9) == []
    assert p.dead(["a"], set(), 104.0) == ["a"]


def test_connected_now_is_alive_whatever_closed_before() -> None:
    p = Presence(bound=4.0)
    p.closed("a", 100.0)  # an old connection closed, a new one is open
    assert p.dead(["a", "b"], {"a"}, 200.0) == []


def test_a_later_close_restarts_the_count() -> None:
    p = Presence(bound=4.0)
    p.closed("a", 100.0)
    p.closed("a", 110.0)
    assert p.dead(["a"], set(), 112.0) == []
    assert p.dead(["a"], set(), 114.0) == ["a"]


def test_only_the_clients_asked_about_and_the_oldest_forgotten_first() -> None:
    p = Presence(bound=1.0, limit=2)
    for i, c in enumerate("abc"):
        p.closed(c, float(i))
    assert p.dead("abcd", set(), 10.0) == ["b", "c"]  # a forgotten: unknown, not dead


def test_the_mgs_word_evicts_only_a_client_that_has_not_reconnected() -> None:
    """A client that reconnected is alive whatever the MGS last saw of it (it may not have
    reached the MGS in its new home yet): its replays and its place in the window stay."""
    r = machine("a", "b", "c")
    run(r, r.client_connected("a", 100.0))
    assert executed(run(r, r.replay_received("a", T[1]))) == [T[1]]
    run(r, r.replay_received("a", T[3]))  # T[2] may be c's: it waits
    run(r, r.client_connected("b", 100.0))
    run(r, r.replay_done("b"))
    assert run(r, r.client_dead("a")) == [] and run(r, r.client_dead("b")) == []
    assert r.state_of("a") is ClientState.REPLAYING and r.state_of("b") is ClientState.DONE
    out = run(r, r.client_dead("c"))
    assert out[0] == Evict("c", "declared dead by the MGS", "dead") and executed(out) == [T[3]]
    assert isinstance(run(r, r.replay_done("a"))[-1], Complete)
