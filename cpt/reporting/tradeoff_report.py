"""The trade-off curves and forgetting at matched plasticity (cpt.reporting.tradeoff) as tables, a CSV file and a
figure: each family's curve of forgetting against plasticity, and every matched value with its interval and
verdict."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from cpt.atomic import replacing
from cpt.reporting.intervals import Estimate
from cpt.reporting.tradeoff import PLASTICITY, Comparison, Family

MEASURES = {"fm": "FM", "general_change": "general change"}
PLASTICITY_LABELS = dict(PLASTICITY)


def _label(key: str) -> str:
    return MEASURES.get(key) or PLASTICITY_LABELS.get(key) or key


def _interval(comparison_row, level: float) -> str:
    bounds = comparison_row.difference.interval(level)
    return "-" if bounds is None else f"[{bounds[0]:.1f}, {bounds[1]:.1f}]"


def grid_cells(found: list[Family]) -> tuple[list[str], list[list[str]]]:
    """Per family: its points and where its best AvgAcc lies (a grid brackets it when it is not at an end)."""
    body = []
    for family in found:
        best = family.best()
        values = ", ".join(f"{family.value(p):g}" for p in family.points)
        where = "-" if best is None else (f"{family.value(best[0]):g} ({best[0].estimate('avg_acc').format()}), "
                                          + ("inside the grid" if best[1] else "at its edge"))
        body.append([family.label, f"{family.key}: {values}", where])
    return ["family (experiments that differ in one key)", "points", "best AvgAcc at"], body


def matched_cells(comparisons: list[Comparison]) -> tuple[list[str], list[list[str]]]:
    header = ["A - B", "plasticity", "at", "measure", "A", "B", "A - B", "95% interval", "90% interval",
              "resamples reaching it (rest extrapolated)", "verdict (uncorrected)"]
    body = []
    for c in comparisons:
        for row in c.rows:
            body.append([f"{c.a.label} - {c.b.label}", _label(row.x_key), f"{row.x:.1f}", _label(row.y_key),
                         row.a.format(), row.b.format(), f"{row.difference.mean:+.1f}", _interval(row, 0.95),
                         _interval(row, 0.90), f"{100 * row.reached:.0f}%", row.verdict])
    return header, body


def matched_notes(comparisons: list[Comparison]) -> str:
    """What each comparison rests on: its seeds, its curves' points, the points left out, and, for a plasticity
    measure with nothing matched, why."""
    lines = ["At matched plasticity: each curve is a family's points on the seeds shown, in the key's order, rising "
             "without a break in learning up to the one that learns most; y is interpolated at a quarter, half and "
             "three quarters of the way through the two curves' common range of x; intervals from the resamples of "
             "the seeds, paired across both curves (Student's t on the bootstrap's standard error, scaled by "
             "sqrt(n/(n-1))); verdicts as the primary comparisons', against the same margins, not corrected"]
    for c in comparisons:
        curves = "; ".join(f"{family.label}: {', '.join(p.name for p in points) or 'none'}"
                           for family, points in c.curves.items())
        lines.append(f"{c.a.label} - {c.b.label}: seeds {', '.join(map(str, c.seeds))}; curves {curves}")
        if c.left_out:
            lines.append("  drawn but not on a curve (not run on all of these seeds): "
                         + ", ".join(p.name for p in c.left_out))
        for x_key, label in PLASTICITY:
            if x_key in c.reasons:
                lines.append(f"  {label}: nothing matched: {c.reasons[x_key]}")
    return "\n".join(lines)


def write_matched_csv(comparisons: list[Comparison], path: Path) -> None:
    with replacing(path) as staging, open(staging, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "plasticity", "x", "measure", "a_mean", "a_half_width", "b_mean", "b_half_width",
                         "difference", "low_95", "high_95", "low_90", "high_90", "seeds", "reached", "margin",
                         "verdict"])
        for c in comparisons:
            for row in c.rows:
                wide, narrow = row.difference.interval(0.95) or ("", ""), row.difference.interval(0.90) or ("", "")
                writer.writerow([c.a.label, c.b.label, row.x_key, row.x, row.y_key, row.a.mean,
                                 _blank(row.a.half_width), row.b.mean, _blank(row.b.half_width),
                                 row.difference.mean, *wide, *narrow, " ".join(map(str, c.seeds)), row.reached,
                                 _blank(row.margin), row.verdict])


def _blank(value) -> object:
    return "" if value is None else value


def _error(value: Estimate | None) -> float | None:
    return None if value is None or value.half_width is None else value.half_width


def _limits(values: list[tuple[float, float | None]]) -> tuple[float, float]:
    """Axis limits around mean +- half-width of each value, padded by a tenth."""
    low = min(mean - (half or 0.0) for mean, half in values)
    high = max(mean + (half or 0.0) for mean, half in values)
    pad = 0.1 * (high - low) or 1.0
    return low - pad, high + pad


def plot_tradeoff(found: list[Family], comparisons: list[Comparison], y_keys: list[str]) -> Figure | None:
    """One panel per (forgetting measure, plasticity measure): each family's points (means over their seeds, 95%
    intervals both ways) labelled with the key's value, the curve the comparison interpolates solid, the rest
    dotted, points left out of the curve hollow; the matched values of x as vertical lines. The panel frames the
    curves: a point far outside them (a collapsed run) is named in its corner instead of squeezing them. None
    without a family."""
    if not found:
        return None
    on_curve = {id(p) for c in comparisons for points in c.curves.values() for p in points}
    left_out = {id(p) for c in comparisons for p in c.left_out}
    matched = {(row.x_key, row.x) for c in comparisons for row in c.rows}
    fig = Figure(figsize=(12, 4.6 * len(y_keys)), layout="constrained")
    axes = fig.subplots(len(y_keys), len(PLASTICITY), squeeze=False)
    for i, y_key in enumerate(y_keys):
        for j, (x_key, x_label) in enumerate(PLASTICITY):
            ax = axes[i][j]
            framed, outside = [], []
            for k, family in enumerate(found):
                colour = f"C{k % 10}"
                points = [(p, p.estimate(x_key), p.estimate(y_key)) for p in family.points]
                points = [(p, x, y) for p, x, y in points if x is not None and y is not None]
                curve = [(x.mean, y.mean) for p, x, y in points if id(p) in on_curve]
                if len(curve) > 1:
                    ax.plot(*zip(*curve), "-", color=colour, alpha=0.7)
                ax.plot([x.mean for _, x, _ in points], [y.mean for _, _, y in points], ":", color=colour, alpha=0.5)
                for p, x, y in points:
                    ax.errorbar(x.mean, y.mean, xerr=_error(x), yerr=_error(y), fmt="o", color=colour, capsize=3,
                                markerfacecolor="white" if id(p) in left_out else colour, markersize=6)
                    ax.annotate(f"{family.value(p):g}", (x.mean, y.mean), textcoords="offset points", xytext=(5, 4),
                                fontsize=7, color=colour)
                    (framed if id(p) in on_curve or not on_curve else outside).append((p, x, y))
                ax.plot([], [], "o-", color=colour, label=family.label)
            if framed:
                xlim, ylim = (_limits([(v.mean, _error(v)) for v in values])
                              for values in zip(*[(x, y) for _, x, y in framed]))
                far = [f"{p.name} ({x.mean:.1f}, {y.mean:.1f})" for p, x, y in outside
                       if not (xlim[0] <= x.mean <= xlim[1] and ylim[0] <= y.mean <= ylim[1])]
                if far:  # widen to the points that still fit near the curves, name the rest
                    ax.text(0.01, 0.01, "off the panel: " + "; ".join(far), transform=ax.transAxes, fontsize=7,
                            va="bottom", color="grey")
                ax.set_xlim(*xlim)
                ax.set_ylim(*ylim)
            for key, x in sorted(matched):
                if key == x_key:
                    ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
            ax.axhline(0, color="grey", linewidth=0.6, linestyle=":")
            ax.set_xlabel(f"plasticity: {x_label} (points)")
            ax.set_ylabel(f"{_label(y_key)} (points)")
            if i == 0 and j == 0:
                ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Forgetting against plasticity along each family (means over seeds, 95% intervals; labels: the "
                 "key's value; dashed: the matched values; hollow: not on the curve, fewer seeds)", fontsize=10)
    return fig
