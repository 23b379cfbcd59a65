"""`python -m cpt compare RUN_DIR [RUN_DIR ...] [--out DIR]`: the study's runs side by side, as tables and figures
(cpt.eval.compare)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt.eval.compare import DEFAULT_OUT, format_comparison, format_markdown, load_runs, write_csv, write_figures


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpt compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="output_dir of a `python -m cpt fit` run")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where tables and figures go (default: {DEFAULT_OUT}/)")
    known = parser.parse_args(args)
    runs = load_runs(known.run_dirs)
    out = Path(known.out)
    out.mkdir(parents=True, exist_ok=True)
    print(format_comparison(runs))
    write_csv(runs, out / "comparison.csv")
    (out / "comparison.md").write_text(format_markdown(runs))
    write_figures(runs, out)
    print(f"\nTables and figures in {out}")
    return 0
