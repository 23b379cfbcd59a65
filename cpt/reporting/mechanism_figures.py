"""Figures of the competing explanations across runs (`cpt compare` when runs recorded analysis.json): forgetting
against the KL on the new task with fitted lines, the Fisher-weighted update against the reward variance, and the
share of parameters each experiment's updates moved."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cpt.config import method_label
from cpt.reporting.groups import Experiment
from cpt.reporting.mechanisms import Fit, fit_line, stage_points


def _colours(points: list[dict]) -> dict[str, str]:
    methods = list(dict.fromkeys(p["method"] for p in points))
    return {method: f"C{i % 10}" for i, method in enumerate(methods)}


def _fit_label(name: str, fit: Fit | None) -> str:
    if fit is None:
        return f"{name}: no line (fewer than two distinct x)"
    r2 = "-" if fit.r2 is None else f"{fit.r2:.2f}"
    return f"{name}: R² {r2}, slope {fit.slope:.3g} (n={fit.n})"


def _draw_fit(ax, fit: Fit | None, xs: list[float], **style) -> None:
    if fit is not None:  # as a curve of many points, so that it is right on a symlog axis too
        low, high = min(xs), max(xs)
        line = [low + (high - low) * k / 100 for k in range(101)]
        ax.plot(line, [fit.slope * x + fit.intercept for x in line], **style)


def plot_forgetting_against_kl(points: list[dict]) -> Figure | None:
    """RL's Razor: each stage after the first of every run at x = KL(base || model) on the new task's prompts,
    y = the drop it caused on the earlier tasks; a least-squares line with R^2 per method and over all.
    None when no stage has both."""
    shown = [p for p in points if p["drop"] is not None and p["kl_new_task"] is not None]
    if not shown:
        return None
    colours = _colours(shown)
    fig = Figure(figsize=(8.5, 6), layout="constrained")
    ax = fig.subplots()
    for method, colour in colours.items():
        mine = [p for p in shown if p["method"] == method]
        xs, ys = [p["kl_new_task"] for p in mine], [p["drop"] for p in mine]
        fit = fit_line(xs, ys)
        ax.scatter(xs, ys, color=colour, s=22, alpha=0.75, label=_fit_label(method_label(method), fit))
        _draw_fit(ax, fit, xs, color=colour, linewidth=1.5)
    xs, ys = [p["kl_new_task"] for p in shown], [p["drop"] for p in shown]
    fit = fit_line(xs, ys)
    _draw_fit(ax, fit, xs, color="black", linestyle="--", linewidth=1.2, label=_fit_label("all runs", fit))
    ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    kl = sorted(xs)
    wide = kl[-1] > 10 * max(kl[len(kl) // 2], 1e-3)  # a collapsed run's KL would squeeze all others to the left
    if wide:
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(left=0)
    ax.set_xlabel("KL(base || model) on the new task's prompts at the stage's end (nats per completion"
                  + ("; linear below 0.1, log above)" if wide else ")"))
    ax.set_ylabel("drop the stage caused: earlier tasks' mean accuracy lost (points)")
    ax.set_title("Does the KL on the new task predict forgetting? (one point per run and stage after the first)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_fisher_update(experiments: list[Experiment]) -> Figure | None:
    """The study's proposition (RFT's update weighs on earlier tasks about Var[r] times as much as SFT's). Left:
    every stage's update weighed by the earlier tasks' Fisher, per experiment (log scale; bars: means), with the
    experiment's mean reward variance. Right: the same against the stage's reward variance, for the methods that
    have one. None when no stage recorded it."""
    by_experiment = [(e, [p for p in stage_points(e.runs) if p["fisher_update"] is not None and p["fisher_update"] > 0])
                     for e in experiments]
    by_experiment = [(e, points) for e, points in by_experiment if points]
    if not by_experiment:
        return None
    colours = _colours([p for _, points in by_experiment for p in points])
    fig = Figure(figsize=(max(13.0, 1.2 * len(by_experiment) + 7), 5.4), layout="constrained")
    per_experiment, against_var = fig.subplots(1, 2, width_ratios=[max(1.0, len(by_experiment) / 5), 1])
    labels = []
    for i, (e, points) in enumerate(by_experiment):
        values = [p["fisher_update"] for p in points]
        colour = colours[points[0]["method"]]
        spread = [i + 0.25 * ((k * 0.618) % 1 - 0.5) for k in range(len(values))]  # spread, not random
        per_experiment.scatter(spread, values, color=colour, s=14, alpha=0.7)
        per_experiment.plot([i - 0.3, i + 0.3], [sum(values) / len(values)] * 2, color=colour, linewidth=2)
        variance = e.estimate("reward_var")  # the mechanisms table's: every stage, not only those with an update
        labels.append(e.name + (f"\nVar[r] {variance.mean:.3g}" if variance else ""))
    per_experiment.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    per_experiment.set_yscale("log")
    per_experiment.set_ylabel("dθᵀ F_prev dθ (earlier tasks' diagonal Fisher)")
    per_experiment.set_title("Fisher-weighted update per stage (bars: means)\nthe proposition: RFT's ≈ Var[r] × "
                             "SFT's at a matched update", fontsize=10)
    for method, colour in colours.items():
        per_experiment.scatter([], [], color=colour, label=method_label(method))
    per_experiment.legend(fontsize=8)

    rewarded = [p for _, points in by_experiment for p in points if p["reward_var"] is not None]
    for method, colour in colours.items():
        mine = [p for p in rewarded if p["method"] == method]
        if mine:
            xs, ys = [p["reward_var"] for p in mine], [p["fisher_update"] for p in mine]
            against_var.scatter(xs, ys, color=colour, s=14, alpha=0.7, label=method_label(method))
    if rewarded:
        against_var.set_yscale("log")
        against_var.legend(fontsize=8)
    else:
        against_var.text(0.5, 0.5, "no reward variance (SFT runs only)", ha="center", va="center",
                         transform=against_var.transAxes)
    against_var.set_xlabel("the stage's mean within-group reward variance")
    against_var.set_ylabel("dθᵀ F_prev dθ")
    against_var.set_title("Against the reward variance\n(one point per run and stage after the first)", fontsize=10)
    return fig


def plot_update_sparsity(experiments: list[Experiment]) -> Figure | None:
    """Per experiment, the share of parameters whose bfloat16 value its stages changed (mean over stages, then over
    seeds, with the 95% interval). None when no experiment recorded it."""
    shown = [(e, e.estimate("updated_share")) for e in experiments]
    shown = [(e, value) for e, value in shown if value is not None]
    if not shown:
        return None
    methods = list(dict.fromkeys(e.first["method"] for e, _ in shown))
    fig = Figure(figsize=(max(6.0, 1.1 * len(shown) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (e, value) in enumerate(shown):
        error = value.half_width if value.half_width is not None and not math.isnan(value.half_width) else None
        ax.bar(i, value.mean, yerr=error, capsize=3, color=f"C{methods.index(e.first['method']) % 10}")
        ax.annotate(f"{value.mean:.1f}", (i, value.mean), textcoords="offset points", xytext=(0, 3), ha="center",
                    fontsize=7)
    ax.set_xticks(range(len(shown)), [e.name for e, _ in shown], rotation=30, ha="right", fontsize=8)
    ax.legend(handles=[Patch(color=f"C{i % 10}", label=method_label(method)) for i, method in enumerate(methods)],
              fontsize=8)
    ax.set_ylabel("parameters whose bfloat16 value a stage changed (%)")
    ax.set_ylim(0, 105)
    ax.set_title("How sparse is the update? (mean over stages 2 on and seeds, 95% interval)", fontsize=10)
    return fig
