"""Tables of experiments over seeds (`cpt compare` when runs repeat): each number as mean ± the half-width of
its 95% interval, and the differences between two chosen experiments with whether they exceed their noise."""

from __future__ import annotations

import csv
from pathlib import Path

from cpt.atomic import replacing
from cpt.errors import ConfigError
from cpt.reporting.groups import Experiment
from cpt.reporting.intervals import Estimate
from cpt.reporting.mechanisms import RUN_KEYS

METRICS = (("avg_acc", "AvgAcc"), ("fm", "FM"), ("bwt", "BWT"), ("gain", "gain"))


def _cell(value: Estimate | None, scale: float = 1.0, suffix: str = "", spec: str = ".1f") -> str:
    if value is None:
        return "-"
    scaled = Estimate(value.mean * scale, None if value.half_width is None else value.half_width * scale, value.n)
    return scaled.format(spec) + suffix


def _duration(value: Estimate | None) -> str:
    if value is None:
        return "-"
    minutes = round(value.mean / 60)
    spread = "" if value.half_width is None else f" ± {round(value.half_width / 60)}"
    return f"{minutes // 60}:{minutes % 60:02d}{spread} min" if minutes >= 60 else f"{minutes}{spread} min"


def keys(benchmarks: list[str], tasks: list[str]) -> list[str]:
    """Every number an experiment reports, in table order."""
    return [*(key for key, _ in METRICS), *(f"{b}_{part}" for b in benchmarks for part in ("base", "final", "change")),
            "kept_fraction", "wall_time_s", *(f"final_{task}" for task in tasks),
            *(f"forget_{task}" for task in tasks), *RUN_KEYS]


def summary_cells(experiments: list[Experiment], benchmarks: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["experiment", "n", *(label for _, label in METRICS),
              *(f"{b} {part}" for b in benchmarks for part in ("final", "change")), "kept", "wall time"]
    body = []
    for e in experiments:
        cells = [e.name + ("" if e.complete else "*"), str(e.n), *(_cell(e.estimate(key)) for key, _ in METRICS)]
        cells += [_cell(e.estimate(f"{b}_{part}")) for b in benchmarks for part in ("final", "change")]
        cells += [_cell(e.estimate("kept_fraction"), 100, "%"), _duration(e.estimate("wall_time_s"))]
        body.append(cells)
    return header, body


def task_cells(experiments: list[Experiment], tasks: list[str],
               prefix: str = "final") -> tuple[list[str], list[list[str]]]:
    """Per task, each experiment's final accuracy (prefix final) or forgetting (prefix forget)."""
    title = {"final": "final accuracy", "forget": "forgetting per task"}[prefix]
    shown = [e for e in experiments if any(e.estimate(f"{prefix}_{task}") for task in tasks)]
    return [title, *tasks], [[e.name, *(_cell(e.estimate(f"{prefix}_{task}")) for task in tasks)] for e in shown]


def mechanism_cells(experiments: list[Experiment]) -> tuple[list[str], list[list[str]]] | None:
    """Per experiment with analysis.json, the mechanisms' numbers (cpt.reporting.mechanisms.RUN_KEYS); None when no
    experiment recorded them."""
    shown = [e for e in experiments if any(e.estimate(key) for key in RUN_KEYS)]
    if not shown:
        return None
    return (["mechanisms (mean over stages)", *RUN_KEYS.values()],
            [[e.name, *(_cell(e.estimate(key), spec=".3g") for key in RUN_KEYS)] for e in shown])


def footnote(experiments: list[Experiment]) -> str:
    lines = ["mean ± half-width of the 95% interval over the n seeds (Student's t); one seed has no interval",
             "forgetting per task: a task's final accuracy less its best after it was trained (FM is their mean)"]
    lines += [f"* {e.name}: {sum(not run['complete'] for run in e.runs)} of {e.n} runs incomplete"
              for e in experiments if not e.complete]
    return "\n".join(lines)


def find(experiments: list[Experiment], name: str) -> Experiment:
    """The experiment called `name` (case ignored); a message listing the names when there is none."""
    matches = [e for e in experiments if e.name.lower() == name.lower()]
    if not matches:
        raise ConfigError(f"--diff names an experiment {name!r} that is not among the runs; the experiments are: "
                          + "; ".join(repr(e.name) for e in experiments))
    return matches[0]


def differences(a: Experiment, b: Experiment, benchmarks: list[str], tasks: list[str]) -> list[dict]:
    """Per number both report: each mean, a - b, its 95% Welch interval and whether it excludes 0."""
    rows = []
    for key in keys(benchmarks, tasks):
        if key in ("kept_fraction", "wall_time_s") or key.endswith("_base"):
            continue
        diff = a.difference(b, key)
        if diff is None:
            continue
        rows.append({"metric": key, "a": a.estimate(key), "b": b.estimate(key), "difference": diff.mean,
                     "half_width": diff.half_width, "beyond_noise": diff.beyond_noise})
    return rows


def difference_cells(a: Experiment, b: Experiment, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", a.name, b.name, "difference", "95% interval", "beyond noise"]
    body = []
    for row in rows:
        spec = ".3g" if row["metric"] in RUN_KEYS else ".1f"  # the mechanisms' quantities come in any size
        hw, diff = row["half_width"], row["difference"]
        interval = "-" if hw is None else f"[{diff - hw:{spec}}, {diff + hw:{spec}}]"
        verdict = {True: "yes", False: "no", None: "-"}[row["beyond_noise"]]
        body.append([row["metric"], _cell(row["a"], spec=spec), _cell(row["b"], spec=spec), f"{diff:+{spec}}",
                     interval, verdict])
    return header, body


def write_experiments_csv(experiments: list[Experiment], benchmarks: list[str], tasks: list[str],
                          path: Path) -> None:
    """One row per experiment: n, seeds and, per number, its mean and interval half-width."""
    columns = keys(benchmarks, tasks)
    with replacing(path) as staging, open(staging, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["experiment", "method", "schedule", "n", "seeds", "complete",
                         *(f"{key}_{part}" for key in columns for part in ("mean", "half_width"))])
        for e in experiments:
            cells = [e.name, e.first["method"] or "", e.first["schedule"], e.n,
                     " ".join("" if s is None else str(s) for s in e.seeds), e.complete]
            for key in columns:
                value = e.estimate(key)
                cells += ["", ""] if value is None else [value.mean, "" if value.half_width is None
                                                         else value.half_width]
            writer.writerow(cells)


def write_differences_csv(pairs: list[tuple[Experiment, Experiment, list[dict]]], path: Path) -> None:
    with replacing(path) as staging, open(staging, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "metric", "a_mean", "b_mean", "difference", "half_width", "beyond_noise"])
        for a, b, rows in pairs:
            for row in rows:
                writer.writerow([a.name, b.name, row["metric"], row["a"].mean, row["b"].mean, row["difference"],
                                 "" if row["half_width"] is None else row["half_width"],
                                 "" if row["beyond_noise"] is None else row["beyond_noise"]])
