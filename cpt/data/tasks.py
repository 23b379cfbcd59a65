"""A task: a name, training and evaluation examples, and the scorer that says how right an answer is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cpt.data.examples import Example
from cpt.data.files import ImagesById
from cpt.data.local_tasks import open_split
from cpt.data.schemas import SCHEMAS
from cpt.data.scoring import SCORERS, Scorer
from cpt.data.synthetic import GENERAL_NAME, SyntheticSplit, chance_accuracy
from cpt.errors import DataError


@dataclass
class Task:
    name: str
    train: Sequence[Example]
    eval: Sequence[Example]
    scorer: Scorer
    chance: float | None = None  # accuracy of guessing, percent, where known
    categories: Sequence[str] | None = None  # per eval example (e.g. MMMU subject), for per-category accuracy
    template: str = "direct"  # the prompt template it is trained and evaluated with


def synthetic_task(name: str, cfg: DictConfig) -> Task:
    data = cfg.data
    return Task(
        name=name,
        train=SyntheticSplit(name, "train", data.train_size, cfg.seed, data.image_size),
        eval=SyntheticSplit(name, "eval", data.eval_size, cfg.seed, data.image_size),
        scorer=SCORERS["exact"],
        chance=chance_accuracy(name),
        template=data.template,
    )


def local_task(name: str, spec: DictConfig, cfg: DictConfig) -> Task:
    """The task as configured under local_tasks.<name>, read through its format's schema; DataError naming the
    task when it cannot be used (a missing file or column, an empty split)."""
    schema = SCHEMAS[spec.format]
    images_by_id = None
    if spec.format == "gqa":
        if not spec.images:
            raise DataError(f"task {name!r}: GQA keeps its images apart from the questions; set "
                            f"local_tasks.{name}.images to the images directory or the *_images tables")
        images_by_id = ImagesById(spec.images)
    image_dir = Path(spec.image_dir).expanduser() if spec.image_dir else None
    splits = []
    for split, path, split_name, size in (("train", spec.train or spec.path, spec.train_split, spec.train_size),
                                          ("eval", spec.eval or spec.path, spec.eval_split or schema.eval_split,
                                           spec.eval_size)):
        if path is None:
            raise DataError(f"task {name!r}: set local_tasks.{name}.path (a directory holding the dataset's splits) "
                            f"or local_tasks.{name}.{split}")
        splits.append(open_split(name, split, Path(path).expanduser(), split_name, schema, size, cfg.seed, image_dir,
                                 images_by_id, spec.max_pixels))
    by_split = any((source / "dataset_dict.json").exists() for source in splits[0].sources)  # splits inside
    if not (spec.train and spec.eval) and splits[0].sources == splits[1].sources and not by_split:
        raise DataError(f"task {name!r}: training and evaluation would read the same data "
                        f"({', '.join(str(s) for s in splits[0].sources[:2])}); no file or folder under "
                        f"{spec.path!r} is named for the {spec.train_split!r} or the evaluation split. Set "
                        f"local_tasks.{name}.train and local_tasks.{name}.eval")
    return Task(name, *splits, SCORERS[spec.scorer or schema.scorer], template=spec.template or cfg.data.template)


def build_tasks(cfg: DictConfig) -> list[Task]:
    """The configured sequence, in order."""
    return [local_task(name, cfg.local_tasks[name], cfg) if name in cfg.local_tasks else synthetic_task(name, cfg)
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

    Its questions come from the general pool's evaluation split, which the toy foundation never trains on (it
    pre-trains on the training split), and are drawn afresh for every run seed, as the tasks' evaluation examples
    are: so the spread over seeds includes which questions were asked (a fixed set would leave that item noise,
    about 3.5 points of standard error at 200 questions, out of every interval), and two runs with the same seed
    answer the same questions, which a paired comparison relies on.
    """
    data = cfg.data
    held_out = SyntheticSplit(GENERAL_NAME, "eval", data.general_size, cfg.seed, data.image_size)
    return Task(GENERAL_NAME, train=(), eval=held_out, scorer=SCORERS["multiple_choice"], chance=None,
                template=data.template)

