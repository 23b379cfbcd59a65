"""Step timing: a step lasts from one finished optimizer step to the next, so that data preparation, generation,
scoring, reference pass and update all count. Our side is a whole `cpt.commands.fit.run` with a callback; TRL's
is a transformers Trainer with one."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from cpt.bench.rounds import SideRun
from cpt.commands.fit import run


class StepClock(Callback):
    """Wall time at the end of every training step, and the step's mean completion length where the module
    reports one (RFT's `rollout/completion_length`)."""

    def __init__(self):
        self.ends: list[float] = []
        self.completion_tokens: list[float | None] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.ends.append(time.perf_counter())
        self.completion_tokens.append(getattr(pl_module, "step_metrics", {}).get("rollout/completion_length"))


def timed_steps(ends: list[float], lengths: list[float | None], warmup: int) -> SideRun:
    """The steps after `warmup` from the end times of every step (the first step has no start: it is never
    timed), with the completion lengths of those same steps."""
    durations = [b - a for a, b in zip(ends, ends[1:])][warmup:]
    tokens = [t for t in lengths[1:][warmup:] if t is not None]
    return SideRun(durations, tokens)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Without the libraries' progress bars, INFO lines and warnings: the benchmark prints its own figures."""
    import datasets
    import transformers

    loggers = [logging.getLogger(name) for name in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    verbosity = transformers.logging.get_verbosity()
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        datasets.enable_progress_bars()


def time_ours(cfg: DictConfig, warmup: int) -> SideRun:
    """One run of `cfg` (one task of `steps_per_task` steps) with its steps timed."""
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="cpt-bench-") as out, contextlib.redirect_stdout(io.StringIO()), quiet():
        cfg = cfg.copy()
        cfg.output_dir = out
        run(cfg, extra_callbacks=[clock])  # its accuracy table is of no interest here
    return timed_steps(clock.ends, clock.completion_tokens, warmup)


def trainer_clock(metric: str | None = None):
    """A transformers TrainerCallback that records each step's end and, when `metric` is given, the last value of
    that metric in the trainer's `_metrics["train"]` (set `clock.trainer` after building the trainer)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []
            self.values: list[float | None] = []
            self.trainer = None

        def on_step_end(self, *args, **kwargs):
            self.ends.append(time.perf_counter())
            values = getattr(self.trainer, "_metrics", {}).get("train", {}).get(metric) if metric else None
            self.values.append(values[-1] if values else None)

    return Clock()
