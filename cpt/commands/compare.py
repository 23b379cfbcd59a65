"""`python -m cpt compare RUN_DIR [RUN_DIR ...] [--out DIR] [--primary A B --margin fm=3 ...] [--diff A B ...]`:
the study's runs side by side, as tables and figures; runs of one experiment (its seeds) grouped, each number with
its 95% interval.

Runs of the same experiment (equal configs but for the seed) become one row: the mean and the half-width of the
95% interval of every metric and of every cell of the accuracy matrix. `--primary A B` (with `--margin METRIC=M`)
tests experiment A against B on each metric with a margin: different, equivalent within the margin, or not
resolved, also after Holm's correction over all primary tests (cpt.reporting.equivalence). `--diff A B` reports A
less B on every metric, exploratory: the interval and whether it excludes 0, paired over the seeds the two share.
"""

from __future__ import annotations

import math
from pathlib import Path

from cpt import flags
from cpt.atomic import write_text
from cpt.errors import ConfigError
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
    check_comparisons,
    difference_cells,
    differences,
    find,
    footnote,
    mechanism_cells,
    primary,
    primary_cells,
    primary_note,
    summary_cells,
    task_cells,
    write_differences_csv,
    write_experiments_csv,
    write_primary_csv,
)
from cpt.reporting.groups import Experiment, group_runs
from cpt.reporting.intervals import Difference
from cpt.reporting.mechanism_figures import plot_fisher_update, plot_forgetting_against_kl, plot_update_sparsity
from cpt.reporting.mechanisms import kl_relation, proposition, stage_points, write_points_csv
from cpt.reporting.primary_figure import plot_primary
from cpt.reporting.tradeoff import matched_plasticity
from cpt.reporting.tradeoff_report import grid_cells, matched_cells, matched_notes, plot_tradeoff, write_matched_csv

# What the trade-off curves put against plasticity (cpt.reporting.tradeoff).
TRADEOFF_MEASURES = ("fm", "general_change")
STABILITY_FIGURES = {"stability_plasticity.png": ("fm", "forgetting: FM (points; 0 = none, negative is worse)"),
                     "stability_plasticity_general.png": ("general_change",
                                                          "general set: final - base accuracy (points)")}


def kl_relation_cells(points: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    rows = kl_relation(points)
    if not rows:
        return None
    header = ["drop per stage ~ KL on the new task", "runs", "stages", "slope", "R²"]
    return header, [[label, str(runs), str(n), "-" if fit is None else f"{fit.slope:.3g}",
                     "-" if fit is None or fit.r2 is None else f"{fit.r2:.2f}"] for label, runs, n, fit in rows]


def _times(log: Difference) -> str:
    """A difference of logs as the ratio it stands for, with its 95% interval."""
    bounds = log.interval()
    return f"{math.exp(log.mean):.3g}" + ("" if bounds is None else
                                          f" [{math.exp(bounds[0]):.3g}, {math.exp(bounds[1]):.3g}]")


def proposition_cells(pairs: list[tuple[Experiment, Experiment]]) -> tuple[list[str], list[list[str]]] | None:
    """For each compared pair of an RFT experiment and an SFT one: the study's proposition (RFT's policy gradient
    is scaled by the reward variance) tested."""
    body = []
    for a, b in pairs:
        if (a.first["method"], b.first["method"]) != ("rft", "sft"):
            continue
        found = proposition(a.by_seed("fisher_update"), b.by_seed("fisher_update"), a.by_seed("reward_var"))
        if found is not None:
            body.append([f"{a.name} / {b.name}", _times(found.measured), f"{found.predicted:.3g}",
                         _times(found.against_prediction), found.measured.test, found.verdict])
    if not body:
        return None
    return (["Fisher-weighted update, A / B", "measured (95%)", "predicted: Var[r] of A", "measured / predicted (95%)",
             "test", "verdict"], body)


def report(run_dirs: list[str | Path], out: str | Path, diffs: list[tuple[str, str]] = (),
           primaries: list[tuple[str, str]] = (), margins: dict[str, float] | None = None) -> str:
    """Reads the runs, writes the tables and figures to `out` and returns the text to print."""
    check_comparisons(list(primaries), list(diffs), dict(margins or {}))
    runs = load_runs(run_dirs)
    out = Path(out)
    rows, benchmarks, tasks = comparison_rows(runs), benchmark_names(runs), all_tasks(runs)
    experiments = group_runs(runs, rows, benchmarks)
    if primaries and not margins:
        raise ConfigError("primary comparisons need a margin per metric to test equivalence against "
                          "(--margin fm=3, or compare.margins in the study file)")
    tests = primary(experiments, list(primaries), dict(margins or {}))
    # The primary pairs' other numbers are exploratory too.
    pairs = [(find(experiments, a), find(experiments, b)) for a, b in dict.fromkeys([*primaries, *diffs])]
    repeated = any(e.n > 1 for e in experiments)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(runs, out / "comparison.csv")
    write_experiments_csv(experiments, benchmarks, tasks, out / "experiments.csv")
    if repeated:
        tables = [summary_cells(experiments, benchmarks), task_cells(experiments, tasks),
                  task_cells(experiments, tasks, "forget"), task_cells(experiments, tasks, "before")]
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
        for cells in (mechanism_cells(experiments), kl_relation_cells(points), proposition_cells(pairs)):
            if cells is not None:
                text += f"\n\n{text_table(*cells)}"
                markdown += f"\n{markdown_table(*cells)}\n"
    if tests:
        section = "Primary comparisons (declared with their margins)"
        cells = primary_cells(tests)
        text += f"\n\n{section}\n{text_table(*cells)}\n{primary_note(tests)}"
        markdown += f"\n{section}\n\n{markdown_table(*cells)}\n\n{primary_note(tests)}\n"
        write_primary_csv(tests, out / "primary.csv")
        save_figures({"primary_comparisons.png": plot_primary(tests)}, out)
    # Families that vary one key (a learning-rate grid): their curves, and forgetting at matched plasticity.
    y_keys = {key: (margins or {}).get(key) for key in TRADEOFF_MEASURES}
    found, matched = matched_plasticity(experiments, y_keys, list(primaries))
    if found:
        section = "Grids (experiments that differ in one key) and where each one's best AvgAcc lies"
        tables = [(section, grid_cells(found))]
        if any(c.rows for c in matched):
            tables.append(("Forgetting at matched plasticity", matched_cells(matched)))
            write_matched_csv(matched, out / "matched_plasticity.csv")
        for title, cells in tables:
            text += f"\n\n{title}\n{text_table(*cells)}"
            markdown += f"\n{title}\n\n{markdown_table(*cells)}\n"
        if matched:
            text += f"\n{matched_notes(matched)}"
            markdown += f"\n{matched_notes(matched)}\n"
        save_figures({"tradeoff_curves.png": plot_tradeoff(found, matched, list(y_keys))}, out)
    compared = [(a, b, differences(a, b, benchmarks, tasks)) for a, b in pairs]
    for a, b, diff_rows in compared:
        section = (f"{a.name} - {b.name}: exploratory (95% interval, not corrected for the number of differences; "
                   "paired over the seeds both have, Welch's where they share fewer than two; against the primary "
                   "margins, uncorrected)")
        cells = difference_cells(a, b, diff_rows, margins)
        text += f"\n\n{section}\n{text_table(*cells)}"
        markdown += f"\n{section}\n\n{markdown_table(*cells)}\n"
    if compared:
        write_differences_csv(compared, out / "differences.csv")
    write_text(out / "comparison.md", markdown)
    return text


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=flags.INPUT, nargs="*", metavar="RUN_DIR",
                        help="output_dir of a `python -m cpt fit` run")
    parser.add_argument("--out", type=flags.OUTPUT_DIR, default=DEFAULT_OUT,
                        help=f"where tables and figures go (default: {DEFAULT_OUT}/)")
    parser.add_argument("--primary", type=flags.TEXT, nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="a primary comparison: A less B tested for a difference and for equivalence within "
                             "each --margin, Holm-adjusted over all of them (repeatable)")
    parser.add_argument("--margin", action="append", default=[], type=flags.Setting("(0, inf)"),
                        metavar="METRIC=M",
                        help="the equivalence margin of a metric for the primary comparisons, e.g. fm=3 (points; "
                             "repeatable)")
    parser.add_argument("--diff", type=flags.TEXT, nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="report experiment A less experiment B, exploratory, with its 95%% interval "
                             "(repeatable)")
    return parser


def main(args: list[str]) -> int:
    known = flags.parse(build_parser(), args)
    print(report(known.run_dirs, known.out, [tuple(pair) for pair in known.diff],
                 [tuple(pair) for pair in known.primary], dict(known.margin)))
    print(f"\nTables and figures in {known.out}")
    return 0
