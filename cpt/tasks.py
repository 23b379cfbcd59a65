"""A task: a name, training and evaluation examples, and the scorer that says how right an answer is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from cpt.data import LocalSplit, SyntheticSplit
from cpt.examples import Example
from cpt.scoring import SCORERS, Scorer
from cpt.synthetic import GENERAL_NAME, chance_accuracy


@dataclass
class Task:
    name: str
    train: Sequence[Example]
    eval: Sequence[Example]
    scorer: Scorer
    chance: float | None = None  # accuracy of guessing, percent, where known
    categories: Sequence[str] | None = None  # per eval example (e.g. MMMU subject), for per-category accuracy


def synthetic_task(name: str, cfg: DictConfig) -> Task:
    data = cfg.data
    return Task(
        name=name,
        train=SyntheticSplit(name, "train", data.train_size, cfg.seed, data.image_size),
        eval=SyntheticSplit(name, "eval", data.eval_size, cfg.seed, data.image_size),
        scorer=SCORERS["exact"],
        chance=chance_accuracy(name),
    )


def local_task(name: str, spec: DictConfig) -> Task:
    return Task(name, LocalSplit(spec.train, spec.image_dir), LocalSplit(spec.eval, spec.image_dir), SCORERS[spec.scorer])


def build_tasks(cfg: DictConfig) -> list[Task]:
    """The configured sequence, in order."""
    return [local_task(name, cfg.local_tasks[name]) if name in cfg.local_tasks else synthetic_task(name, cfg)
            for name in cfg.tasks]


@dataclass
class Stage:
    """One training stage of the run: the tasks (indices into the task list) whose data it trains on."""

    name: str
    tasks: list[int]


def build_stages(cfg: DictConfig) -> list[Stage]:
    """sequential: one stage per task, in order; multitask: one stage mixing every task (the upper bound)."""
    if cfg.schedule == "multitask":
        return [Stage("multitask", list(range(len(cfg.tasks))))]
    return [Stage(name, [k]) for k, name in enumerate(cfg.tasks)]


def general_set(cfg: DictConfig) -> Task:
    """The held-out general-knowledge set (multiple choice, 4 options): the toy stand-in for MMMU/MMLU-Pro.

    Its seed is the foundation model's, so it is held out from the same pool the base was pre-trained on.
    """
    data = cfg.data
    held_out = SyntheticSplit(GENERAL_NAME, "eval", data.general_size, cfg.foundation.seed, data.image_size)
    return Task(GENERAL_NAME, train=(), eval=held_out, scorer=SCORERS["multiple_choice"], chance=None)

