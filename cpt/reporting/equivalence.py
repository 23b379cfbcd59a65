"""A study's primary comparisons: whether two experiments differ, are equivalent within a declared margin, or
neither, each verdict also after Holm's correction for the number of primary tests.

A difference whose 95% interval includes 0 is not evidence that there is none: it only fails to show one. Sameness
needs a margin M declared before looking (the study file's `compare.margins`) and an interval that lies inside it.
For every primary comparison and every metric with a margin:

- different: the two-sided t test of no difference rejects at 5% (the 95% interval excludes 0);
- equivalent within ±M: the two one-sided tests (Schuirmann's TOST) reject both "difference <= -M" and
  "difference >= M" at 5% each, which is the 90% interval lying inside (-M, M);
- both at once (a real difference smaller than the margin), or "not resolved" when neither holds: the data
  cannot tell, and the interval says how large a difference they leave open.

Holm's step-down procedure adjusts the p values within each family of primary tests (the difference tests of all
primary comparisons and metrics; their equivalence tests), so that the chance of any false verdict in the family
stays at 5%. Everything not declared primary is exploratory: reported, not corrected, and not to be concluded from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import t as student_t

from cpt.reporting.intervals import Difference

ALPHA = 0.05


def is_margin(value) -> bool:
    """Whether `value` can be an equivalence margin: a finite number > 0 (points of the metric)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def equivalence_p(difference: Difference, margin: float) -> float | None:
    """The TOST p value for |difference| < margin: the larger of the two one-sided tests' p values (None without
    an interval)."""
    if difference.se is None:
        return None
    if difference.se == 0:
        return 0.0 if abs(difference.mean) < margin else 1.0
    below = student_t.sf((difference.mean + margin) / difference.se, difference.df)  # H0: difference <= -margin
    above = student_t.cdf((difference.mean - margin) / difference.se, difference.df)  # H0: difference >= margin
    return float(max(below, above))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-adjusted p values, in the order given (None stays None and does not count among the tests): the i-th
    smallest of m is multiplied by m - i + 1, and each adjusted value is at least the one before it in that order."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(p_difference: float | None, p_equivalence: float | None, margin: float) -> str:
    if p_difference is None or p_equivalence is None:
        return "no interval"
    different, equivalent = p_difference < ALPHA, p_equivalence < ALPHA
    if different and equivalent:
        return f"different, within ±{margin:g}"
    if different:
        return "different"
    return f"equivalent within ±{margin:g}" if equivalent else "not resolved"


@dataclass(frozen=True)
class PrimaryTest:
    """One primary comparison on one metric, its tests and their Holm-adjusted counterparts."""

    a: str
    b: str
    metric: str
    margin: float
    difference: Difference
    p_difference: float | None
    p_equivalence: float | None
    holm_difference: float | None
    holm_equivalence: float | None

    @property
    def verdict(self) -> str:
        return verdict(self.p_difference, self.p_equivalence, self.margin)

    @property
    def holm_verdict(self) -> str:
        return verdict(self.holm_difference, self.holm_equivalence, self.margin)


def primary_tests(cells: list[tuple[str, str, str, Difference, float]]) -> list[PrimaryTest]:
    """(a, b, metric, difference, margin) cells, each tested and adjusted for the others."""
    p_difference = [cell[3].p_value for cell in cells]
    p_equivalence = [equivalence_p(cell[3], cell[4]) for cell in cells]
    return [PrimaryTest(a, b, metric, margin, diff, pd, pe, hd, he)
            for (a, b, metric, diff, margin), pd, pe, hd, he
            in zip(cells, p_difference, p_equivalence, holm(p_difference), holm(p_equivalence))]
