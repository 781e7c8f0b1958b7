"""Adaptive timeouts (protocol/adaptive.py): Lustre's binned worst-value estimator."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import InvalidArgument
from shoal.protocol.adaptive import (
    AT_BINS,
    AdaptiveEstimate,
    ATParams,
    EarlyReplies,
    ImportTimeouts,
    early_reply_due,
    early_reply_extra,
    shortest_timeout,
)

HISTORY = 60.0  # 4 bins of 15 s


def est(**kw: float) -> AdaptiveEstimate:
    return AdaptiveEstimate(HISTORY, **kw)


def test_first_sample_replaces_the_initial_guess():
    e = est(floor=0.0, initial=10.0)
    assert e.estimate(0.0) == 10.0
    assert e.measured(100.0, 0.5) == 0.5
    assert e.estimate(100.0) == 0.5


def test_estimate_is_the_worst_value_in_the_live_bins():
    e = est()
    e.measured(0.0, 2.0)
    e.measured(5.0, 7.0)  # same bin: worst wins
    e.measured(10.0, 1.0)
    assert e.estimate(10.0) == 7.0
    e.measured(20.0, 3.0)  # next bin; the 7 is still within at_history
    assert e.estimate(20.0) == 7.0
    assert e.bins == [3.0, 7.0, 0.0, 0.0]
    assert e.worst == 7.0 and e.worst_time == 5.0


def test_slow_spell_decays_after_at_history_when_new_samples_come():
    e = est()
    e.measured(0.0, 9.0)
    e.measured(14.9, 1.0)
    for t in (15.0, 30.0, 45.0):
        assert e.measured(t, 1.0) == 9.0, t  # the 9 s bin is still one of the last four
    assert e.measured(60.0, 1.0) == 1.0  # the bin holding 9 s has aged out
    assert e.worst == 9.0  # but the worst ever is remembered


def test_estimate_decays_even_without_new_samples():
    e = est(floor=0.5)
    e.measured(0.0, 9.0)
    assert e.estimate(59.9) == 9.0
    assert e.estimate(60.0) == 0.5  # nothing left in history: the floor
    e.measured(100.0, 2.0)
    assert e.estimate(100.0) == 2.0


def test_clamped_to_min_and_max_and_zero_ignored():
    e = est(floor=1.0, ceiling=30.0)
    assert e.measured(0.0, 0.2) == 1.0
    assert e.measured(1.0, 100.0) == 30.0
    assert e.worst == 100.0  # the real worst is kept for display
    assert e.measured(2.0, 0.0) == 30.0  # a zero says nothing


def test_a_clock_stepping_back_stays_in_the_current_bin():
    e = est()
    e.measured(100.0, 4.0)
    e.measured(50.0, 6.0)
    assert e.binstart == 100.0 and e.estimate(50.0) == 6.0


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 1000)), min_size=1, max_size=40),
       st.integers(0, 200))
def test_estimate_matches_the_reference_model(steps, after):
    """estimate == max of samples whose bin is one of the last AT_BINS, clamped."""
    floor, ceiling, binlimit = 0.5, 600.0, HISTORY / AT_BINS
    e = est(floor=floor, ceiling=ceiling)
    t, samples = 0.0, []
    for dt, value in steps:
        t += dt
        e.measured(t, value / 10)
        samples.append((t, value / 10))
    t0 = samples[0][0]
    now = t + after

    def index(x: float) -> int:
        return int((x - t0) // binlimit)

    live = [v for x, v in samples if index(x) > index(now) - AT_BINS]
    expect = min(max(max(live, default=0.0), floor), ceiling)
    assert e.estimate(now) == pytest.approx(expect)
    assert e.worst == max(v for _, v in samples)


def test_request_timeout_is_lustres_formula():
    p = ATParams(at_min=1.0, at_max=30.0, at_history=HISTORY, timeout_pad=2.0)
    at = ImportTimeouts(p)
    assert at.request_timeout(0.0) == pytest.approx(1.0 + 0.25 + 2.0)  # nothing seen: at_min
    # a reply to a request sent at 10.0 came at 14.5 and says service takes 4 s:
    at.reply_received(14.5, 10.0, 4.0)
    assert at.service.estimate(14.5) == 4.0
    assert at.network.estimate(14.5) == pytest.approx(0.5)
    assert at.service_timeout(14.5) == pytest.approx(4.0 + 1.0 + 2.0)
    assert at.request_timeout(14.5) == pytest.approx(7.0 + 0.5)
    # a server that reports no estimate: only the network side learns (the round trip)
    at.reply_received(20.0, 17.0, 0.0)
    assert at.service.estimate(20.0) == 4.0 and at.network.estimate(20.0) == 3.0
    # a minute later, both have forgotten
    assert at.request_timeout(100.0) == pytest.approx(1.0 + 0.25 + 2.0)


def test_a_lost_attempt_neither_lengthens_the_resend_nor_counts_as_service():
    """Issue 18's fourth bug: each loss of the same request doubled the next wait, so three
    losses in a row cost 3 + 6.5 + 13 s. A resend waits what a first send waits."""
    at = ImportTimeouts(ATParams())
    at.reply_received(10.2, 10.0, 0.05)
    now = 10.2
    first = at.attempt_timeout(now)
    assert first == pytest.approx(1.0 + 0.25 + 2.0 + 0.15)  # at_min's timeout + network
    for lost in range(1, 4):  # the request, then each resend, gets no reply in time
        now += first
        at.timed_out(first)
        now += 0.1  # reconnected
        assert at.attempt_timeout(now) == first  # the resend waits no longer
        assert at.timeouts == lost and at.longest_wait == first
    assert at.service.estimate(now) == 1.0 and at.network.estimate(now) == pytest.approx(0.15)
    assert at.attempt_timeout(now, fixed=5.0) == 5.0  # AT off: the fixed timeout, each time
    # a slow server lengthens it by what it reports, never the client by what it lost
    at.reply_received(now + 1.0, now, 8.0)
    assert at.attempt_timeout(now + 1.0) > first


def test_early_replies_keep_a_slow_request_alive_up_to_at_max():
    """With no longer timeouts for resends, only early replies tell a client that a request
    is slow, not lost; the server plans with the shortest timeout a client may use."""
    p = ATParams()  # at_min 1, pad 2: no client waits less than 3.25 s; margin 1, extra 3
    assert shortest_timeout(p) == pytest.approx(3.25)
    plan = EarlyReplies(100.0, p)
    assert plan.next_check == pytest.approx(102.25)
    assert plan.due(102.0) == 0.0  # not yet: 1.25 s left to the earliest deadline
    assert plan.due(102.25) == pytest.approx(3.0 + 2.25)  # at_extra + the time waited
    assert plan.deadline == pytest.approx(108.5)
    extras = [plan.due(t) for t in (107.5, 118.0)]
    assert extras == [pytest.approx(10.5), pytest.approx(11.0)]  # the last one up to at_max
    assert plan.deadline == pytest.approx(130.0) and plan.next_check is None
    assert plan.due(129.5) == 0.0  # sick past at_max: the client's timeout ends the wait
    assert EarlyReplies(0.0, ATParams(at_max=0)).next_check is None  # AT off: none


def test_service_estimate_is_bounded_by_at_max():
    at = ImportTimeouts(ATParams(at_max=30.0))
    at.reply_received(1000.0, 999.0, 500.0)
    assert at.service.estimate(1000.0) == 30.0


def test_timeouts_render_like_lustre():
    at = ImportTimeouts(ATParams(at_history=HISTORY))
    never = at.render(1000.0)
    assert never.splitlines()[0] == "last reply : 0, never"
    at.reply_received(1_700_000_000.0, 1_699_999_999.0, 0.8)
    text = at.render(1_700_000_191.0)
    lines = text.splitlines()
    assert lines[0] == "last reply : 1700000000, 0d0h03m11s ago"
    num = r"\s*\d+\.\d{3}"
    pattern = (rf"^(network|service)\s+: cur{num}  worst{num} \(at \d+, \d+d\d+h\d\dm\d\ds ago\)"
               rf"( {num}){{4}}$")
    assert re.match(pattern, lines[1]) and lines[1].startswith("network")
    assert re.match(pattern, lines[2]) and lines[2].startswith("service")
    assert "worst  0.800 (at 1700000000, 0d0h03m11s ago)" in lines[2]
    # 191 s later the sample's bin has aged out of the display too
    assert lines[2].endswith(" 0.000  0.000  0.000  0.000")


def test_early_reply_rules():
    p = ATParams(at_early_margin=1.0, at_extra=3.0)
    assert not early_reply_due(10.0, 12.0, p)
    assert early_reply_due(11.0, 12.0, p)
    assert early_reply_extra(15.0, 10.0, p) == 8.0  # at_extra + the 5 s already waited
    assert not early_reply_due(11.9, 12.0, ATParams(at_max=0))  # AT off: no early replies


@pytest.mark.parametrize("kw", [{"at_min": -1.0}, {"at_min": 40.0, "at_max": 30.0},
                                {"at_history": 0.0}])
def test_bad_parameters_refused(kw):
    with pytest.raises(InvalidArgument):
        ATParams(**kw)


def test_defaults_are_for_seconds():
    p = ATParams()
    assert p.enabled and p.at_min <= 1.0 and 10.0 <= p.at_max <= 60.0
    assert p.at_history <= 120.0
