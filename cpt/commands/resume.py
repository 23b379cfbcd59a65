"""Continuing a run that stopped (a crash, a NaN, a time limit) after its last finished stage.

The run saved `checkpoints/last.ckpt` after each stage (callbacks/task_checkpoint.py). `resume=true` hands it to
`Trainer.fit`, which restores the weights, optimizer, schedule, loop position and callback states; the results
rows, filter decisions and random generators come back with them (the data module restores the generators as
it builds the next stage's loader, where the uninterrupted run saved them). A resumed run must be the run that
stopped, so its config has to match the saved one except for keys that do not change what is trained. A run
that stopped before it finished a stage has nothing to continue from: the same command starts it again from its
first stage, in its directory, so that `python -m cpt fit <run dir>/config.yaml resume=true` is the one way to
continue any stopped run.
"""

from __future__ import annotations

from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from cpt.commands.run_dir import RUN_ENTRIES, delete_run_entries, held_run
from cpt.config import differing_keys
from cpt.data.tasks import build_stages
from cpt.errors import ConfigError
from cpt.run_files import load_training_state, read_json, read_yaml, rerun_command, saved_checkpoint


class RunFinished(Exception):  # noqa: N818 - not an error: resume=true on a run with nothing left to do
    """Raised by resume_checkpoint for a run that finished every stage; `summary` is its results, the message says
    so."""

    def __init__(self, run_dir: Path, stages: int, summary: dict):
        super().__init__(f"resume=true: the run in {run_dir} finished all {stages} stage(s); there is nothing to "
                         f"continue. Its results are in {run_dir / 'results.json'} (overwrite=true resume=false "
                         "trains it again)")
        self.summary = summary


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint to continue from, or None for a new run or for a run stopped before it finished a stage (it
    starts again from its first stage, in place: start_again); ConfigError when resuming cannot be done;
    RunFinished when the run finished every stage."""
    if not cfg.resume:
        return None
    run_dir = Path(cfg.output_dir)
    checkpoint = saved_checkpoint(run_dir)
    saved_config = run_dir / "config.yaml"
    if not saved_config.is_file():
        if held_run(run_dir):
            raise ConfigError(f"resume=true, but {run_dir} holds no config.yaml to continue the run with. Start it "
                              f"again from the config it was started with: `python -m cpt fit CONFIG.yaml "
                              f"output_dir={run_dir} overwrite=true`")
        raise ConfigError(f"resume=true, but {checkpoint} does not exist: {run_dir} holds no run to continue. "
                          "Start it without resume=true")
    differ = differing_keys(read_yaml(saved_config), cfg)
    if differ:
        raise ConfigError(f"resume=true continues the run as it was configured, but these keys differ from "
                          f"{saved_config}: {', '.join(differ)}. Resume with `python -m cpt fit {saved_config} "
                          "resume=true`")
    if (summary := finished_run(cfg)) is not None:
        raise RunFinished(run_dir, len(build_stages(cfg)), summary)
    if not checkpoint.exists():
        if finished_stages(run_dir):
            raise ConfigError(f"resume=true, but {checkpoint} does not exist: the run finished a stage without "
                              "saving the training state to continue from (save_checkpoints=false, or the file was "
                              f"removed). Start it again with `{rerun_command(run_dir)}`")
        if rank_zero_only.rank == 0:
            start_again(run_dir)
        return None
    load_training_state(checkpoint)  # a damaged state named here, before anything of the run is touched
    if rank_zero_only.rank == 0:
        keep_earlier_log(run_dir / "logs" / "metrics.csv")
    return checkpoint


def finished_run(cfg: DictConfig) -> dict | None:
    """The results of the run in output_dir when it finished every stage (None otherwise): resuming it has nothing
    to continue, and `fit` says so rather than exiting without a word. A damaged results file is named with its
    next step (read_json)."""
    results = Path(cfg.output_dir) / "results.json"
    if not results.is_file():
        return None
    summary = read_json(results)
    rows = summary.get("accuracy_matrix") if isinstance(summary, dict) else None
    return summary if isinstance(rows, list) and len(rows) > len(build_stages(cfg)) else None


def finished_stages(run_dir: Path) -> bool:
    """Whether the run finished a stage: a stage directory saved, or an accuracy row after the base's."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.is_dir() and p.name.split("-")[0].isdigit() and not p.name.endswith(
            (".saving", ".old")) for p in checkpoints.iterdir()):
        return True
    results = read_json(run_dir / "results.json") if (run_dir / "results.json").is_file() else {}
    return isinstance(results, dict) and len(results.get("accuracy_matrix") or []) > 1


def start_again(run_dir: Path) -> None:
    """A run stopped before it finished a stage starts its first stage again in its directory. Its config (checked
    equal) stays; the stopped attempt's log is kept beside the new one, as a resumed run's is; everything else it
    wrote (the base row in results.json, filtering, a half-saved stage) goes, since the new start computes it all
    again and a reader must not take the stopped attempt's files for the new one's."""
    stale = [name for name in RUN_ENTRIES if name not in ("config.yaml", "logs") and (run_dir / name).exists()]
    print(f"resume=true: {run_dir} holds no finished stage; starting its first stage again"
          + (f" (deleting {', '.join(stale)})" if stale else ""))
    delete_run_entries(run_dir, stale)
    keep_earlier_log(run_dir / "logs" / "metrics.csv")


def keep_earlier_log(metrics: Path) -> None:
    """The CSV logger starts its file afresh; the stopped run's steps are kept beside it."""
    if metrics.is_file():
        number = 1
        while (kept := metrics.with_name(f"metrics.before-resume-{number}.csv")).exists():
            number += 1
        metrics.rename(kept)
