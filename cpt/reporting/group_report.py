"""Tables of experiments over seeds (`cpt compare` when runs repeat): each number as mean ± the half-width of
its 95% interval; the study's primary comparisons with their equivalence verdicts (cpt.reporting.equivalence); and
the exploratory differences between two chosen experiments, each with its interval and whether it excludes 0."""

from __future__ import annotations

import csv
from pathlib import Path

from cpt.atomic import replacing
from cpt.errors import ConfigError
from cpt.reporting.equivalence import PrimaryTest, equivalence_p, primary_tests, verdict
from cpt.reporting.groups import Experiment
from cpt.reporting.intervals import Difference, Estimate
from cpt.reporting.mechanisms import RUN_KEYS

# Plasticity three ways beside AvgAcc, FM and BWT (cpt.reporting.compare.comparison_rows has their definitions).
METRICS = (("avg_acc", "AvgAcc"), ("fm", "FM"), ("bwt", "BWT"), ("gain", "gain"), ("diagonal", "P[t][t]"),
           ("gain_over_base", "gain over base"), ("before_turn", "before its turn"))


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


def is_metric(name: str) -> bool:
    """Whether `name` is a number an experiment reports (what a margin or a comparison may name): the METRICS,
    a benchmark's base, final or change, a task's final, forgetting or before-its-turn, or a mechanism's."""
    return (name in dict(METRICS) or name in RUN_KEYS or name in ("kept_fraction", "wall_time_s")
            or name.endswith(("_base", "_final", "_change")) or name.startswith(("final_", "forget_", "before_")))


def check_comparisons(primaries: list[tuple[str, str]], diffs: list[tuple[str, str]],
                      margins: dict[str, float]) -> None:
    """The comparisons asked for make sense before anything is read: none compares an experiment with itself,
    every margin names a reported number, and margins have a comparison to apply to. ConfigError otherwise."""
    for a, b in [*primaries, *diffs]:
        if a.lower() == b.lower():
            raise ConfigError(f"the comparison [{a}, {b}] compares an experiment with itself (always 0); name two "
                              "experiments")
    unknown = [name for name in margins if not is_metric(name)]
    if unknown:
        raise ConfigError(f"a margin names {', '.join(map(repr, unknown))}, which no experiment reports; margins "
                          f"name a metric such as {', '.join(key for key, _ in METRICS)} or general_change")
    if margins and not (primaries or diffs):
        raise ConfigError("a margin applies to the primary (and exploratory) comparisons, and none is given: add "
                          "--primary A B (or --diff A B), or leave the margin out")


def keys(benchmarks: list[str], tasks: list[str]) -> list[str]:
    """Every number an experiment reports, in table order."""
    return [*(key for key, _ in METRICS), *(f"{b}_{part}" for b in benchmarks for part in ("base", "final", "change")),
            "kept_fraction", "wall_time_s", *(f"final_{task}" for task in tasks),
            *(f"forget_{task}" for task in tasks), *(f"before_{task}" for task in tasks), *RUN_KEYS]


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
    """Per task, each experiment's final accuracy (prefix final), forgetting (prefix forget) or accuracy just
    before its turn (prefix before)."""
    title = {"final": "final accuracy", "forget": "forgetting per task", "before": "accuracy before its turn"}[prefix]
    shown = [e for e in experiments if any(e.estimate(f"{prefix}_{task}") for task in tasks)]
    return [title, *tasks], [[e.name, *(_cell(e.estimate(f"{prefix}_{task}")) for task in tasks)] for e in shown]


def mechanism_cells(experiments: list[Experiment]) -> tuple[list[str], list[list[str]]] | None:
    """Per experiment with analysis.json, the mechanisms' numbers (cpt.reporting.mechanisms.RUN_KEYS); None when no
    experiment recorded them."""
    shown = [e for e in experiments if any(e.estimate(key) for key in RUN_KEYS)]
    if not shown:
        return None
    return (["mechanisms (mean over stages 2 on)", *RUN_KEYS.values()],
            [[e.name, *(_cell(e.estimate(key), spec=".3g") for key in RUN_KEYS)] for e in shown])


def footnote(experiments: list[Experiment]) -> str:
    lines = ["mean ± half-width of the 95% interval over the n seeds (Student's t); one seed has no interval",
             "gain: mean over tasks of P[t][t] - P[t-1][t] (over the row before); P[t][t]: each task just after its "
             "turn; gain over base: P[t][t] - P[0][t]; before its turn: P[t-1][t]",
             "forgetting per task: a task's final accuracy less its best after it was trained (FM is their mean)"]
    lines += [f"* {e.name}: {sum(not run['complete'] for run in e.runs)} of {e.n} runs incomplete"
              for e in experiments if not e.complete]
    return "\n".join(lines)


def find(experiments: list[Experiment], name: str) -> Experiment:
    """The experiment called `name` (case ignored); a message listing the names when there is none."""
    matches = [e for e in experiments if e.name.lower() == name.lower()]
    if not matches:
        raise ConfigError(f"a comparison names an experiment {name!r} that is not among the runs; the experiments are: "
                          + "; ".join(repr(e.name) for e in experiments))
    return matches[0]


def _exploratory_keys(benchmarks: list[str], tasks: list[str]) -> list[str]:
    return [key for key in keys(benchmarks, tasks)
            if key not in ("kept_fraction", "wall_time_s") and not key.endswith("_base")]


def differences(a: Experiment, b: Experiment, benchmarks: list[str], tasks: list[str]) -> list[dict]:
    """Per number both report: each mean and a - b (cpt.reporting.intervals.Difference: paired over the common
    seeds, else Welch's)."""
    rows = []
    for key in _exploratory_keys(benchmarks, tasks):
        diff = a.difference(b, key)
        if diff is not None:
            rows.append({"metric": key, "a": a.estimate(key), "b": b.estimate(key), "difference": diff})
    return rows


def _interval(diff: Difference, level: float, spec: str) -> str:
    bounds = diff.interval(level)
    return "-" if bounds is None else f"[{bounds[0]:{spec}}, {bounds[1]:{spec}}]"


def difference_cells(a: Experiment, b: Experiment, rows: list[dict], margins: dict[str, float] | None = None
                     ) -> tuple[list[str], list[list[str]]]:
    """The rows as a table; a metric with a margin also gets its 90% interval and the verdict against the margin,
    uncorrected (the primary comparisons' criterion, applied to an exploratory pair)."""
    margins = margins or {}
    header = ["metric", a.name, b.name, "difference", "95% interval", "test", "excludes 0", "90% interval",
              "against the margin"]
    body = []
    for row in rows:
        spec = ".3g" if row["metric"] in RUN_KEYS else ".1f"  # the mechanisms' quantities come in any size
        diff, margin = row["difference"], margins.get(row["metric"])
        excludes = {True: "yes", False: "no", None: "-"}[diff.excludes_zero]
        against = ["-", "-"] if margin is None else [_interval(diff, 0.90, spec),
                                                    verdict(diff.p_value, equivalence_p(diff, margin), margin)]
        body.append([row["metric"], _cell(row["a"], spec=spec), _cell(row["b"], spec=spec), f"{diff.mean:+{spec}}",
                     _interval(diff, 0.95, spec), diff.test, excludes, *against])
    return header, body


def primary(experiments: list[Experiment], pairs: list[tuple[str, str]], margins: dict[str, float]
            ) -> list[PrimaryTest]:
    """Every primary comparison on every metric with a margin, tested and Holm-adjusted together."""
    cells = []
    for a_name, b_name in pairs:
        a, b = find(experiments, a_name), find(experiments, b_name)
        for metric, margin in margins.items():
            diff = a.difference(b, metric)
            if diff is None:
                raise ConfigError(f"the primary comparison {a.name} - {b.name} has no values of {metric!r} on both "
                                  "sides: margins name a number every primary experiment reports (e.g. fm, avg_acc, "
                                  "gain, general_change)")
            cells.append((a.name, b.name, metric, diff, margin))
    return primary_tests(cells)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value >= 0.001 else "<0.001"


def primary_cells(tests: list[PrimaryTest]) -> tuple[list[str], list[list[str]]]:
    header = ["comparison", "metric", "difference", "95% interval", "90% interval", "test", "margin", "p (diff)",
              "p (equiv)", "verdict", "Holm-adjusted"]
    body = [[f"{t.a} - {t.b}", t.metric, f"{t.difference.mean:+.1f}", _interval(t.difference, 0.95, ".1f"),
             _interval(t.difference, 0.90, ".1f"), t.difference.test, f"±{t.margin:g}", _p(t.p_difference),
             _p(t.p_equivalence), t.verdict, t.holm_verdict] for t in tests]
    return header, body


def primary_note(tests: list[PrimaryTest]) -> str:
    return ("primary: declared in the study file with their margins. different: the 95% interval excludes 0; "
            "equivalent within ±M: the 90% interval lies inside ±M (two one-sided tests at 5%); not resolved: "
            f"neither. Holm-adjusted: the same verdicts with the p values adjusted over the {len(tests)} difference "
            "tests and, apart, the equivalence tests")


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
    """Every exploratory difference: the means, a - b, its interval, the test and its p value."""
    with replacing(path) as staging, open(staging, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "metric", "a_mean", "b_mean", "difference", "half_width", "test", "n", "p_value",
                         "excludes_0"])
        for a, b, rows in pairs:
            for row in rows:
                diff = row["difference"]
                writer.writerow([a.name, b.name, row["metric"], row["a"].mean, row["b"].mean, diff.mean,
                                 _blank(diff.half_width()), "paired" if diff.paired else "welch", diff.n,
                                 _blank(diff.p_value), _blank(diff.excludes_zero)])


def write_primary_csv(tests: list[PrimaryTest], path: Path) -> None:
    """The primary comparisons: a - b per metric, both intervals, the margin, p values raw and Holm-adjusted, and
    the verdicts."""
    with replacing(path) as staging, open(staging, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "metric", "difference", "low_95", "high_95", "low_90", "high_90", "test", "n",
                         "margin", "p_difference", "p_equivalence", "holm_p_difference", "holm_p_equivalence",
                         "verdict", "holm_verdict"])
        for t in tests:
            wide, narrow = t.difference.interval(0.95) or ("", ""), t.difference.interval(0.90) or ("", "")
            writer.writerow([t.a, t.b, t.metric, t.difference.mean, *wide, *narrow,
                             "paired" if t.difference.paired else "welch", t.difference.n, t.margin,
                             *(_blank(p) for p in (t.p_difference, t.p_equivalence, t.holm_difference,
                                                   t.holm_equivalence)), t.verdict, t.holm_verdict])


def _blank(value) -> object:
    return "" if value is None else value
