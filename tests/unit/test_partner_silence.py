"""The partner watch's rule for a silent partner's leases (agent/partner_watch.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.agent.silence import UNRENEWED, unrenewed


def reading(left: float) -> float:
    """What LeaseTimeToLive answers with `left` seconds left: whole seconds, truncated."""
    return float(int(left))


def test_a_lease_renewed_every_third_of_its_ttl_never_reads_unrenewed() -> None:
    ttl = 2.0
    for since_renewal in (0.0, 0.3, 0.66, 0.9, 0.99):
        assert not unrenewed(ttl, [reading(ttl - since_renewal)])


def test_leases_left_unrenewed_for_a_second_read_unrenewed() -> None:
    assert unrenewed(2.0, [reading(0.99), reading(0.2)])
    assert not unrenewed(2.0, [reading(0.99), reading(1.5)])  # one of them was renewed


def test_a_gone_lease_or_none_at_all_proves_nothing() -> None:
    assert not unrenewed(2.0, [reading(0.5), None])
    assert not unrenewed(2.0, [])


@given(st.sampled_from([2.0, 3.0, 5.0, 10.0]), st.floats(0.0, 10.0))
def test_unrenewed_means_renewed_no_later_than_unrenewed_seconds_ago(ttl: float,
                                                                     since: float) -> None:
    """Never early (the reading says at least UNRENEWED s without renewal), and never later
    than the whole-second reading forces (within 1 s)."""
    if since > ttl:
        return  # expired: gone
    verdict = unrenewed(ttl, [reading(ttl - since)])
    if verdict:
        assert since > UNRENEWED
    if since >= UNRENEWED + 1:
        assert verdict
