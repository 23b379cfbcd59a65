"""Figures of experiments over seeds: mean accuracy matrices with each cell's interval, task curves with their
interval bands, general benchmarks with error bars, and the stability-plasticity plane (learning on each new task
against forgetting, and against the general set's change), one point per experiment with its interval both ways."""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.figure import Figure

from cpt.config import method_label
from cpt.reporting.compare import finish_task_panels, general_bars, task_panels
from cpt.reporting.groups import Experiment, is_sequential, lr_family
from cpt.reporting.intervals import Estimate


def _colour(i: int, among: int = 10) -> str | tuple:
    """The i-th of `among` colours: matplotlib's ten, or twenty paired shades when more lines must stay apart."""
    return f"C{i % 10}" if among <= 10 else colormaps["tab20"](i % 20)


def _error(value: Estimate | None) -> float:
    return 0.0 if value is None or value.half_width is None else value.half_width


def _rows(experiment: Experiment) -> int:
    return max(len(run["accuracy_matrix"]) for run in experiment.runs)


def plot_experiment_matrices(experiments: list[Experiment], tasks: list[str]) -> Figure:
    """Each experiment's mean accuracy matrix, every cell with its 95% interval half-width underneath."""
    height = max(_rows(e) for e in experiments)
    columns = min(3, len(experiments))
    n_rows = math.ceil(len(experiments) / columns)
    fig = Figure(figsize=(columns * (0.85 * len(tasks) + 2.6) + 1, n_rows * (0.55 * height + 1.6) + 0.6),
                 layout="constrained")
    axes = fig.subplots(n_rows, columns, squeeze=False).ravel()
    for ax, e in zip(axes, experiments):
        cells = [[e.cell(row, task) for task in tasks] for row in range(_rows(e))]
        means = [[math.nan if c is None else c.mean for c in row] for row in cells]
        image = ax.imshow(means, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(cells):
            for j, cell in enumerate(row):
                if cell is None:
                    continue
                text = f"{cell.mean:.0f}" + ("" if cell.half_width is None else f"\n±{cell.half_width:.0f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if cell.mean < 60 else "black")
        stages = e.first["stages"]
        labels = ["base"] + ["all tasks" if len(s) > 1 else "+".join(s) for s in stages[: len(cells) - 1]]
        ax.set_xticks(range(len(tasks)), tasks, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(cells)), labels, fontsize=8)
        ax.set_title(f"{e.name} (n={e.n})\nAvgAcc {_format(e.estimate('avg_acc'))}   FM {_format(e.estimate('fm'))}",
                     fontsize=9)
    for ax in axes[len(experiments):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(experiments)]), label="mean accuracy (%)", fraction=0.02)
    return fig


def _format(value: Estimate | None) -> str:
    return "-" if value is None else value.format()


def plot_experiment_curves(experiments: list[Experiment], tasks: list[str]) -> Figure:
    """Each task's mean accuracy across the sequence with its 95% band; multitask experiments dashed at their
    final mean."""
    steps = max((len(e.first["stages"]) if is_sequential(e) else 1) for e in experiments)
    fig, axes = task_panels(tasks)
    colours = [_colour(i, len(experiments)) for i in range(len(experiments))]
    for ax, task in zip(axes, tasks):
        for i, e in enumerate(experiments):
            cells = [e.cell(row, task) for row in range(_rows(e))]
            if all(c is None for c in cells):
                continue
            if not is_sequential(e):
                final = next(c for c in reversed(cells) if c is not None)
                ax.plot([0, steps], [final.mean] * 2, "--", color=colours[i], label=e.name)
                ax.fill_between([0, steps], [final.mean - _error(final)] * 2, [final.mean + _error(final)] * 2,
                                color=colours[i], alpha=0.12)
                continue
            x = [k for k, c in enumerate(cells) if c is not None]
            mean = [cells[k].mean for k in x]
            ax.plot(x, mean, marker="o", markersize=3, color=colours[i], label=e.name)
            ax.fill_between(x, [m - _error(cells[k]) for m, k in zip(mean, x)],
                            [m + _error(cells[k]) for m, k in zip(mean, x)], color=colours[i], alpha=0.18)
    finish_task_panels(fig, axes, tasks, steps, [run for e in experiments for run in e.runs])
    return fig


def plot_experiment_general(experiments: list[Experiment], benchmarks: list[str]) -> Figure:
    """Per benchmark, each experiment's mean base (light) and final (solid) accuracy with 95% error bars."""
    bars = [[tuple(None if (value := e.estimate(f"{name}_{part}")) is None else (value.mean, value.half_width)
                   for part in ("base", "final")) for name in benchmarks] for e in experiments]
    return general_bars([e.name for e in experiments], benchmarks, bars,
                        "General benchmarks: base (light) and after the sequence (solid), means and 95% intervals")


def _lr_label(experiment: Experiment) -> str:
    lr = (experiment.config or {}).get("optim.lr")
    return "" if lr is None else f"lr {lr:g}"


def plot_stability_plasticity(experiments: list[Experiment], y_key: str, y_label: str) -> Figure | None:
    """x = mean learning on each new task (gain over the row before), y = `y_key`; one point per sequential
    experiment with its 95% interval on both axes. Experiments that differ only in the learning rate are joined
    by a line, in lr order. Points are numbered and named in a key beside the plot, where labels on the points
    would overlap (experiments of one method crowd together). None when no sequential experiment reports both."""
    points = [(e, e.estimate("gain"), e.estimate(y_key)) for e in experiments if is_sequential(e)]
    points = [(e, x, y) for e, x, y in points if x is not None and y is not None]
    if not points:
        return None
    # One key line per experiment, about 0.2 inch each: the figure grows with a study's experiments.
    fig = Figure(figsize=(12.5, max(6.0, 0.2 * len(points) + 1.2)), layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=[2.6, 1])
    methods = list(dict.fromkeys(e.first["method"] for e, _, _ in points))
    families: dict[tuple, list] = {}
    for e, x, y in points:
        families.setdefault(lr_family(e) or (e.name,), []).append((e, x, y))
    for family in families.values():
        if len(family) < 2:
            continue
        family.sort(key=lambda p: (p[0].config or {}).get("optim.lr") or 0)
        colour = _colour(methods.index(family[0][0].first["method"]))
        ax.plot([p[1].mean for p in family], [p[2].mean for p in family], "-", color=colour, alpha=0.4)
    key = []
    for number, (e, x, y) in enumerate(points, 1):
        colour = _colour(methods.index(e.first["method"]))
        marker = "o" if any(len(f) > 1 and e in [p[0] for p in f] for f in families.values()) else "s"
        ax.errorbar(x.mean, y.mean, xerr=_error(x) or None, yerr=_error(y) or None, fmt=marker, color=colour,
                    capsize=3, markersize=6)
        ax.annotate(str(number), (x.mean, y.mean), textcoords="offset points", xytext=(5, 3), fontsize=8,
                    color=colour, fontweight="bold")
        lr = _lr_label(e) if "optim.lr" not in e.name and "lr" not in e.name.split() else ""
        key.append((f"{number}  {e.name}" + (f" ({lr})" if lr else "") + f":  {x.mean:.1f}, {y.mean:.1f}",
                    colour))
    side.axis("off")
    for row, (text, colour) in enumerate(key):
        side.text(0, 1 - row / max(len(key), 24), text, color=colour, fontsize=8, va="top",
                  transform=side.transAxes)
    for method in methods:
        ax.plot([], [], "o", color=_colour(methods.index(method)), label=method_label(method))
    ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("learning: mean gain on each new task over the row before (points)")
    ax.set_ylabel(y_label)
    ax.set_title("Stability against plasticity (means over seeds, 95% intervals; lines join an lr grid)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return fig
