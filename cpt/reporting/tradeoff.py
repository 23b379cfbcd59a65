"""Forgetting at matched plasticity: trade-off curves along a family of experiments that vary one key (a
learning-rate grid), and two families compared where they learn equally much.

A matched learning rate is not a matched plasticity: two methods at one rate can learn different amounts, and the
one that learns less may forget less for that reason alone. So each family (experiments whose configs differ only
in one numeric key, three values or more) is a curve: plasticity x (gain over base, or P[t][t]) against y (FM, or
the general set's change), one point per key value, each the mean over its seeds. Two families along the same key
are compared at common values of x inside both curves' ranges (a quarter, half and three quarters of the way
through their overlap), y interpolated linearly between the neighbouring points of each curve.

Which points make a curve: those run on the seeds most of the two families' points share (a point with fewer seeds
is drawn, not interpolated: its seeds would not pair), in the key's order, up to the one that learns most. Past it
a run that collapses learns less again, and the curve would fold back on itself (the rising branch).

The interval is a seed bootstrap, paired: one resample of the seeds is applied to every point of both curves (two
runs with one seed share their training prompts and evaluation questions), the curves are rebuilt from the
resampled means, and y is interpolated at the same x. With up to 6 seeds every resample is enumerated (5 seeds:
3125), so the result is exact and repeatable; with more, 4000 drawn from a fixed seed. The bootstrap's standard
error is scaled by sqrt(n / (n - 1)) and taken with Student's t on n - 1 degrees of freedom: for a point that the
x value falls on, with x the same in every resample, this is exactly the paired t interval, where the plain
percentile bootstrap of 5 seeds would be about 0.6 of its width. The difference of the two families then gets
the verdicts of the primary comparisons against the same margins (cpt.reporting.equivalence), uncorrected: a
matched gain is read off curves, not declared before the runs.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cpt.config import method_label
from cpt.reporting.equivalence import equivalence_p, verdict
from cpt.reporting.groups import Experiment, is_sequential
from cpt.reporting.intervals import Difference, Estimate, t_quantile

PLASTICITY = (("gain_over_base", "gain over base"), ("diagonal", "P[t][t]"))
QUARTERS = (0.25, 0.5, 0.75)
ENUMERATE_UP_TO = 6  # seeds: n^n resamples (6: 46656)
DRAWS = 4000
# Below this share of resamples in which both curves reach the matched x, the value has no interval.
MIN_REACHED = 0.9


@dataclass(frozen=True, eq=False)  # hashed by identity: a family is a key of the comparison's tables
class Family:
    """Experiments that differ only in `key`, in its order."""

    key: str
    points: tuple[Experiment, ...]

    @property
    def method(self) -> str:
        return self.points[0].first["method"] or "sft"

    def value(self, experiment: Experiment) -> float:
        return experiment.config[self.key]

    @property
    def label(self) -> str:
        values = [self.value(p) for p in self.points]
        return f"{method_label(self.method)}, {self.key} {min(values):g} to {max(values):g}"

    def best(self, metric: str = "avg_acc") -> tuple[Experiment, bool] | None:
        """The point with the highest mean `metric`, and whether it lies strictly inside the key's range (not at
        either end): a grid that brackets its optimum."""
        scored = [(p.estimate(metric).mean, i) for i, p in enumerate(self.points) if p.estimate(metric)]
        if not scored:
            return None
        _, index = max(scored)
        return self.points[index], 0 < index < len(self.points) - 1


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def families(experiments: list[Experiment], min_points: int = 3) -> list[Family]:
    """Every family of finished sequential experiments whose configs differ in one numeric key only (their names
    aside), with at least `min_points` distinct values of it; in the order their first members were seen."""
    shown = [e for e in experiments if e.config is not None and e.complete and is_sequential(e)]
    items = {id(e): {k: repr(v) for k, v in e.config.items() if k != "name"} for e in shown}
    found = []
    for key in sorted({k for e in shown for k in e.config if k != "name"}):
        groups: dict[tuple, list[Experiment]] = {}
        for e in shown:
            if _is_number(e.config.get(key)):
                rest = tuple(sorted((k, v) for k, v in items[id(e)].items() if k != key))
                groups.setdefault(rest, []).append(e)
        for members in groups.values():
            if len({m.config[key] for m in members}) == len(members) >= min_points:
                found.append(Family(key, tuple(sorted(members, key=lambda m: m.config[key]))))
    order = {id(e): i for i, e in enumerate(experiments)}
    return sorted(found, key=lambda f: min(order[id(p)] for p in f.points))


def interpolate(xs: np.ndarray, ys: np.ndarray, x: float) -> np.ndarray:
    """y at x along each row's curve (points in order), linear on the first segment that spans x; NaN where none
    does. xs, ys: (rows, points)."""
    xs, ys = np.atleast_2d(xs), np.atleast_2d(ys)
    lo, hi = xs[:, :-1], xs[:, 1:]
    inside = (np.minimum(lo, hi) <= x) & (x <= np.maximum(lo, hi))
    first = inside.argmax(axis=1)
    rows = np.arange(len(xs))
    x0, x1, y0, y1 = lo[rows, first], hi[rows, first], ys[rows, first], ys[rows, first + 1]
    span = np.where(x1 == x0, 1.0, x1 - x0)
    values = y0 + (x - x0) / span * (y1 - y0)
    return np.where(inside.any(axis=1), values, np.nan)


def resample_weights(n: int, seed: int = 0) -> np.ndarray:
    """(resamples, n): how often each seed is drawn in each resample, over n. Every resample for n up to
    ENUMERATE_UP_TO, else DRAWS from a fixed seed."""
    if n <= ENUMERATE_UP_TO:
        draws = np.array(list(itertools.product(range(n), repeat=n)))
    else:
        draws = np.random.default_rng(seed).integers(0, n, size=(DRAWS, n))
    weights = np.zeros((len(draws), n))
    for column in range(n):
        np.add.at(weights, (np.arange(len(draws)), draws[:, column]), 1.0)
    return weights / n


@dataclass(frozen=True)
class Matched:
    """One family pair's y at one matched x: each family's value and their difference, with intervals."""

    x_key: str
    x: float
    y_key: str
    a: Estimate
    b: Estimate
    difference: Difference
    reached: float  # share of resamples in which both curves reach x
    margin: float | None

    @property
    def verdict(self) -> str:
        if self.margin is None:
            return "-"
        return verdict(self.difference.p_value, equivalence_p(self.difference, self.margin), self.margin)


@dataclass(frozen=True)
class Comparison:
    """Two families compared at matched plasticity: the seeds and points used, and every matched value."""

    a: Family
    b: Family
    seeds: tuple
    curves: dict  # family label -> the experiments of its rising branch, in order
    left_out: tuple[Experiment, ...]  # points without every one of the seeds
    rows: tuple[Matched, ...]
    ranges: dict  # (plasticity key, family label) -> (lowest, highest) mean x along its rising branch


def _seed_values(experiment: Experiment, key: str, seeds: tuple) -> list[float]:
    by_seed = experiment.by_seed(key)
    return [by_seed[s] for s in seeds]


def _has(experiment: Experiment, key: str, seeds: tuple) -> bool:
    by_seed = experiment.by_seed(key)
    return all(by_seed.get(s) is not None and math.isfinite(by_seed[s]) for s in seeds)


def rising_branch(family: Family, x_key: str, seeds: tuple) -> list[Experiment]:
    """The family's points with every one of the seeds, in the key's order, up to the one whose mean x is the
    highest."""
    points = [p for p in family.points if _has(p, x_key, seeds)]
    if not points:
        return []
    means = [float(np.mean(_seed_values(p, x_key, seeds))) for p in points]
    return points[: int(np.argmax(means)) + 1]


def shared_seeds(a: Family, b: Family) -> tuple:
    """The seed set most points of the two families were run on (the larger on a tie)."""
    counts = Counter(frozenset(s for s in p.seeds if s is not None) for p in (*a.points, *b.points))
    best = max(counts.items(), key=lambda item: (item[1], len(item[0])))[0]
    return tuple(sorted(best))


def compare(a: Family, b: Family, y_keys: dict[str, float | None]) -> Comparison | None:
    """a - b at matched plasticity, for each plasticity measure and each y (with its margin, or None); None when
    the two share fewer than two seeds."""
    seeds = shared_seeds(a, b)
    n = len(seeds)
    if n < 2:
        return None
    weights = resample_weights(n)
    scale = math.sqrt(n / (n - 1))
    rows, curves, left_out, ranges = [], {}, [], {}
    for x_key, _ in PLASTICITY:
        branches = {f: rising_branch(f, x_key, seeds) for f in (a, b)}
        curves.setdefault(a.label, branches[a])
        curves.setdefault(b.label, branches[b])
        left_out += [p for f in (a, b) for p in f.points if not _has(p, x_key, seeds) and p not in left_out]
        if any(len(branch) < 2 for branch in branches.values()):
            continue
        x_values = {f: np.array([_seed_values(p, x_key, seeds) for p in branches[f]]) for f in (a, b)}
        ranges.update({(x_key, f.label): (float(v.mean(axis=1).min()), float(v.mean(axis=1).max()))
                       for f, v in x_values.items()})
        low = max(values.mean(axis=1).min() for values in x_values.values())
        high = min(values.mean(axis=1).max() for values in x_values.values())
        if low >= high:
            continue
        for y_key, margin in y_keys.items():
            if not all(_has(p, y_key, seeds) for f in (a, b) for p in branches[f]):
                continue
            y_values = {f: np.array([_seed_values(p, y_key, seeds) for p in branches[f]]) for f in (a, b)}
            for quarter in QUARTERS:
                x = low + quarter * (high - low)
                x = round(x, 1) if low <= round(x, 1) <= high else x  # a value a reader can quote, if inside
                point = {f: float(interpolate(x_values[f].mean(axis=1), y_values[f].mean(axis=1), x)[0])
                         for f in (a, b)}
                boot = {f: interpolate(weights @ x_values[f].T, weights @ y_values[f].T, x) for f in (a, b)}
                reached = ~np.isnan(boot[a]) & ~np.isnan(boot[b])
                share = float(reached.mean())
                estimates, se_diff = {}, None
                if share >= MIN_REACHED:
                    t = t_quantile(0.95, n - 1)
                    for f in (a, b):
                        estimates[f] = Estimate(point[f], t * scale * float(boot[f][reached].std()), n)
                    se_diff = scale * float((boot[a] - boot[b])[reached].std())
                else:
                    estimates = {f: Estimate(point[f], None, n) for f in (a, b)}
                difference = Difference(point[a] - point[b], se_diff, None if se_diff is None else n - 1, True, n)
                rows.append(Matched(x_key, x, y_key, estimates[a], estimates[b], difference, share, margin))
    return Comparison(a, b, seeds, curves, tuple(left_out), tuple(rows), ranges)


def pairs(found: list[Family], primaries: list[tuple[str, str]] = ()) -> list[tuple[Family, Family]]:
    """Every two families along the same key, in the order a primary comparison names their members (A's family
    first), else in the order the families were found."""
    def member(family: Family, name: str) -> bool:
        return any(p.name.lower() == name.lower() for p in family.points)

    result = []
    for first, second in itertools.combinations(found, 2):
        if first.key != second.key:
            continue
        flipped = any(member(second, x) and member(first, y) for x, y in primaries)
        result.append((second, first) if flipped else (first, second))
    return result


def matched_plasticity(experiments: list[Experiment], y_keys: dict[str, float | None],
                       primaries: list[tuple[str, str]] = ()) -> tuple[list[Family], list[Comparison]]:
    """The families of the experiments and every pair's comparison at matched plasticity."""
    found = families(experiments)
    compared = [compare(a, b, y_keys) for a, b in pairs(found, primaries)]
    return found, [c for c in compared if c is not None]
