"""The primary comparisons as one figure: each difference with its 95% interval (thin) and 90% interval (thick)
against the band of its equivalence margin, and its Holm-adjusted verdict beside it. An interval inside the band is
"equivalent", one clear of 0 "different", one across a band edge with 0 inside it "not resolved"."""

from __future__ import annotations

from matplotlib.figure import Figure

from cpt.reporting.equivalence import PrimaryTest

VERDICT_COLOURS = {"different": "C3", "equivalent": "C2", "not resolved": "C7"}


def _colour(verdict: str) -> str:
    return next((colour for start, colour in VERDICT_COLOURS.items() if verdict.startswith(start)), "C0")


def plot_primary(tests: list[PrimaryTest]) -> Figure | None:
    """One row per (comparison, metric), top to bottom in the order declared; None without tests."""
    if not tests:
        return None
    fig = Figure(figsize=(10, 0.55 * len(tests) + 1.6), layout="constrained")
    ax = fig.subplots()
    for row, test in enumerate(tests):
        y = len(tests) - 1 - row
        ax.fill_betweenx([y - 0.4, y + 0.4], -test.margin, test.margin, color="C2", alpha=0.12, linewidth=0)
        colour = _colour(test.holm_verdict)
        for level, width in ((0.95, 1.2), (0.90, 4.0)):
            bounds = test.difference.interval(level)
            if bounds is not None:
                ax.plot(bounds, [y, y], color=colour, linewidth=width, solid_capstyle="butt")
        ax.plot([test.difference.mean], [y], "o", color="black", markersize=4)
        ax.annotate(f"{test.holm_verdict} ({test.difference.test})", (1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8, color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(tests)), [f"{t.a} - {t.b}: {t.metric}" for t in reversed(tests)], fontsize=8)
    ax.set_ylim(-0.6, len(tests) - 0.4)
    ax.set_xlabel("difference A - B (points); thin: 95% interval, thick: 90%; shaded: the equivalence margin")
    ax.set_title("Primary comparisons, with their Holm-adjusted verdicts", fontsize=10)
    return fig
