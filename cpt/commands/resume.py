"""Continuing a run that stopped (a crash, a NaN, a time limit) after its last finished stage.

The run saved `checkpoints/last.ckpt` after each stage (callbacks/task_checkpoint.py). `resume=true` hands it to
`Trainer.fit`, which restores the weights, optimizer, schedule, loop position and callback states; the results
rows, filter decisions and random generators come back with them (the data module restores the generators as
it builds the next stage's loader, where the uninterrupted run saved them). A resumed run must be the run that
stopped, so its config has to match the saved one except for keys that do not change what is trained.
"""

from __future__ import annotations

from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cpt.atomic import previous_path
from cpt.callbacks.task_checkpoint import LAST
from cpt.config import differing_keys
from cpt.errors import ConfigError


def saved_checkpoint(run_dir: Path) -> Path:
    """The run's checkpoints/last.ckpt, or the copy a save that stopped between its two renames left beside it
    (neither may exist)."""
    checkpoint = run_dir / "checkpoints" / LAST
    if not checkpoint.exists() and previous_path(checkpoint).exists():
        return previous_path(checkpoint)
    return checkpoint


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint to continue from, or None for a new run; ConfigError when resuming cannot be done."""
    if not cfg.resume:
        return None
    run_dir = Path(cfg.output_dir)
    checkpoint = saved_checkpoint(run_dir)
    saved_config = run_dir / "config.yaml"
    if not checkpoint.exists() or not saved_config.is_file():
        raise ConfigError(f"resume=true, but {checkpoint} does not exist: the run did not finish a stage with "
                          "save_checkpoints=true. Start it again without resume=true")
    differ = differing_keys(OmegaConf.load(saved_config), cfg)
    if differ:
        raise ConfigError(f"resume=true continues the run as it was configured, but these keys differ from "
                          f"{saved_config}: {', '.join(differ)}. Resume with `python -m cpt fit {saved_config} "
                          "resume=true`")
    if rank_zero_only.rank == 0:
        keep_earlier_log(run_dir / "logs" / "metrics.csv")
    return checkpoint


def keep_earlier_log(metrics: Path) -> None:
    """The CSV logger starts its file afresh; the stopped run's steps are kept beside it."""
    if metrics.is_file():
        number = 1
        while (kept := metrics.with_name(f"metrics.before-resume-{number}.csv")).exists():
            number += 1
        metrics.rename(kept)
