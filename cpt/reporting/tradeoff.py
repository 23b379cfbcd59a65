"""Forgetting at matched plasticity: trade-off curves along a family of experiments that vary one key (a
learning-rate grid), and two families compared where they learn equally much.

A matched learning rate is not a matched plasticity: two methods at one rate can learn different amounts, and the
one that learns less may forget less for that reason alone. So each family (experiments whose configs differ only
in one numeric key, three values or more) is a curve: plasticity x (gain over base, or P[t][t]) against y (FM, or
the general set's change), one point per key value, each the mean over its seeds. Two families along the same key
are compared at common values of x inside both curves' ranges (a quarter, half and three quarters of the way
through their overlap), y interpolated linearly between the neighbouring points of each curve.

Which points make a curve: those run on the seeds most of the two families' points share (a point with fewer seeds
is drawn, not interpolated: its seeds would not pair), in the key's order, rising without a break in learning up to
the one that learns most. Past it a run that collapses learns less again, and before a dip the curve would cover
the same gains twice: either would fold the curve back on itself.

The interval is a seed bootstrap, paired: one resample of the seeds is applied to every point of both curves (two
runs with one seed share their training prompts and evaluation questions), the curves are rebuilt from the
resampled means, and y is interpolated at the same x (extrapolated along the end segment where a resampled curve
stops short of it; the share that reach it is reported, and below half there is no interval). With up to 6 seeds
every resample is enumerated (5 seeds:
3125), so the result is exact and repeatable; with more, 4000 drawn from a fixed seed. The bootstrap's standard
error is scaled by sqrt(n / (n - 1)) and taken with Student's t on n - 1 degrees of freedom. Where every seed of a
point learns the same (x the same in every resample), y at a fixed x is a fixed mix of the points' y, and this is
exactly the paired t interval of that mix, where the plain percentile bootstrap of 5 seeds would be about 0.6 of
its width; where x varies by seed, as in real runs, the curve moves with each resample too, and the interval is the
same construction, no longer exactly t. The difference of the two families then gets
the verdicts of the primary comparisons against the same margins (cpt.reporting.equivalence), uncorrected: a
matched gain is read off curves, not declared before the runs.
"""

from __future__ import annotations

import dataclasses
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
# Below this share of resamples in which both curves reach the matched x (the rest extrapolated from their end
# segments), the value has no interval: it would rest more on the extrapolation than on the curves.
MIN_REACHED = 0.5


@dataclass(frozen=True, eq=False)  # hashed by identity: a family is a key of the comparison's tables
class Family:
    """Experiments that differ only in `key`, in its order."""

    key: str
    points: tuple[Experiment, ...]
    detail: str = ""  # what sets it apart from a family of the same method and key (the keys their configs differ in)

    @property
    def method(self) -> str:
        return self.points[0].first["method"] or "sft"

    def value(self, experiment: Experiment) -> float:
        return experiment.config[self.key]

    @property
    def label(self) -> str:
        values = [self.value(p) for p in self.points]
        detail = f" ({self.detail})" if self.detail else ""
        return f"{method_label(self.method)}, {self.key} {min(values):g} to {max(values):g}{detail}"

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
    return _tell_apart(sorted(found, key=lambda f: min(order[id(p)] for p in f.points)))


def _tell_apart(found: list[Family]) -> list[Family]:
    """Families whose labels would be the same get the config keys they differ in."""
    same: dict[str, list[Family]] = {}
    for family in found:
        same.setdefault(family.label, []).append(family)
    result = []
    for family in found:
        others = same[family.label]
        if len(others) > 1:
            configs = [f.points[0].config for f in others]
            keys = sorted({k for c in configs for k in c if k not in (family.key, "name")
                           and any(c.get(k) != other.get(k) for other in configs)})
            family = dataclasses.replace(family, detail=", ".join(f"{k}={family.points[0].config.get(k)}"
                                                                   for k in keys))
        result.append(family)
    return result


def interpolate(xs: np.ndarray, ys: np.ndarray, x: float, extrapolate: bool = False) -> np.ndarray:
    """y at x along each row's curve (points in order), linear on the first segment that spans x. Where none does:
    NaN, or with `extrapolate` the line of the end segment nearer x (a resampled curve stopping just short of a
    matched x). xs, ys: (rows, points)."""
    xs, ys = np.atleast_2d(xs), np.atleast_2d(ys)
    lo, hi = xs[:, :-1], xs[:, 1:]
    inside = (np.minimum(lo, hi) <= x) & (x <= np.maximum(lo, hi))
    rows = np.arange(len(xs))
    segment = inside.argmax(axis=1)
    if extrapolate:  # below the first point: the first segment; above the last: the last
        nearer_start = np.abs(x - xs[:, 0]) <= np.abs(x - xs[:, -1])
        segment = np.where(inside.any(axis=1), segment, np.where(nearer_start, 0, lo.shape[1] - 1))
    x0, x1, y0, y1 = lo[rows, segment], hi[rows, segment], ys[rows, segment], ys[rows, segment + 1]
    span = np.where(x1 == x0, 1.0, x1 - x0)
    values = y0 + (x - x0) / span * (y1 - y0)
    return values if extrapolate else np.where(inside.any(axis=1), values, np.nan)


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
    """Two families compared at matched plasticity: the seeds and points used, every matched value, and for each
    plasticity measure with none, why."""

    a: Family
    b: Family
    seeds: tuple
    curves: dict  # Family -> the experiments of its rising branch, in order (for gain over base)
    left_out: tuple[Experiment, ...]  # points without every one of the seeds
    rows: tuple[Matched, ...]
    ranges: dict  # (plasticity key, Family) -> (lowest, highest) mean x along its rising branch
    reasons: dict  # plasticity key -> why nothing is matched on it


def _seed_values(experiment: Experiment, key: str, seeds: tuple) -> list[float]:
    by_seed = experiment.by_seed(key)
    return [by_seed[s] for s in seeds]


def _has(experiment: Experiment, key: str, seeds: tuple) -> bool:
    by_seed = experiment.by_seed(key)
    return all(by_seed.get(s) is not None and math.isfinite(by_seed[s]) for s in seeds)


def rising_branch(family: Family, x_key: str, seeds: tuple) -> list[Experiment]:
    """The family's points with every one of the seeds, in the key's order: the run of points whose mean x rises
    without a break up to the highest one (points before a dip, or past the top, are drawn but not on it)."""
    points = [p for p in family.points if _has(p, x_key, seeds)]
    if not points:
        return []
    means = [float(np.mean(_seed_values(p, x_key, seeds))) for p in points]
    top = int(np.argmax(means))
    start = top
    while start > 0 and means[start - 1] < means[start]:  # back down the rise: a dip before it would fold the curve
        start -= 1
    return points[start: top + 1]


def shared_seeds(a: Family, b: Family) -> tuple:
    """The seed set most points of the two families were run on (the larger on a tie)."""
    counts = Counter(frozenset(s for s in p.seeds if s is not None) for p in (*a.points, *b.points))
    best = max(counts.items(), key=lambda item: (item[1], len(item[0])))[0]
    return tuple(sorted(best))


def matched_points(low: float, high: float) -> list[float]:
    """A quarter, half and three quarters of the way from low to high, at one decimal where that keeps them
    distinct and strictly inside (values a reader can quote)."""
    exact = [low + quarter * (high - low) for quarter in QUARTERS]
    rounded = [round(x, 1) for x in exact]
    if len(set(rounded)) == len(rounded) and all(low < x < high for x in rounded):
        return rounded
    return exact


def compare(a: Family, b: Family, y_keys: dict[str, float | None]) -> Comparison:
    """a - b at matched plasticity, for each plasticity measure and each y (with its margin, or None)."""
    seeds = shared_seeds(a, b)
    n = len(seeds)
    rows, curves, left_out, ranges, reasons = [], {}, [], {}, {}
    if n < 2:
        reason = f"the two share {n} seed(s) on most points; a matched value needs two or more"
        return Comparison(a, b, seeds, {a: [], b: []}, (), (), {}, {key: reason for key, _ in PLASTICITY})
    weights = resample_weights(n)
    scale = math.sqrt(n / (n - 1))
    t = t_quantile(0.95, n - 1)
    for x_key, _ in PLASTICITY:
        branches = {f: rising_branch(f, x_key, seeds) for f in (a, b)}
        for f in (a, b):
            curves.setdefault(f, branches[f])
        left_out += [p for f in (a, b) for p in f.points
                     if not _has(p, x_key, seeds) and not any(p is q for q in left_out)]  # by identity, not content
        short = [f.label for f in (a, b) if len(branches[f]) < 2]
        if short:
            reasons[x_key] = (f"{' and '.join(short)}: fewer than two points rise in learning along the key, so "
                              "there is no curve to read")
            continue
        x_values = {f: np.array([_seed_values(p, x_key, seeds) for p in branches[f]]) for f in (a, b)}
        ranges.update({(x_key, f): (float(v.mean(axis=1).min()), float(v.mean(axis=1).max()))
                       for f, v in x_values.items()})
        low = max(values.mean(axis=1).min() for values in x_values.values())
        high = min(values.mean(axis=1).max() for values in x_values.values())
        if low >= high:
            reasons[x_key] = "the curves do not overlap: " + "; ".join(
                f"{f.label} {ranges[(x_key, f)][0]:.1f} to {ranges[(x_key, f)][1]:.1f}" for f in (a, b))
            continue
        for y_key, margin in y_keys.items():
            if not all(_has(p, y_key, seeds) for f in (a, b) for p in branches[f]):
                reasons.setdefault(x_key, f"a point on a curve lacks {y_key} on some seed")
                continue
            y_values = {f: np.array([_seed_values(p, y_key, seeds) for p in branches[f]]) for f in (a, b)}
            for x in matched_points(low, high):
                point = {f: float(interpolate(x_values[f].mean(axis=1), y_values[f].mean(axis=1), x)[0])
                         for f in (a, b)}
                curves_x = {f: weights @ x_values[f].T for f in (a, b)}
                boot = {f: interpolate(curves_x[f], weights @ y_values[f].T, x, extrapolate=True) for f in (a, b)}
                reached = np.ones(len(weights), dtype=bool)
                for f in (a, b):
                    reached &= (curves_x[f].min(axis=1) <= x) & (x <= curves_x[f].max(axis=1))
                share = float(reached.mean())
                estimates, se_diff = {f: Estimate(point[f], None, n) for f in (a, b)}, None
                if share >= MIN_REACHED:
                    estimates = {f: Estimate(point[f], t * scale * float(boot[f].std()), n) for f in (a, b)}
                    se_diff = scale * float((boot[a] - boot[b]).std())
                difference = Difference(point[a] - point[b], se_diff, None if se_diff is None else n - 1, True, n)
                rows.append(Matched(x_key, x, y_key, estimates[a], estimates[b], difference, share, margin))
    return Comparison(a, b, seeds, curves, tuple(left_out), tuple(rows), ranges, reasons)


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
    return found, [compare(a, b, y_keys) for a, b in pairs(found, primaries)]
