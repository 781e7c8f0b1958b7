"""protocol/recovery_timeouts.py: no replay or final ping outlasts the window it must land in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.protocol.adaptive import ATParams, ImportTimeouts
from shoal.protocol.recovery_timeouts import (
    EARLY_PERIOD,
    HARD_TIMEOUT,
    MIN_REPLAY_TIMEOUT,
    SOFT_TIMEOUT,
    replay_timeout,
    soft_window,
    window_deadline,
)

seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)


@given(service=st.lists(st.floats(min_value=0.001, max_value=120.0), max_size=8),
       hard=st.floats(min_value=1.0, max_value=900.0), elapsed=st.floats(0.0, 1.0),
       tries=st.integers(0, 6))
def test_no_replay_timeout_outlasts_the_window(service: list[float], hard: float,
                                               elapsed: float, tries: int) -> None:
    """Whatever AT has measured (and whatever longer timeout a client might use), a replay sent at any moment of the window times out, and its resend goes
    out, while at least as much of the window is left as it waited."""
    at = ImportTimeouts(ATParams())
    for i, s in enumerate(service):
        at.reply_received(float(i), float(i) - s, s)
    at_timeout = min(at.request_timeout(len(service)) * 2 ** tries, 10 * HARD_TIMEOUT)
    start = 100.0
    window_end = start + window_deadline(start + hard, start)
    now = start + elapsed * hard
    timeout = replay_timeout(at_timeout, now, window_end)
    left = window_end - now
    assert timeout >= MIN_REPLAY_TIMEOUT
    if left >= 2 * MIN_REPLAY_TIMEOUT:
        assert now + timeout <= window_end - timeout + 1e-9, (timeout, left)
    assert timeout <= max(at_timeout, MIN_REPLAY_TIMEOUT)


def test_the_replay_single_62_case() -> None:
    """A lost reply to the first replay: the client resends after AT's few seconds, not
    after at_max (30 s), which was the whole hard window."""
    at = ImportTimeouts(ATParams())
    timeout = replay_timeout(at.request_timeout(0.0), 0.0, window_deadline(HARD_TIMEOUT, 0.0))
    assert timeout < HARD_TIMEOUT / 4
    assert timeout == at.request_timeout(0.0)


@given(at_timeout=seconds, now=seconds)
def test_without_a_window_it_is_the_at_timeout(at_timeout: float, now: float) -> None:
    assert replay_timeout(at_timeout, now, None) == max(MIN_REPLAY_TIMEOUT, at_timeout)


@given(hard=seconds, now=seconds)
def test_window_deadline_is_what_is_left_and_never_negative(hard: float, now: float) -> None:
    left = window_deadline(hard, now)
    assert left >= 0.0 and (left == hard - now or hard < now)


def test_a_held_request_keeps_its_timeout_ahead_of_it() -> None:
    """Early replies every EARLY_PERIOD, each worth EARLY_PERIOD: a held request with a
    timeout T never expires while held, and expires about T after the last one."""
    timeout, deadline, t = 1.25, 1.25, 0.0
    while t < 20 * EARLY_PERIOD:
        deadline += EARLY_PERIOD
        assert deadline - t >= timeout
        t += EARLY_PERIOD


def test_ir_shrinks_the_soft_window_within_the_hard_one() -> None:
    assert soft_window(SOFT_TIMEOUT, False) == SOFT_TIMEOUT
    assert soft_window(SOFT_TIMEOUT, True) == 5.0
    assert soft_window(1.0, True) == 1.0  # never longer than asked for
    assert soft_window(SOFT_TIMEOUT, True) < HARD_TIMEOUT
