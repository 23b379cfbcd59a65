"""The results a researcher reads: results.json, accuracy_matrix.csv, accuracy_matrix.png, and a printed table.

Written after every evaluation row, so a run that stops early keeps every row it finished.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from cpt.atomic import replacing, write_json
from cpt.eval.metrics import avg_acc, backward_transfer, forgetting

MATRIX_PNG = "accuracy_matrix.png"


def summarize(tasks: list[str], rows: list[list[float]], general: list[float | None],
              chance: list[float | None], stages: list[list[str]] | None = None,
              benchmarks: dict[str, list[dict | None]] | None = None, **info) -> dict:
    """results.json's content from the rows evaluated so far (row 0 = base model, row s = after stage s).

    Sequential runs (one task per stage) get FM and BWT; a multitask run (one stage) has no earlier task to forget,
    so they are null. `info` adds fields as they are (name, method, schedule, wall_time_s, kept_fraction).
    """
    stages = stages if stages is not None else [[t] for t in tasks]
    sequential = bool(stages) and all(len(stage) == 1 for stage in stages)  # no stages: `cpt eval`'s one row
    seen = [0]  # tasks trained after each row, in sequence order
    for stage in stages:
        seen.append(seen[-1] + len(stage))
    per_row = {"avg_acc": [], "fm": [], "bwt": []}
    for t in range(len(rows)):
        per_row["avg_acc"].append(avg_acc(rows, t, seen[t]))
        per_row["fm"].append(forgetting(rows, t) if sequential else None)
        per_row["bwt"].append(backward_transfer(rows, t) if sequential else None)
    return {
        **info,
        "tasks": tasks,
        "stages": stages,
        "accuracy_matrix": rows,
        "complete": len(rows) == len(stages) + 1,
        "avg_acc": per_row["avg_acc"][-1],
        "fm": per_row["fm"][-1],
        "bwt": per_row["bwt"][-1],
        "general": general,
        "benchmarks": benchmarks or {},
        "chance": chance,
        "per_row": per_row,
    }


def write_results(run_dir: Path, summary: dict) -> None:
    write_json(run_dir / "results.json", summary)
    with replacing(run_dir / "accuracy_matrix.csv") as staging, open(staging, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["after", *summary["tasks"], "general"])
        for t, row in enumerate(summary["accuracy_matrix"]):
            label = "base" if t == 0 else stage_label(summary, t)
            general = summary["general"][t] if t < len(summary["general"]) else None
            writer.writerow([label, *(f"{v:.2f}" for v in row), "" if general is None else f"{general:.2f}"])
    plot_accuracy_matrix(summary, run_dir / MATRIX_PNG)


def plot_accuracy_matrix(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, rows = summary["tasks"], summary["accuracy_matrix"]
    columns = list(tasks)
    general = summary["general"][: len(rows)]
    if any(g is not None for g in general):  # the general set as a last column, set apart by a white line
        columns.append("general")
        rows = [[*row, math.nan if g is None else g] for row, g in zip(rows, general)]
    labels = ["base"] + [f"after {t}: {stage_label(summary, t)}" for t in range(1, len(rows))]
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 3, 0.55 * len(rows) + 2))
    image = ax.imshow(rows, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for t, row in enumerate(rows):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, t, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black",
                        fontsize=9)
    if len(columns) > len(tasks):
        ax.axvline(len(tasks) - 0.5, color="white", linewidth=4)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel("evaluated on")
    ax.set_title(f"Accuracy (%)   {headline(summary)}")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    with replacing(path) as staging:
        fig.savefig(staging, dpi=110, format="png")
    plt.close(fig)


def stage_label(summary: dict, row: int) -> str:
    """What row `row` (>= 1) of the matrix comes after: the stage's task, or `multitask`."""
    stage = summary.get("stages", [[t] for t in summary["tasks"]])[row - 1]
    return stage[0] if len(stage) == 1 else "multitask"


def headline(summary: dict) -> str:
    parts = [f"AvgAcc {summary['avg_acc']:.1f}"]
    parts += [f"{key.upper()} {summary[key]:.1f}" for key in ("fm", "bwt") if summary[key] is not None]
    return "   ".join(parts)


def format_table(summary: dict, first_row: str = "base") -> str:
    """The matrix as printed at the end of a run; `first_row` labels row 0 (`cpt eval`'s one row: eval)."""
    tasks, rows = summary["tasks"], summary["accuracy_matrix"]
    width = 2 + max(7, *(len(t) for t in tasks))  # at least two spaces between columns
    head = f"{'after':<14}" + "".join(f"{t:>{width}}" for t in tasks) + f"{'general':>{width}}{'AvgAcc':>{width}}"
    lines = [head, "-" * len(head)]
    for t, row in enumerate(rows):
        label = first_row if t == 0 else f"{t}:{stage_label(summary, t)}"
        general = summary["general"][t] if t < len(summary["general"]) else None
        cells = "".join(f"{v:>{width}.1f}" for v in row)
        g = f"{general:>{width}.1f}" if general is not None and not math.isnan(general) else f"{'-':>{width}}"
        lines.append(f"{label:<14}{cells}{g}{summary['per_row']['avg_acc'][t]:>{width}.1f}")
    if summary["chance"] and any(c is not None for c in summary["chance"]):
        lines.append(f"{'chance':<14}" + "".join(f"{c:>{width}.1f}" if c is not None else f"{'-':>{width}}"
                                                 for c in summary["chance"]))
    for name, scores in summary.get("benchmarks", {}).items():
        if name != "general" and any(scores):
            lines.append(f"{name}: " + "  ".join("-" if s is None else f"{s['accuracy']:.1f}" for s in scores))
    lines.append(headline(summary) + ("" if summary["complete"] else "   (incomplete run)"))
    return "\n".join(lines)
