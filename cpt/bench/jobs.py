"""`python -m cpt bench jobs`: runs of a study side by side (`cpt study --jobs N`) against one run at a time.

In every round, in turn: one `cpt fit` on all the cores, then N of them at once with the cores shared out
(OMP_NUM_THREADS, as `cpt study --jobs N` sets it), seeds 0..N-1. A side's figure is the wall time per run (for
N at once, their wall time over N), so the ratio one / N-at-once is how many more runs an hour the study finishes.
Each round also says whether seed 0 gave the same accuracy matrix both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpt.bench.report import RoundsTable, machine_line, say, versions_line
from cpt.bench.rounds import SideRun, alternate
from cpt.config import CONFIGS

# A short RFT run: two tasks of 20 steps, 50 evaluation examples each; the user's key=value come after.
JOBS_BENCH_ARGS = [str(CONFIGS / "rft.yaml"), "tasks=[count,colour]", "steps_per_task=20", "data.eval_size=50",
                   "eval.general=false", "save_checkpoints=false", "logger=none", "trainer.enable_progress_bar=false"]


def timed_fits(args: list[str], count: int, threads: int, out: Path) -> tuple[float, list]:
    """Seconds for `count` `cpt fit` processes run at once with `threads` threads each (seeds 0..count-1), and
    seed 0's accuracy matrix."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "cpt", "fit", *args, f"seed={seed}",
                                   f"output_dir={out / f'seed{seed}'}", "overwrite=true"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for seed in range(count)]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a benchmark run failed (exit {process.returncode}):\n{err[-2000:]}")
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "seed0" / "results.json").read_text())["accuracy_matrix"]


def bench_jobs(overrides: list[str], jobs: int = 2, rounds: int = 3, cores: int | None = None) -> dict:
    """Runs the rounds, printing each as it ends; returns the rounds and the summary ratio."""
    if jobs < 2:
        raise SystemExit(f"--jobs {jobs}: compare 2 or more runs at once with one at a time")
    cores = cores or os.cpu_count() or 1
    args = [*JOBS_BENCH_ARGS, *overrides]
    say(f"cpt fit {' '.join(args)}\none run on {cores} threads, then {jobs} runs at once on "
        f"{max(1, cores // jobs)} each; s/run: wall time per run\n{machine_line()}\n{versions_line()}\n")
    table = RoundsTable([("one", "one at a time"), ("together", f"{jobs} at once")],
                        [("throughput", "one", "together")], unit="s/run")
    matrices: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def side(name: str, count: int, threads: int):
            def run() -> SideRun:
                seconds, matrices[name] = timed_fits(args, count, threads, Path(tmp) / name)
                return SideRun([seconds / count])
            return run

        def show(index: int, rnd) -> None:
            same = "the same" if matrices["one"] == matrices["together"] else "DIFFERENT"
            say(f"{table.row(index, rnd)}   seed 0's matrix: {same}")

        say(table.header())
        done = alternate({"one": side("one", 1, cores), "together": side("together", jobs, max(1, cores // jobs))},
                         rounds, on_round=show)
    say(table.footer(done))
    summary = dict(table.summary_ratios(done))["throughput"]
    say(f"runs per hour, {jobs} at once / one at a time: {summary.median:.2f}x, median of {rounds} rounds (range "
        f"{summary.low:.2f}x to {summary.high:.2f}x)")
    return {"rounds": done, "throughput": summary}
