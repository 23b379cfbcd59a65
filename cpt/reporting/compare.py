"""The study's runs side by side (`python -m cpt compare`).

Reads each run directory's results.json (and filtering.json, analysis.json and config.yaml where present),
prints one row per run (AvgAcc, FM, BWT, each general benchmark from base to final, the share of data kept by
instance filtering, wall time) and each task's final accuracy, and writes to the output directory
comparison.csv, comparison.md, compare_matrices.png, compare_task_curves.png, compare_general.png, and
compare_analysis.png when a run recorded analysis.json.

Runs written before a field of results.json existed still compare: a missing name is the directory's name, a
missing method or schedule is read from the run's config.yaml, missing benchmarks come from the `general` list.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cpt.atomic import replacing
from cpt.errors import ConfigError
from cpt.eval.metrics import before_turn, diagonal, gain_over_base, learning_gain
from cpt.run_files import next_step, read_json, read_yaml

log = logging.getLogger(__name__)

DEFAULT_OUT = "compare"
FIGURES = ("compare_matrices.png", "compare_task_curves.png", "compare_general.png")
ANALYSIS_FIGURE = "compare_analysis.png"


def _read_json(path: Path) -> dict:
    try:
        content = read_json(path, f"was the run cut short while writing it? Leave the run out, or {next_step(path)}")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error}; was the run cut short while writing it? Leave the run "
                          "out or run it again") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path} holds a {type(content).__name__}, not the mapping `cpt fit` writes")
    return content


def _config_value(run_dir: Path, key: str) -> str | None:
    """A key of the run's saved config.yaml: older results.json lack method and schedule."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    return read_yaml(path, f"leave the run out, or {next_step(path)}").get(key)


def _benchmarks_from_general(general: list) -> dict:
    if not any(g is not None for g in general):
        return {}
    return {"general": [None if g is None else {"accuracy": g, "categories": {}} for g in general]}


def _kept_fraction(filtering: dict | None) -> float | None:
    stages = (filtering or {}).get("stages") or []
    pool = sum(stage.get("pool", 0) for stage in stages)
    return sum(stage.get("kept", 0) for stage in stages) / pool if pool else None


def load_run(path: str | Path) -> dict:
    """One run directory's results, every optional field filled in: results.json's keys plus `dir`,
    `filtering` and `analysis` (the contents of filtering.json and analysis.json, or None)."""
    run_dir = Path(path).expanduser()
    if run_dir.is_file():
        hint = f", {str(run_dir.parent)!r} here" if run_dir.name == "results.json" else ""
        raise ConfigError(f"{str(run_dir)!r} is a file; give the run's directory (the output_dir of a "
                          f"`python -m cpt fit` run{hint})")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    if not (run_dir / "results.json").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} holds no results.json: give the output_dir of a "
                                "`python -m cpt fit` run (it writes results.json after its first evaluation)")
    run = _read_json(run_dir / "results.json")
    for key in ("tasks", "accuracy_matrix"):
        if not run.get(key):
            raise ConfigError(f"{run_dir / 'results.json'} has no {key!r}: it is not a results file of `cpt fit`")
    tasks, matrix = run["tasks"], run["accuracy_matrix"]
    if any(len(row) != len(tasks) for row in matrix):
        raise ConfigError(f"{run_dir / 'results.json'}: every row of 'accuracy_matrix' needs one value per task "
                          f"({len(tasks)})")
    optional = {name: _read_json(run_dir / f"{name}.json") if (run_dir / f"{name}.json").is_file() else None
                for name in ("filtering", "analysis")}
    run["name"] = run.get("name") or run_dir.name
    run["method"] = run.get("method") or _config_value(run_dir, "method")
    # Before multitask training existed every run was sequential.
    run["schedule"] = run.get("schedule") or _config_value(run_dir, "schedule") or "sequential"
    if run.get("stages") is None:  # an empty list is `cpt eval`'s row: a model evaluated, no stage trained
        run["stages"] = [list(tasks)] if run["schedule"] == "multitask" else [[t] for t in tasks]
    run.setdefault("complete", len(matrix) == len(run["stages"]) + 1)
    if (run["complete"] and run["stages"] and len(matrix) != len(run["stages"]) + 1) or \
            len(matrix) > len(run["stages"]) + 1:
        results = run_dir / "results.json"
        raise ConfigError(f"{results} has {len(matrix)} accuracy rows for {len(run['stages'])} stage(s) (a finished "
                          f"run has one per stage and the base's): leave the run out, or {next_step(results)}")
    run.setdefault("chance", [None] * len(tasks))
    if "benchmarks" not in run:
        run["benchmarks"] = _benchmarks_from_general(run.get("general") or [])
    run.setdefault("wall_time_s", None)
    if run.get("kept_fraction") is None:
        run["kept_fraction"] = _kept_fraction(optional["filtering"])
    for key in ("avg_acc", "fm", "bwt"):
        run.setdefault(key, None)
    return {**run, **optional, "dir": run_dir}


def load_runs(paths: list[str | Path]) -> list[dict]:
    """load_run for each directory; names made unique with the directory's name, and a warning when the runs
    evaluate different tasks (they are compared over the union, "-" where a run lacks a task)."""
    if not paths:
        raise ConfigError("no run directories given: python -m cpt compare RUN_DIR [RUN_DIR ...] [--out DIR]")
    runs = [load_run(path) for path in paths]
    names = [run["name"] for run in runs]
    for run in runs:
        run["experiment"] = run["name"]  # what groups it with its other seeds (cpt.reporting.groups)
        if names.count(run["name"]) > 1:
            run["name"] = f"{run['name']} ({run['dir'].name})"
    if len({tuple(run["tasks"]) for run in runs}) > 1:
        log.warning("the runs evaluate different tasks (%s); comparing the union, '-' where a run lacks a task",
                    "; ".join(f"{run['name']}: {', '.join(run['tasks'])}" for run in runs))
    return runs


def all_tasks(runs: list[dict]) -> list[str]:
    """Every run's tasks, in the order they first appear."""
    return list(dict.fromkeys(task for run in runs for task in run["tasks"]))


def benchmark_names(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(name for run in runs for name, rows in run["benchmarks"].items()
                              if any(rows or [])))


def base_and_final(rows: list[dict | None], trained: bool = True) -> tuple[float | None, float | None]:
    """A benchmark's accuracy on the base model and on the last row after it where it was evaluated; for a model
    evaluated without training (`cpt eval`, not `trained`), its one row is the final one."""
    accuracy = [None if row is None else row.get("accuracy") for row in rows or []]
    if not trained:
        return None, accuracy[0] if accuracy else None
    base = accuracy[0] if accuracy else None
    final = next((a for a in reversed(accuracy[1:]) if a is not None), None)
    return base, final


def final_accuracy(run: dict, task: str) -> float | None:
    """The task's accuracy on the run's last evaluated row; None where the run lacks the task or stopped before
    training anything (a `cpt eval` row, which trains nothing by design, is its own final row)."""
    matrix = run["accuracy_matrix"]
    if task not in run["tasks"] or (len(matrix) < 2 and run["stages"]):
        return None
    return matrix[-1][run["tasks"].index(task)]


def comparison_rows(runs: list[dict]) -> list[dict]:
    """One flat record per run, raw numbers (None where missing), keyed as comparison.csv's columns:
    name, method, schedule, complete, avg_acc, fm, bwt, gain, diagonal, gain_over_base, before_turn,
    <benchmark>_base, <benchmark>_final, kept_fraction, wall_time_s, final_<task>, before_<task>. Plasticity three
    ways (sequential runs): gain, the mean learning on each new task over the row before; diagonal, each task's
    accuracy after its turn; gain_over_base, that less the base's; and before_turn, each task's accuracy just
    before its turn (before_<task> per task)."""
    benchmarks, tasks = benchmark_names(runs), all_tasks(runs)
    rows = []
    for run in runs:
        row = {key: run[key] for key in ("name", "method", "schedule", "complete", "avg_acc", "fm", "bwt")}
        sequential, matrix = _sequential(run), run["accuracy_matrix"]
        row["gain"] = learning_gain(matrix) if sequential else None
        row["diagonal"] = diagonal(matrix) if sequential else None
        row["gain_over_base"] = gain_over_base(matrix) if sequential else None
        turns = before_turn(matrix) if sequential else []
        row["before_turn"] = sum(turns) / len(turns) if turns else None
        for name in benchmarks:
            row[f"{name}_base"], row[f"{name}_final"] = base_and_final(run["benchmarks"].get(name),
                                                                       trained=bool(run["stages"]))
        row["kept_fraction"], row["wall_time_s"] = run["kept_fraction"], run["wall_time_s"]
        row.update({f"final_{task}": final_accuracy(run, task) for task in tasks})
        row.update({f"before_{task}": turns[run["tasks"].index(task)] if task in run["tasks"][:len(turns)] else None
                    for task in tasks})
        rows.append(row)
    return rows


def _sequential(run: dict) -> bool:
    """Trained one task per stage and evaluated after at least one (FM, BWT and gain apply)."""
    stages = run["stages"]
    return bool(stages) and all(len(stage) == 1 for stage in stages) and len(run["accuracy_matrix"]) > 1


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _base_to_final(base: float | None, final: float | None) -> str:
    return "-" if base is None and final is None else f"{_number(base)} -> {_number(final)}"


def _incomplete_mark(run: dict) -> str:
    return "" if run["complete"] else "*"


def _summary_cells(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    benchmarks = benchmark_names(runs)
    header = ["run", "method", "AvgAcc", "FM", "BWT", *(f"{name} base->final" for name in benchmarks), "kept",
              "wall time"]
    body = []
    for run, row in zip(runs, comparison_rows(runs)):
        method = " ".join(part for part in (row["method"], row["schedule"]) if part) or "-"
        general = [_base_to_final(row[f"{name}_base"], row[f"{name}_final"]) for name in benchmarks]
        kept = "-" if row["kept_fraction"] is None else f"{100 * row['kept_fraction']:.1f}%"
        body.append([row["name"] + _incomplete_mark(run), method, _number(row["avg_acc"]), _number(row["fm"]),
                     _number(row["bwt"]), *general, kept, _duration(row["wall_time_s"])])
    return header, body


def _task_cells(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    tasks = all_tasks(runs)
    return (["final accuracy", *tasks],
            [[run["name"] + _incomplete_mark(run), *(_number(final_accuracy(run, t)) for t in tasks)] for run in runs])


def _footnotes(runs: list[dict]) -> list[str]:
    return [f"* {run['name']} is incomplete: {len(run['accuracy_matrix']) - 1} of {len(run['stages'])} stages "
            "evaluated" for run in runs if not run["complete"]]


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "-" * len(line(header)), *(line(row) for row in body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    rule = ["---", *("---:" for _ in header[1:])]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *body])


def _join(tables: list[str], runs: list[dict]) -> str:
    footnotes = _footnotes(runs)
    return "\n\n".join(tables + (["\n".join(footnotes)] if footnotes else []))


def format_comparison(runs: list[dict]) -> str:
    """The printed comparison: one row per run, then each task's final accuracy (%)."""
    return _join([text_table(*_summary_cells(runs)), text_table(*_task_cells(runs))], runs)


def format_markdown(runs: list[dict]) -> str:
    return _join([markdown_table(*_summary_cells(runs)), markdown_table(*_task_cells(runs))], runs) + "\n"


def write_csv(runs: list[dict], path: Path) -> None:
    rows = comparison_rows(runs)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _stage_label(stage: list[str], index: int, n_tasks: int) -> str:
    trained = "all tasks" if len(stage) == n_tasks > 1 else "+".join(stage)
    return f"after {index}: {trained}"


def plot_matrices(runs: list[dict]) -> Figure:
    """Each run's accuracy matrix over the union of tasks, on one 0-100 colour scale."""
    tasks = all_tasks(runs)
    height = max(len(run["accuracy_matrix"]) for run in runs)
    fig = Figure(figsize=(len(runs) * (0.75 * len(tasks) + 2.6) + 1, 0.45 * height + 2.4), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run in zip(axes, runs):
        matrix = run["accuracy_matrix"]
        cells = [[row[run["tasks"].index(t)] if t in run["tasks"] else math.nan for t in tasks] for row in matrix]
        image = ax.imshow(cells, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(cells):
            for j, value in enumerate(row):
                text, dark = ("-", False) if math.isnan(value) else (f"{value:.0f}", value < 60)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        labels = ["base"] + [_stage_label(stage, k, len(run["tasks"]))
                             for k, stage in enumerate(run["stages"][: len(matrix) - 1], 1)]
        ax.set_xticks(range(len(tasks)), tasks, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(matrix)), labels, fontsize=8)
        title = f"{run['name']}{_incomplete_mark(run)}\nAvgAcc {_number(run['avg_acc'])}   FM {_number(run['fm'])}"
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=list(axes), label="accuracy (%)", fraction=0.02)
    return fig


def task_panels(tasks: list[str]) -> tuple[Figure, list]:
    """One panel per task, four to a row: the layout of the task-curve figures."""
    columns = min(4, len(tasks))
    n_rows = math.ceil(len(tasks) / columns)
    fig = Figure(figsize=(3.6 * columns + 2.0, 2.9 * n_rows + 0.6), layout="constrained")
    return fig, list(fig.subplots(n_rows, columns, squeeze=False).ravel())


def finish_task_panels(fig: Figure, axes: list, tasks: list[str], steps: int, runs: list[dict]) -> None:
    """Each panel's chance line, title and axes over base and the `steps` stages; spare panels hidden; one legend
    with every line, a run absent from the first panel included."""
    for ax, task in zip(axes, tasks):
        chance = next((run["chance"][run["tasks"].index(task)] for run in runs
                       if task in run["tasks"] and run["chance"][run["tasks"].index(task)] is not None), None)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-3, 103)
        ax.set_xticks(range(steps + 1), ["base"] + [f"after {k}" for k in range(1, steps + 1)], rotation=40,
                      fontsize=7)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1: len(tasks)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)


def plot_task_curves(runs: list[dict]) -> Figure:
    """Each task's accuracy across the sequence; a multitask run (base and one final row) is its final value
    over the whole range, dashed: the upper bound the sequence is measured against."""
    tasks = all_tasks(runs)
    steps = max(len(run["stages"]) if run["schedule"] != "multitask" else 1 for run in runs)
    fig, axes = task_panels(tasks)
    for ax, task in zip(axes, tasks):
        for i, run in enumerate(runs):
            if task not in run["tasks"]:
                continue
            values = [row[run["tasks"].index(task)] for row in run["accuracy_matrix"]]
            label = run["name"] + _incomplete_mark(run)
            if run["schedule"] == "multitask" and len(values) > 1:
                ax.plot([0, steps], [values[-1]] * 2, linestyle="--", color=_colour(i), label=f"{label} (final)")
            else:
                ax.plot(range(len(values)), values, marker="o", markersize=3, color=_colour(i), label=label)
    finish_task_panels(fig, axes, tasks, steps, runs)
    return fig


Bar = tuple[float, float | None] | None  # an accuracy and its 95% half-width (None: not measured)


def general_bars(names: list[str], benchmarks: list[str], bars: list[list[tuple[Bar, Bar]]], title: str) -> Figure:
    """Per benchmark, each entry's base (light) and final (solid) accuracy, with error bars where known;
    bars[i][b] = (base, final) of entry i on benchmark b."""
    fig = Figure(figsize=(max(5.0, 1.2 * len(names) * max(1, len(benchmarks)) + 3), 4), layout="constrained")
    ax = fig.subplots()
    if not benchmarks:
        ax.text(0.5, 0.5, "no general benchmark was evaluated in these runs", ha="center", va="center")
        ax.set_axis_off()
        return fig
    width = 0.8 / (2 * len(names))
    for i, name in enumerate(names):
        for b in range(len(benchmarks)):
            for k, (bar, alpha) in enumerate(zip(bars[i][b], (0.35, 1.0))):
                if bar is None:
                    continue
                value, error = bar
                x = b - 0.4 + (2 * i + k + 0.5) * width
                ax.bar(x, value, width, yerr=error, capsize=2, color=_colour(i), alpha=alpha,
                       label=(f"{name} base" if k == 0 else name) if b == 0 else None)
                ax.text(x, value + (error or 0) + 1, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def plot_general(runs: list[dict]) -> Figure:
    """Per benchmark, each run's base (light) and final (solid) accuracy."""
    benchmarks = benchmark_names(runs)
    bars = [[tuple(None if v is None else (v, None) for v in base_and_final(run["benchmarks"].get(name)))
             for name in benchmarks] for run in runs]
    return general_bars([run["name"] for run in runs], benchmarks, bars,
                        "General benchmarks: base (light) and after the sequence (solid)")


def plot_analysis(runs: list[dict]) -> Figure | None:
    """From analysis.json, per stage: relative update norm per module group, reward variance, mean KL to the
    base over every task's prompts. None when no run recorded it."""
    recorded = [(i, run) for i, run in enumerate(runs) if run["analysis"] and run["analysis"].get("stages")]
    if not recorded:
        return None
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    norm_ax, var_ax, kl_ax = fig.subplots(1, 3)
    styles = ["-", "--", ":", "-."]
    for i, run in recorded:
        stages = run["analysis"]["stages"]
        x = [stage.get("stage", k) for k, stage in enumerate(stages, 1)]
        groups = list(dict.fromkeys(g for stage in stages for g in stage.get("update_norm") or {}))
        for g, group in enumerate(groups):
            norms = [((stage.get("update_norm") or {}).get(group) or {}).get("rel") for stage in stages]
            norms = [math.nan if norm is None else norm for norm in norms]  # null: the group did not exist
            norm_ax.plot(x, norms, styles[g % len(styles)], marker="o", color=_colour(i),
                         label=f"{run['name']}: {group}")
        variance = [math.nan if stage.get("reward_var") is None else stage["reward_var"] for stage in stages]
        if not all(math.isnan(v) for v in variance):
            var_ax.plot(x, variance, marker="o", color=_colour(i), label=run["name"])
        kl = [sum(values) / len(values) if (values := list((stage.get("kl_to_base") or {}).values())) else math.nan
              for stage in stages]
        kl_ax.plot(x, kl, marker="o", color=_colour(i), label=run["name"])
    for ax, title in ((norm_ax, "relative update norm ||dW|| / ||W||"), (var_ax, "reward variance"),
                      (kl_ax, "mean KL to the base model")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("stage")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not var_ax.lines:
        var_ax.text(0.5, 0.5, "no reward (SFT runs)", ha="center", va="center", transform=var_ax.transAxes)
        var_ax.set_xticks([])
        var_ax.set_yticks([])
    return fig


def save_figures(figures: dict[str, Figure], out_dir: str | Path) -> list[Path]:
    """Each figure as out_dir/<name>, written beside its place and renamed into it; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        FigureCanvasAgg(fig)  # the Agg canvas: no display, and no change to the session's pyplot backend
        with replacing(out_dir / name) as staging:
            fig.savefig(staging, dpi=100, bbox_inches="tight", format="png")
        paths.append(out_dir / name)
    return paths


def write_figures(runs: list[dict], out_dir: str | Path) -> list[Path]:
    """compare_matrices.png, compare_task_curves.png, compare_general.png (and compare_analysis.png when a run
    has analysis.json) in out_dir; returns their paths."""
    figures = dict(zip(FIGURES, (plot_matrices(runs), plot_task_curves(runs), plot_general(runs))))
    analysis = plot_analysis(runs)
    if analysis is not None:
        figures[ANALYSIS_FIGURE] = analysis
    return save_figures(figures, out_dir)
