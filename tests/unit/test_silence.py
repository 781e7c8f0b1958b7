"""The partner watch's rule for silence (agent/silence.py), on a fake clock: a flapping link
is never taken for a death, a dead or long-paused host is found gone as early as before, and
the probes of a host that stays away are few."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shoal.agent.silence import FRESH_PROBE, PROBE_SLOWLY, SILENT_FENCE, Silence

STEP = 0.005
ANSWER = 0.002  # a live host's answer to a fresh connection's ping


def watch(reachable: Callable[[float], bool], heard_at: float, until: float,
          own: Callable[[float], bool] = lambda t: False) -> tuple[list[float], int]:
    """Drive the rule as the watch does: a fresh probe whenever one is due (answered if the
    host is reachable for the whole exchange, else failed at its deadline), the watch's own
    connection answering at the times `own` says. Returns the times the partner was found
    gone and the number of probes sent."""
    s = Silence()
    s.answered(heard_at)
    pending: list[tuple[float, bool]] = []
    gone: list[float] = []
    probes = 0
    t = 0.0
    while t < until:
        for done in [p for p in pending if p[0] <= t]:
            pending.remove(done)
            if done[1]:
                s.answered(done[0])
        if own(t):
            s.answered(t)
        if s.probe_due(t):
            s.probed(t)
            probes += 1
            ok = reachable(t) and reachable(t + ANSWER)
            pending.append((t + ANSWER if ok else t + FRESH_PROBE, ok))
        if s.gone(t):
            gone.append(round(t - heard_at, 3))
            break
        t += STEP
    return gone, probes


def flapping(down: float = 0.5, up: float = 1.0, times: int = 5) -> Callable[[float], bool]:
    """The rig's flap (workload/torture_rig.py) from t = 0: down, up, `times` times."""
    return lambda t: t >= times * (down + up) or t % (down + up) >= down


@pytest.mark.parametrize("phase", [i / 50 for i in range(-75, 75)])
def test_a_flapping_link_is_never_taken_for_a_death(phase: float) -> None:
    """Whenever the watch's own connection last answered (its retransmissions then wait out
    the flap), the fresh probes hear the host in one of its up phases. Seed 25's rounds 495
    and 527: one probe 1.1 s into the silence fell into a down phase, and the partner was
    fenced."""
    gone, _ = watch(flapping(), heard_at=phase, until=8.0)
    assert gone == []


def test_a_flap_while_the_watchs_connection_answers_now_and_then() -> None:
    gone, _ = watch(flapping(), heard_at=-0.05, until=8.0,
                    own=lambda t: abs(t % 2.3 - 2.2) < STEP / 2)
    assert gone == []


@pytest.mark.parametrize("heard_at", [-0.1, -0.05, 0.0])
def test_a_powered_off_host_is_found_gone_at_silent_fence(heard_at: float) -> None:
    gone, _ = watch(lambda t: t < 0.0, heard_at=heard_at, until=5.0)
    assert gone and SILENT_FENCE <= gone[0] <= SILENT_FENCE + 2 * STEP


def test_a_pause_of_a_second_is_no_death_a_longer_one_is() -> None:
    """A paused host's kernel completes the connection; its daemon answers nothing."""
    assert watch(lambda t: not 0.0 <= t < 1.0, heard_at=-0.05, until=6.0)[0] == []
    gone, _ = watch(lambda t: not 0.0 <= t < 3.0, heard_at=-0.05, until=6.0)
    assert gone and gone[0] <= SILENT_FENCE + 2 * STEP


def test_a_host_that_stays_away_is_probed_slowly() -> None:
    s = Silence()
    s.answered(0.0)
    probes, t = 0, 0.0
    while t < 600.0:
        if s.probe_due(t):
            s.probed(t)
            probes += 1
        t += 0.01
    assert probes <= 600.0 / PROBE_SLOWLY + 30


def test_silence_before_any_answer_is_no_evidence() -> None:
    s = Silence()
    assert s.silent_for(100.0) == 0.0
    assert not s.probe_due(100.0) and not s.gone(100.0)
