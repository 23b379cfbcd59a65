"""The competing explanations of why RFT forgets less, read from the runs' analysis.json (callbacks/analysis.py):
one point per run and stage, line fits with R^2, and per run the numbers its experiment reports with intervals.

- RL's Razor: a stage's forgetting against the KL(base || model) on the new task's prompts, one line for all runs.
- The study's proposition: the update weighed by the earlier tasks' Fisher, against the stage's reward variance.
- Sparse updates: the share of parameters a stage moved.
- Sample-level forgetting: the earlier tasks' evaluation examples a stage turned from right to wrong.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpt.atomic import replacing
from cpt.reporting.intervals import estimate

# Per run, the mean over its stages (those after the first where the quantity concerns earlier tasks).
RUN_KEYS = {
    "kl_new_task": "KL on new task",
    "stage_forgetting": "forgetting per stage",
    "fisher_update": "Fisher-weighted update",
    "reward_var": "reward variance",
    "updated_share": "parameters updated (%)",
    "right_to_wrong": "right -> wrong per stage",
    "wrong_to_right": "wrong -> right per stage",
}
POINT_FIELDS = ["run", "experiment", "method", "stage", "task", "kl_new_task", "forgetting",
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
                "run": run["name"], "experiment": run.get("experiment") or run["name"],
                "method": run.get("method"), "stage": stage["stage"], "task": stage["name"],
                "kl_new_task": stage["kl_new_task"], "forgetting": stage.get("forgetting"),
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
    """A run's RUN_KEYS: means over its stages; `updated_share` in percent."""
    points = stage_points([run])
    values = {"kl_new_task": _mean([p["kl_new_task"] for p in points]),
              "stage_forgetting": _mean([p["forgetting"] for p in points])}
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
