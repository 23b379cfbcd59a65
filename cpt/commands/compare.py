"""`python -m cpt compare RUN_DIR [RUN_DIR ...] [--out DIR] [--diff A B ...]`: the study's runs side by side, as
tables and figures; runs of one experiment (its seeds) grouped, each number with its 95% interval.

Runs of the same experiment (equal configs but for the seed) become one row: the mean and the half-width of the
95% interval of every metric and of every cell of the accuracy matrix. `--diff A B` reports experiment A less
experiment B on every metric, with Welch's 95% interval and whether the difference exceeds its noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt.atomic import write_text
from cpt.reporting.compare import (
    DEFAULT_OUT,
    all_tasks,
    benchmark_names,
    comparison_rows,
    format_comparison,
    format_markdown,
    load_runs,
    markdown_table,
    save_figures,
    text_table,
    write_csv,
    write_figures,
)
from cpt.reporting.group_figures import (
    plot_experiment_curves,
    plot_experiment_general,
    plot_experiment_matrices,
    plot_stability_plasticity,
)
from cpt.reporting.group_report import (
    difference_cells,
    differences,
    find,
    footnote,
    mechanism_cells,
    summary_cells,
    task_cells,
    write_differences_csv,
    write_experiments_csv,
)
from cpt.reporting.groups import group_runs
from cpt.reporting.mechanism_figures import plot_fisher_update, plot_forgetting_against_kl, plot_update_sparsity
from cpt.reporting.mechanisms import stage_points, write_points_csv

STABILITY_FIGURES = {"stability_plasticity.png": ("fm", "forgetting: FM (points; 0 = none, negative is worse)"),
                     "stability_plasticity_general.png": ("general_change",
                                                          "general set: final - base accuracy (points)")}


def report(run_dirs: list[str | Path], out: str | Path, diffs: list[tuple[str, str]] = ()) -> str:
    """Reads the runs, writes the tables and figures to `out` and returns the text to print."""
    runs = load_runs(run_dirs)
    out = Path(out)
    rows, benchmarks, tasks = comparison_rows(runs), benchmark_names(runs), all_tasks(runs)
    experiments = group_runs(runs, rows, benchmarks)
    pairs = [(find(experiments, a), find(experiments, b)) for a, b in diffs]
    repeated = any(e.n > 1 for e in experiments)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(runs, out / "comparison.csv")
    write_experiments_csv(experiments, benchmarks, tasks, out / "experiments.csv")
    if repeated:
        tables = [summary_cells(experiments, benchmarks), task_cells(experiments, tasks),
                  task_cells(experiments, tasks, "forget")]
        text = "\n\n".join([*(text_table(*t) for t in tables), footnote(experiments)])
        markdown = "\n\n".join([*(markdown_table(*t) for t in tables), footnote(experiments)]) + "\n"
        figures = {"compare_matrices.png": plot_experiment_matrices(experiments, tasks),
                   "compare_task_curves.png": plot_experiment_curves(experiments, tasks),
                   "compare_general.png": plot_experiment_general(experiments, benchmarks)}
        save_figures(figures, out)
    else:
        text, markdown = format_comparison(runs), format_markdown(runs)
        write_figures(runs, out)
    plane = {name: plot_stability_plasticity(experiments, key, label)
             for name, (key, label) in STABILITY_FIGURES.items()}
    save_figures({name: fig for name, fig in plane.items() if fig is not None}, out)
    points = stage_points(runs)
    if points:  # runs with analysis.enabled=true: the competing explanations side by side
        write_points_csv(points, out / "mechanisms.csv")
        mechanisms = {"mechanisms_forgetting_kl.png": plot_forgetting_against_kl(points),
                      "mechanisms_fisher_update.png": plot_fisher_update(experiments),
                      "mechanisms_sparsity.png": plot_update_sparsity(experiments)}
        save_figures({name: fig for name, fig in mechanisms.items() if fig is not None}, out)
        cells = mechanism_cells(experiments)
        if cells is not None:
            text += f"\n\n{text_table(*cells)}"
            markdown += f"\n{markdown_table(*cells)}\n"
    compared = [(a, b, differences(a, b, benchmarks, tasks)) for a, b in pairs]
    for a, b, diff_rows in compared:
        section = f"{a.name} - {b.name} (Welch's 95% interval; beyond noise when it excludes 0)"
        cells = difference_cells(a, b, diff_rows)
        text += f"\n\n{section}\n{text_table(*cells)}"
        markdown += f"\n{section}\n\n{markdown_table(*cells)}\n"
    if compared:
        write_differences_csv(compared, out / "differences.csv")
    write_text(out / "comparison.md", markdown)
    return text


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpt compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="output_dir of a `python -m cpt fit` run")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where tables and figures go (default: {DEFAULT_OUT}/)")
    parser.add_argument("--diff", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="report experiment A less experiment B, with its 95%% interval (repeatable)")
    known = parser.parse_args(args)
    print(report(known.run_dirs, known.out, [tuple(pair) for pair in known.diff]))
    print(f"\nTables and figures in {known.out}")
    return 0
