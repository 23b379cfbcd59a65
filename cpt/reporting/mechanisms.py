"""The competing explanations of why RFT forgets less, read from the runs' analysis.json (callbacks/analysis.py):
one point per run and stage, line fits with R^2, and per run the numbers its experiment reports with intervals.

- RL's Razor: a stage's drop on the earlier tasks against the KL(base || model) on the new task's prompts, one line
  per method and one over all, every run and stage after the first.
- The study's proposition: RFT's update weighed by the earlier tasks' Fisher is about Var[r] times SFT's; tested
  against that prediction, seed by seed on the log scale (`proposition`).
- Sparse updates: the share of parameters whose bfloat16 value a stage changed.
- Sample-level forgetting: the earlier tasks' evaluation examples a stage turned from right to wrong.

Per run every number is the mean over the stages after the first, the stages that have earlier tasks to forget
(the first has no drop, no Fisher of earlier tasks and no earlier examples), so that every column of an
experiment's row covers the same stages.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpt.atomic import replacing
from cpt.config import method_label
from cpt.reporting.intervals import Difference, difference, estimate

# Per run, the mean over its stages after the first. The drop is what a stage cost the earlier tasks, positive when
# they lost accuracy (FM has the other sign: negative is forgetting).
RUN_KEYS = {
    "kl_new_task": "KL on new task",
    "stage_drop": "drop per stage (points lost)",
    "fisher_update": "Fisher-weighted update",
    "reward_var": "reward variance",
    "updated_share": "parameters updated (%)",
    "right_to_wrong": "right -> wrong per stage",
    "wrong_to_right": "wrong -> right per stage",
}
POINT_FIELDS = ["run", "experiment", "method", "stage", "task", "kl_new_task", "drop",
                "general_change", "fisher_update", "reward_var", "updated_share", "right_to_wrong", "wrong_to_right"]


@dataclass
class Fit:
    """Least squares y = slope * x + intercept over n points, and its R^2 (None when undefined)."""

    slope: float
    intercept: float
    r2: float | None
    n: int


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """The least-squares line through (xs, ys); None with fewer than two distinct x."""
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    return Fit(slope, intercept, 1 - residual / total if total > 0 else None, n)


def stage_points(runs: list[dict]) -> list[dict]:
    """One record per run and recorded stage (POINT_FIELDS): the stage's analysis with the earlier tasks' example
    changes summed (`right_to_wrong`, `wrong_to_right`; None in the first stage)."""
    points = []
    for run in runs:
        analysis = run.get("analysis") or {}
        trained: list[str] = []  # the tasks of the stages before
        for stage in analysis.get("stages") or []:
            if "kl_new_task" not in stage:  # an analysis.json written before these were measured
                continue
            examples = stage.get("examples") or {}
            earlier = [examples[task] for task in trained if task in examples]
            points.append({
                "run": run["name"], "run_dir": str(run.get("dir") or run["name"]),
                "experiment": run.get("experiment") or run["name"],
                "method": run.get("method"), "stage": stage["stage"], "task": stage["name"],
                "kl_new_task": stage["kl_new_task"], "drop": stage.get("forgetting"),
                "general_change": stage.get("general_change"), "fisher_update": stage.get("fisher_update"),
                "reward_var": stage.get("reward_var"), "updated_share": (stage.get("updated") or {}).get("all"),
                "right_to_wrong": sum(e["right_to_wrong"] for e in earlier) if earlier else None,
                "wrong_to_right": sum(e["wrong_to_right"] for e in earlier) if earlier else None,
            })
            trained += stage["name"].split("+")
    return points


def _mean(values: list[float | None]) -> float | None:
    found = estimate(values)  # None and NaN left out, as for the seeds' intervals
    return None if found is None else found.mean


def run_mechanisms(run: dict) -> dict[str, float | None]:
    """A run's RUN_KEYS: means over its stages after the first; `updated_share` in percent."""
    points = [p for p in stage_points([run]) if p["stage"] > 1]
    values = {"kl_new_task": _mean([p["kl_new_task"] for p in points]),
              "stage_drop": _mean([p["drop"] for p in points])}
    for key in ("fisher_update", "reward_var", "right_to_wrong", "wrong_to_right"):
        values[key] = _mean([p[key] for p in points])
    share = _mean([p["updated_share"] for p in points])
    values["updated_share"] = None if share is None else 100 * share
    return values


def write_points_csv(points: list[dict], path: Path) -> None:
    """mechanisms.csv: one row per run and stage."""
    with replacing(path) as staging, open(staging, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=POINT_FIELDS)
        writer.writeheader()
        writer.writerows({key: "" if point.get(key) is None else point[key] for key in POINT_FIELDS}
                         for point in points)


def kl_relation(points: list[dict]) -> list[tuple[str, int, int, Fit | None]]:
    """RL's Razor over every run and stage after the first: per method and over all, (label, runs, stages, the
    line of the drop against the KL on the new task)."""
    shown = [p for p in points if p["drop"] is not None and p["kl_new_task"] is not None]
    groups = [(method_label(m), [p for p in shown if p["method"] == m]) for m in dict.fromkeys(p["method"]
                                                                                             for p in shown)]
    rows = []
    for label, mine in [*groups, ("all", shown)] if shown else []:
        fit = fit_line([p["kl_new_task"] for p in mine], [p["drop"] for p in mine])
        rows.append((label, len({p["run_dir"] for p in mine}), len(mine), fit))
    return rows


# How close to its prediction the proposition's ratio must be shown to be to count as borne out. With 0/1 rewards
# Var[r] <= 1/4, so the prediction is at least a factor 4 from no scaling at all; a factor 2 is half that on the
# log scale, so "as predicted" and "no scaling" cannot both hold.
PREDICTION_MARGIN = 2.0


@dataclass(frozen=True)
class Proposition:
    """RFT's Fisher-weighted update over SFT's, against the reward variance the study's proposition predicts it
    to be, per seed on the log scale: `measured` log(F_a / F_b), `against_prediction` log(F_a / F_b / Var[r]_a)."""

    measured: Difference
    against_prediction: Difference
    predicted: float  # the mean Var[r] of a's runs

    @property
    def verdict(self) -> str:
        """Larger or smaller than predicted when the interval of measured / predicted excludes 1; as predicted
        when it lies within a factor PREDICTION_MARGIN of 1 either way; otherwise not resolved (an interval that
        merely includes the prediction does not show it)."""
        bounds = self.against_prediction.interval()
        if bounds is None:
            return "no interval"
        if bounds[0] > 0:
            return "larger than predicted"
        if bounds[1] < 0:
            return "smaller than predicted"
        within = math.log(PREDICTION_MARGIN)
        return f"as predicted, within {PREDICTION_MARGIN:g}x" if -within < bounds[0] and bounds[1] < within \
            else "not resolved"


def proposition(fisher_a: dict, fisher_b: dict, variance_a: dict) -> Proposition | None:
    """The proposition's test for a rewarded experiment a against b (values by seed); None when a value is missing
    or not positive."""
    logs = {}
    for name, values in (("a", fisher_a), ("b", fisher_b), ("var", variance_a)):
        found = {s: v for s, v in values.items() if v is not None and not math.isnan(v)}
        if not found or min(found.values()) <= 0:
            return None
        logs[name] = {s: math.log(v) for s, v in found.items()}
    predicted = {s: logs["a"][s] - logs["var"][s] for s in logs["a"] if s in logs["var"]}
    measured = difference(logs["a"], logs["b"])
    against = difference(predicted, logs["b"])
    if measured is None or against is None:
        return None
    return Proposition(measured, against, sum(map(math.exp, logs["var"].values())) / len(logs["var"]))
