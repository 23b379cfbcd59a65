"""Alternating rounds: every side of a comparison runs once per round, in turn, in one process, and a speed claim
is the median over rounds of a per-round ratio, stated with its range (never one draw).

A round's figure for a side is the median of the steps that side timed in that round; the ratio of two sides is
taken within each round (both measured minutes apart, under the same load), then summarised over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class SideRun:
    """One side's run in one round: the seconds of each timed step (warm-up steps already dropped), and the mean
    completion length of each of those steps where the side reports it (RFT)."""

    step_s: list[float]
    completion_tokens: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        if not self.step_s:
            raise ValueError("no timed steps: raise --steps")
        return statistics.median(self.step_s)


@dataclass
class Ratio:
    """numerator / denominator of the round medians, per round, and their median and min-max range."""

    numerator: str
    denominator: str
    per_round: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    @property
    def low(self) -> float:
        return min(self.per_round)

    @property
    def high(self) -> float:
        return max(self.per_round)


Round = dict[str, SideRun]


def round_order(names: Sequence[str], index: int) -> list[str]:
    """The order of the sides in round `index`: rotated by one each round, so that no side always runs first."""
    shift = index % len(names)
    return [*names[shift:], *names[:shift]]


def alternate(sides: dict[str, Callable[[], SideRun]], rounds: int,
              on_round: Callable[[int, Round], None] | None = None) -> list[Round]:
    """Runs every side once per round, `rounds` times; `on_round(index, round)` sees each round as it ends."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    names, done = list(sides), []
    for index in range(rounds):
        runs = {name: sides[name]() for name in round_order(names, index)}
        done.append({name: runs[name] for name in names})
        if on_round is not None:
            on_round(index, done[-1])
    return done


def ratio(rounds: Sequence[Round], numerator: str, denominator: str) -> Ratio:
    return Ratio(numerator, denominator, [r[numerator].median_s / r[denominator].median_s for r in rounds])


def median_over_rounds(rounds: Sequence[Round], side: str) -> float:
    """The median over rounds of a side's round medians (s/step)."""
    return statistics.median(r[side].median_s for r in rounds)


def mean_completion_tokens(rounds: Sequence[Round], side: str) -> float | None:
    """The mean completion length over every timed step of a side, or None where it does not report one."""
    values = [v for r in rounds for v in r[side].completion_tokens]
    return sum(values) / len(values) if values else None
