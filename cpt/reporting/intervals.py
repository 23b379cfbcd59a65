"""A metric over seeds: its mean and 95% interval, and whether two experiments differ by more than their noise.

The seeds of one experiment are independent draws (the seed sets the initial adapters, the data order, the
rollouts and the evaluation examples), so the interval is Student's t on their mean: mean +- t(0.975, n-1) s/sqrt(n).
Two experiments compare by Welch's interval on the difference of their means (unequal variances, no pairing
assumed): the difference is beyond the noise when that interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95


def _values(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


@dataclass(frozen=True)
class Estimate:
    """A mean over n seeds and the half-width of its 95% interval (None for one seed: no spread to measure)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def format(self, spec: str = ".1f") -> str:
        """"mean ± half-width", each with the format spec (".1f" for points, ".3g" for quantities of any size)."""
        mean = f"{self.mean:{spec}}"
        return mean if self.half_width is None else f"{mean} ± {self.half_width:{spec}}"


def estimate(values: Iterable[float | None]) -> Estimate | None:
    """The mean and 95% t-interval of the values given (None and NaN left out); None when there are none."""
    xs = _values(values)
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, None, n)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Estimate(mean, float(student_t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with Welch's 95% interval; `beyond_noise` when that interval excludes 0."""

    mean: float
    half_width: float | None
    df: float | None

    @property
    def beyond_noise(self) -> bool | None:
        return None if self.half_width is None else abs(self.mean) > self.half_width


def difference(a: Iterable[float | None], b: Iterable[float | None]) -> Difference | None:
    """Welch's interval on mean(a) - mean(b); no interval (None half-width) unless both have two values or more."""
    xa, xb = _values(a), _values(b)
    if not xa or not xb:
        return None
    mean = sum(xa) / len(xa) - sum(xb) / len(xb)
    if len(xa) < 2 or len(xb) < 2:
        return Difference(mean, None, None)
    va, vb = (sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1) / len(xs) for xs in (xa, xb))
    if va + vb == 0:  # no spread at all: any difference is beyond it
        return Difference(mean, 0.0, math.inf)
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    return Difference(mean, float(student_t.ppf(0.5 + LEVEL / 2, df)) * math.sqrt(va + vb), df)
