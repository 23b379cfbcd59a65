"""`python -m cpt study STUDY.yaml [--dry-run]`: every (experiment, seed) run of a study, then their comparison.

Finished runs are skipped and stopped ones resumed, so the same command continues a study that was stopped
(Ctrl-C, a crash, a time limit) where it was. Each run is its own `python -m cpt fit` process; its progress bar
names the experiment, the seed and the task. At the end `cpt compare` groups the seeds of every experiment and
writes the tables and figures, with 95% intervals, to <output_dir>/compare/. (cpt.study has the file's format.)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

from cpt.atomic import write_json
from cpt.commands.compare import report
from cpt.errors import ConfigError
from cpt.study import PlannedRun, Study, changed_keys, load_study, plan, state

ACTION = {"done": "finished, skipped", "stopped": "resuming after its last saved stage",
          "started": "stopped before its first saved stage: starting again", "new": "starting"}


def fit_args(run: PlannedRun, run_state: str) -> list[str]:
    """A resumed run repeats the planned arguments (the saved config must match them) with resume=true; one that
    stopped before saving a stage replaces what it left."""
    extra = {"stopped": ["resume=true"], "started": ["overwrite=true"]}.get(run_state, [])
    return [*run.args, *extra]


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
            wall = json.loads((run.directory / "results.json").read_text()).get("wall_time_s")
        entries.append({"experiment": run.experiment.key, "name": run.experiment.name, "seed": run.seed,
                        "dir": str(run.directory), "state": run_state, "wall_time_s": wall})
    summary = {"name": study.name, "study_file": str(study.path), "seeds": study.seeds,
               "runs": entries, "finished": sum(s == "done" for s in states), "planned": len(runs),
               "wall_time_s": sum(e["wall_time_s"] or 0 for e in entries)}
    write_json(study.output_dir / "study.json", summary)
    return summary


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpt study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", metavar="STUDY.yaml", help="the study file (examples: configs/studies/)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what would be done, run nothing")
    known = parser.parse_args(args)
    study = load_study(known.study)
    runs = plan(study)
    check_unchanged(runs)
    states = [state(run) for run in runs]
    print(f"Study {study.name!r}: {len(study.experiments)} experiments x {len(study.seeds)} seeds = {len(runs)} "
          f"runs in {study.output_dir} ({states.count('done')} finished)")
    if known.dry_run:
        for k, (run, run_state) in enumerate(zip(runs, states), 1):
            print(f"[{k}/{len(runs)}] {run.label}: {ACTION[run_state]}\n    python -m cpt fit "
                  + shlex.join(fit_args(run, run_state)))
        return 0
    failed = []
    started = time.monotonic()
    for k, run in enumerate(runs, 1):
        run_state = state(run)
        print(f"\n[{k}/{len(runs)}] {run.label}: {ACTION[run_state]} ({run.directory})", flush=True)
        if run_state == "done":
            continue
        try:
            code = subprocess.run([sys.executable, "-m", "cpt", "fit", *fit_args(run, run_state)]).returncode
        except KeyboardInterrupt:
            write_summary(study, runs, [state(r) for r in runs])
            print(f"\nStudy stopped. Finished runs are kept; `python -m cpt study {study.path}` resumes it.",
                  file=sys.stderr)
            return 130
        if code != 0:
            failed.append(run)
            print(f"error: {run.label} exited with code {code}; the study goes on with the other runs",
                  file=sys.stderr)
    summary = write_summary(study, runs, [state(r) for r in runs])
    done = [run.directory for run, s in zip(runs, (e["state"] for e in summary["runs"])) if s == "done"]
    print(f"\n{summary['finished']}/{len(runs)} runs finished; {(time.monotonic() - started) / 60:.1f} min in this "
          f"call, {summary['wall_time_s'] / 3600:.2f} h of run time in all")
    if done:
        out = study.output_dir / "compare"
        try:
            print(report(done, out, study.diffs))
        except ConfigError as error:  # a difference names an experiment with no finished run yet
            print(f"warning: {error}; comparing without the differences", file=sys.stderr)
            print(report(done, out))
        print(f"\nTables and figures in {out}")
    if failed:
        print("error: these runs failed: " + "; ".join(f"{run.label} ({run.directory})" for run in failed)
              + f". Their output is above; fix the cause and run `python -m cpt study {study.path}` again",
              file=sys.stderr)
        return 1
    return 0
