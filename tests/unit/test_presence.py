"""protocol/presence.py: the MGS declares a client dead only on evidence."""

from __future__ import annotations

from shoal.protocol.presence import Presence


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
