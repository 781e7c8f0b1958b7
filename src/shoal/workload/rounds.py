"""Rounds of a benchmark on a shared, noisy machine: each round measures every side once, in
turn, and the figures reported are each measure's median over the rounds.

One round alone is at the mercy of whatever else the machine did in its seconds: the same
build measured 0.35 and 1.56 as read_ratio in two runs an hour apart. A ratio is taken
within each round (both sides of it ran within seconds of each other) and its median over
the rounds reported, so one side's bad moment does not set the figure; every round is kept
under `per_round`, so nothing is hidden.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any, TypeVar

Round = dict[str, float]
T = TypeVar("T")


def ratio(num: float, den: float) -> float:
    return round(num / den, 3) if den else 0.0


def in_turn(sides: list[T], i: int) -> list[T]:
    """The order the sides go in round i: each goes first in turn."""
    k = i % len(sides)
    return sides[k:] + sides[:k]


PRECISE = ("_ratio", "_s", "_vs_against")  # figures kept to three decimals


def run_rounds(rounds: int, one_round: Callable[[int], Round]) -> dict[str, Any]:
    """Call one_round(i) for i in 0..rounds-1 (it may vary which side goes first with i);
    every key's median (a whole number where every round's is one), then `rounds` and
    `per_round`."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    done = [one_round(i) for i in range(rounds)]
    out: dict[str, Any] = {}
    for key in done[0]:
        values = [r[key] for r in done]
        m = statistics.median(values)
        if all(type(v) is int for v in values):
            out[key] = round(m)
        else:
            out[key] = round(m, 3) if key.endswith(PRECISE) else round(m, 1)
    out["rounds"] = rounds
    out["per_round"] = done
    return out
