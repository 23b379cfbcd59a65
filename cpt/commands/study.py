"""`python -m cpt study STUDY.yaml [--jobs N] [--dry-run]`: every (experiment, seed) run of a study, then their
comparison.

Finished runs are skipped and stopped ones resumed, so the same command continues a study that was stopped
(Ctrl-C or SIGTERM, which stop the runs going too; a crash; a time limit) where it was. Each run is its own
`python -m cpt fit` process; its progress bar names the experiment, the seed and the task. With --jobs N, N runs
go at once: the CPU cores are shared out (OMP_NUM_THREADS) and, on a machine with GPUs, each run gets one
(CUDA_VISIBLE_DEVICES), unless those are set already; each run's output then goes to <output_dir>/logs/ instead
of the console. At the end `cpt compare` groups the seeds of every experiment and writes the tables and figures,
with 95% intervals, to <output_dir>/compare/. (cpt.study has the file's format.)
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from cpt import flags
from cpt.atomic import write_json
from cpt.commands.compare import report
from cpt.errors import ConfigError
from cpt.run_files import read_json
from cpt.study import PlannedRun, Study, changed_keys, load_study, plan, state

ACTION = {"done": "finished, skipped", "stopped": "resuming after its last saved stage",
          "started": "stopped before its first saved stage: starting again", "new": "starting"}


def fit_args(run: PlannedRun, run_state: str) -> list[str]:
    """A resumed run repeats the planned arguments (the saved config must match them) with resume=true; one that
    stopped before saving a stage replaces what it left."""
    extra = {"stopped": ["resume=true"], "started": ["overwrite=true"]}.get(run_state, [])
    return [*run.args, *extra]


def run_environment(slot: int, jobs: int) -> dict[str, str]:
    """The environment of the run in `slot` (0..jobs-1) while `jobs` runs go at once: the CPU cores shared out
    and one GPU per slot where there are GPUs, each unless the caller's environment sets it."""
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        gpus = torch.cuda.device_count()
        if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    return env


@dataclass
class Running:
    """A run's `cpt fit` process, in a slot."""

    number: int  # its place in the plan, from 1
    run: PlannedRun
    process: subprocess.Popen
    log: IO | None  # where its output goes with --jobs above 1
    started: float


def log_path(study: Study, run: PlannedRun) -> Path:
    """Where a run's output goes with --jobs above 1."""
    return study.output_dir / "logs" / f"{run.experiment.key}-seed{run.seed}.log"


def start(number: int, run: PlannedRun, run_state: str, slot: int, jobs: int, study: Study) -> Running:
    """The run's `cpt fit` process: in the foreground with one job, else quiet with its output in a log file."""
    args = fit_args(run, run_state)
    log = None
    if jobs > 1:
        log_path(study, run).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path(study, run), "a")
        args.append("trainer.enable_progress_bar=false")  # N bars in one console would garble each other
    process = subprocess.Popen([sys.executable, "-m", "cpt", "fit", *args], env=run_environment(slot, jobs),
                               stdout=log, stderr=subprocess.STDOUT if log else None)
    return Running(number, run, process, log, time.monotonic())


def run_all(study: Study, runs: list[PlannedRun], jobs: int) -> list[PlannedRun]:
    """Every run not finished, `jobs` at a time in the plan's order; returns those that failed. Ctrl-C stops the
    runs going (they keep what they saved) and is raised again."""
    pending = list(enumerate(runs, 1))
    running: dict[int, Running] = {}  # by slot
    failed = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                number, run = pending.pop(0)
                run_state = state(run)
                where = str(run.directory) + (f"; log {log_path(study, run)}" if jobs > 1 and run_state != "done"
                                              else "")
                print(f"\n[{number}/{len(runs)}] {run.label}: {ACTION[run_state]} ({where})", flush=True)
                if run_state != "done":
                    slot = min(set(range(jobs)) - set(running))
                    running[slot] = start(number, run, run_state, slot, jobs, study)
            time.sleep(0.5 if jobs > 1 else 0)
            for slot, job in list(running.items()):
                code = job.process.wait() if jobs == 1 else job.process.poll()
                if code is None:
                    continue
                del running[slot]
                if job.log:
                    job.log.close()
                minutes = (time.monotonic() - job.started) / 60
                if code == 0:
                    if jobs > 1:
                        print(f"[{job.number}/{len(runs)}] {job.run.label}: finished in {minutes:.1f} min", flush=True)
                else:
                    failed.append(job.run)
                    output = f" (its output: {job.log.name})" if job.log else ""
                    print(f"error: {job.run.label} exited with code {code}{output}; the study goes on with the other "
                          "runs", file=sys.stderr)
    except KeyboardInterrupt:
        for job in running.values():
            job.process.terminate()
            job.process.wait()
        raise
    return failed


def stop_on_term(signum, frame) -> None:
    """SIGTERM (a scheduler's time limit, `kill`) stops the study as Ctrl-C does: the runs going are stopped too,
    rather than left running without it."""
    raise KeyboardInterrupt


def check_unchanged(runs: list[PlannedRun]) -> None:
    """Every run already on disk was made with the configuration the study asks for now."""
    changed = [(run, keys) for run in runs if state(run) != "new" and (keys := changed_keys(run))]
    if changed:
        lines = "\n".join(f"  {run.directory}: {', '.join(keys)}" for run, keys in changed)
        raise ConfigError(f"these runs were made with another configuration than the study file gives now:\n{lines}\n"
                          "Restore the study file, or move those run directories away to run them again")


def write_summary(study: Study, runs: list[PlannedRun], states: list[str]) -> dict:
    """study.json: every run's directory, state and wall time, and their total."""
    entries = []
    for run, run_state in zip(runs, states):
        wall = None
        if run_state == "done":
            wall = read_json(run.directory / "results.json").get("wall_time_s")
        entries.append({"experiment": run.experiment.key, "name": run.experiment.name, "seed": run.seed,
                        "dir": str(run.directory), "state": run_state, "wall_time_s": wall})
    summary = {"name": study.name, "study_file": str(study.path), "seeds": study.seeds,
               "runs": entries, "finished": sum(s == "done" for s in states), "planned": len(runs),
               "wall_time_s": sum(e["wall_time_s"] or 0 for e in entries)}
    write_json(study.output_dir / "study.json", summary)
    return summary


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=flags.TEXT, metavar="STUDY.yaml",
                        help="the study file (examples: configs/studies/; a shipped one is found by that path)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what would be done, run nothing")
    parser.add_argument("--jobs", type=flags.COUNT, default=1, metavar="N",
                        help="runs at once, sharing the CPU cores (and one GPU each where there are GPUs); default 1")
    return parser


def main(args: list[str]) -> int:
    known = flags.parse(build_parser(), args)
    study = load_study(known.study)
    runs = plan(study)
    check_unchanged(runs)
    states = [state(run) for run in runs]
    own = sum(e.seeds != tuple(study.seeds) for e in study.experiments)
    seeds = f"{len(study.seeds)} seeds" + (f" (seeds of their own for {own} of them)" if own else "")
    print(f"Study {study.name!r}: {len(study.experiments)} experiments x {seeds} = {len(runs)} "
          f"runs in {study.output_dir} ({states.count('done')} finished)")
    if known.dry_run:
        for k, (run, run_state) in enumerate(zip(runs, states), 1):
            print(f"[{k}/{len(runs)}] {run.label}: {ACTION[run_state]}\n    python -m cpt fit "
                  + shlex.join(fit_args(run, run_state)))
        return 0
    started = time.monotonic()
    signal.signal(signal.SIGTERM, stop_on_term)
    try:
        failed = run_all(study, runs, known.jobs)
    except KeyboardInterrupt:
        write_summary(study, runs, [state(r) for r in runs])
        print(f"\nStudy stopped. Finished runs are kept; `python -m cpt study {study.path}` resumes it.",
              file=sys.stderr)
        return 130
    summary = write_summary(study, runs, [state(r) for r in runs])
    states = [entry["state"] for entry in summary["runs"]]
    done = [run.directory for run, s in zip(runs, states) if s == "done"]
    unfinished = [run for run, s in zip(runs, states) if s != "done" and run not in failed]
    print(f"\n{summary['finished']}/{len(runs)} runs finished; {(time.monotonic() - started) / 60:.1f} min in this "
          f"call, {summary['wall_time_s'] / 3600:.2f} h of run time in all")
    if done:
        out = study.output_dir / "compare"
        try:
            print(report(done, out, study.diffs, study.primary, study.margins))
        except ConfigError as error:  # a comparison names an experiment with no finished run yet
            print(f"warning: {error}; comparing without the differences", file=sys.stderr)
            print(report(done, out))
        print(f"\nTables and figures in {out}")
    if unfinished:  # never left out of the comparison without a word (a results file damaged after its run, say)
        print("error: the comparison leaves out these runs, which have no complete results: "
              + "; ".join(f"{run.label} ({run.directory / 'results.json'})" for run in unfinished)
              + f". `python -m cpt study {study.path}` runs them again", file=sys.stderr)
    if failed:
        print("error: these runs failed: " + "; ".join(f"{run.label} ({run.directory})" for run in failed)
              + f". Their output is above; fix the cause and run `python -m cpt study {study.path}` again",
              file=sys.stderr)
    return 1 if failed or unfinished else 0
