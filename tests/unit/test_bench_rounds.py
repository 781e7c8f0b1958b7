"""workload/rounds.py: medians over rounds, ratios taken within each round."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.workload.rounds import in_turn, ratio, run_rounds

speeds = st.floats(min_value=1.0, max_value=1e4, allow_nan=False)


@given(st.lists(st.tuples(speeds, speeds), min_size=1, max_size=7))
def test_each_figure_is_the_median_of_its_rounds(pairs):
    calls: list[int] = []

    def one_round(i: int) -> dict[str, float]:
        calls.append(i)
        ours, local = pairs[i]
        return {"read_MBps": round(ours, 1), "local_read_MBps": round(local, 1),
                "read_ratio": ratio(round(ours, 1), round(local, 1))}

    res = run_rounds(len(pairs), one_round)
    assert calls == list(range(len(pairs)))  # every round once, in turn: i says who goes first
    assert res["rounds"] == len(pairs) and len(res["per_round"]) == len(pairs)
    for key in ("read_MBps", "local_read_MBps", "read_ratio"):
        want = statistics.median(r[key] for r in res["per_round"])
        assert res[key] == pytest.approx(want, abs=0.051)
    # a ratio is one round's two sides, not the medians' quotient
    assert res["read_ratio"] == pytest.approx(
        statistics.median(ratio(round(o, 1), round(loc, 1)) for o, loc in pairs), abs=1.001e-3)  # a median of two is halfway, then rounded


def test_one_bad_round_does_not_set_the_figure():
    rounds = [{"read_ratio": 0.9}, {"read_ratio": 0.3}, {"read_ratio": 0.8}]
    assert run_rounds(3, lambda i: rounds[i])["read_ratio"] == 0.8


def test_no_rounds_is_an_error():
    with pytest.raises(ValueError, match="at least 1"):
        run_rounds(0, lambda i: {"x": 1.0})


def test_ratio_of_nothing_is_zero_not_a_crash():
    assert ratio(5.0, 0.0) == 0.0
    assert ratio(1.0, 3.0) == 0.333


def test_whole_numbers_stay_whole_and_the_rest_keep_a_decimal():
    """creates/s are whole in every round, so is their median, even halfway between two."""
    rounds = [{"creates_per_s": 9001, "write_MBps": 10.04},
              {"creates_per_s": 9004, "write_MBps": 10.0}]
    res = run_rounds(2, lambda i: rounds[i])
    assert res["creates_per_s"] == 9002 and type(res["creates_per_s"]) is int
    assert res["write_MBps"] == 10.0 and type(res["write_MBps"]) is float


def test_each_side_goes_first_in_turn():
    sides = ["local", "lib", "mount"]
    orders = [in_turn(sides, i) for i in range(4)]
    assert [o[0] for o in orders] == ["local", "lib", "mount", "local"]
    assert all(sorted(o) == sorted(sides) for o in orders)
