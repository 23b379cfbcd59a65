"""A metric over seeds: its mean and 95% interval, and the difference (or ratio) of two experiments with its interval.

The seeds of one experiment are independent draws (the seed sets the initial adapters, the data order, the
rollouts, the evaluation examples and the general set's questions), so the interval is Student's t on their mean:
mean +- t(0.975, n-1) s/sqrt(n).

Two experiments run with the same seed see the same training prompts in the same order and answer the same
evaluation questions, so where they share seeds they are compared seed by seed: the paired interval is Student's t
on the per-seed differences, over the seeds both have. The pairing takes out the noise both runs of a seed share
(which questions were asked, which prompts came when); where they share fewer than two seeds, Welch's interval on
the difference of the means (unequal variances, no pairing). Every difference says which it is.

A ratio of two positive quantities (how many times larger) is taken on the log scale, where the noise of a ratio
is symmetric: the interval of the mean log ratio (paired or Welch, as above), exponentiated. It is the ratio of
geometric means; no ratio is given where a value is 0 or negative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95


def _values(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def t_quantile(level: float, df: float) -> float:
    return float(student_t.ppf(0.5 + level / 2, df))


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
    return Estimate(mean, t_quantile(LEVEL, n - 1) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b), its standard error and degrees of freedom (None without an interval: a side with one
    value), `paired` over the n seeds both have or Welch's over all of each side's values (n: the fewer)."""

    mean: float
    se: float | None
    df: float | None
    paired: bool
    n: int

    def half_width(self, level: float = LEVEL) -> float | None:
        if self.se is None:
            return None
        return 0.0 if self.se == 0 else t_quantile(level, self.df) * self.se

    def interval(self, level: float = LEVEL) -> tuple[float, float] | None:
        hw = self.half_width(level)
        return None if hw is None else (self.mean - hw, self.mean + hw)

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the 95% interval excludes 0."""
        hw = self.half_width()
        return None if hw is None else abs(self.mean) > hw

    @property
    def p_value(self) -> float | None:
        """Two-sided p of the t test of no difference."""
        if self.se is None:
            return None
        if self.se == 0:
            return 0.0 if self.mean else 1.0
        return float(2 * student_t.sf(abs(self.mean) / self.se, self.df))

    @property
    def test(self) -> str:
        return f"paired, {self.n} seeds" if self.paired else "Welch"


def welch(a: Iterable[float | None], b: Iterable[float | None]) -> Difference | None:
    """Welch's difference of mean(a) - mean(b); no interval unless both have two values or more."""
    xa, xb = _values(a), _values(b)
    if not xa or not xb:
        return None
    mean = sum(xa) / len(xa) - sum(xb) / len(xb)
    n = min(len(xa), len(xb))
    if n < 2:
        return Difference(mean, None, None, False, n)
    va, vb = (sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1) / len(xs) for xs in (xa, xb))
    if va + vb == 0:  # no spread at all: any difference is beyond it
        return Difference(mean, 0.0, math.inf, False, n)
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    return Difference(mean, math.sqrt(va + vb), df, False, n)


def paired(pairs: Iterable[tuple[float, float]]) -> Difference | None:
    """The mean of a - b over (a, b) pairs with Student's t on the per-pair differences."""
    ds = [a - b for a, b in pairs]
    if not ds:
        return None
    n, mean = len(ds), sum(ds) / len(ds)
    if n < 2:
        return Difference(mean, None, None, True, n)
    sd = math.sqrt(sum((d - mean) ** 2 for d in ds) / (n - 1))
    return Difference(mean, sd / math.sqrt(n), n - 1, True, n)


def _by_seed(values: Mapping) -> dict:
    return {seed: float(v) for seed, v in values.items() if v is not None and not math.isnan(v)}


def difference(a: Mapping, b: Mapping) -> Difference | None:
    """mean(a) - mean(b) for values by seed: paired over the seeds both have when there are two or more, else
    Welch's over all of each side's values."""
    a, b = _by_seed(a), _by_seed(b)
    common = [seed for seed in a if seed in b and seed is not None]
    if len(common) >= 2:
        return paired((a[seed], b[seed]) for seed in common)
    return welch(a.values(), b.values())


@dataclass(frozen=True)
class Ratio:
    """The ratio of geometric means of a over b with its 95% interval (None without one), from the difference of
    their logs."""

    ratio: float
    low: float | None
    high: float | None
    log: Difference

    def format(self, spec: str = ".3g") -> str:
        interval = "" if self.low is None else f" [{self.low:{spec}}, {self.high:{spec}}]"
        return f"{self.ratio:{spec}}{interval}"


def ratio(a: Mapping, b: Mapping) -> Ratio | None:
    """a over b for positive values by seed, on the log scale (paired or Welch as `difference`); None when a value
    is 0 or negative, or a side has none."""
    a, b = _by_seed(a), _by_seed(b)
    if not a or not b or min(*a.values(), *b.values()) <= 0:
        return None
    log = difference({s: math.log(v) for s, v in a.items()}, {s: math.log(v) for s, v in b.items()})
    bounds = log.interval()
    return Ratio(math.exp(log.mean), *((None, None) if bounds is None else (math.exp(bounds[0]), math.exp(bounds[1]))),
                 log)
