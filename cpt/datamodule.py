"""Serves the stages of a run to one `Trainer.fit`: epoch k draws from stage k's tasks.

Each epoch is exactly `steps_per_task` training steps per task of the stage (RFT makes `rft.epochs` optimizer
steps of each batch): on every rank the sampler draws that many batches, with replacement, seeded by run seed,
stage, rank and stream. Two callbacks shape what is drawn: the rollout filter restricts a task to the instances it
kept (`kept`), and experience replay (`replay`) puts a share of earlier tasks' examples in every batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Protocol

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from cpt.data import Collator, EncodedDataset
from cpt.examples import Example
from cpt.processor import VisionTextProcessor
from cpt.tasks import Stage, Task, build_stages


def random_state() -> dict:
    """This process's random generators, in types `torch.load(weights_only=True)` reads."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Subset(Sequence):
    """The examples of a split at the given indices."""

    def __init__(self, examples: Sequence[Example], indices: Sequence[int]):
        self.examples, self.indices = examples, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Example:
        return self.examples[self.indices[i]]


class ReplaySource(Protocol):
    fraction: float

    def buffer(self, data: "TaskSequenceData", stage: int) -> list[tuple[int, Sequence[Example]]]:
        """(task index, examples) of earlier tasks to replay during `stage`."""


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices drawn with replacement: `replay_rows` of them from [current, current +
    replay) (the replay part of a ConcatDataset), the others from [0, current)."""

    def __init__(self, current: int, replay: int, batch_size: int, replay_rows: int, batches: int,
                 generator: torch.Generator):
        self.current, self.replay, self.batch_size, self.replay_rows = current, replay, batch_size, replay_rows
        self.batches, self.generator = batches, generator

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        fresh = self.batch_size - self.replay_rows
        for _ in range(self.batches):
            rows = torch.randint(self.current, (fresh,), generator=self.generator).tolist()
            if self.replay_rows:
                rows += (self.current + torch.randint(self.replay, (self.replay_rows,), generator=self.generator)).tolist()
            yield rows


class TaskSequenceData(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, tasks: list[Task], processor: VisionTextProcessor, with_response: bool = True,
                 stages: list[Stage] | None = None):
        super().__init__()
        self.cfg, self.tasks, self.processor, self.with_response = cfg, tasks, processor, with_response
        self.stages = stages if stages is not None else build_stages(cfg)
        self.kept: dict[int, list[int]] = {}  # task index -> training instances kept by the rollout filter
        self.replay: ReplaySource | None = None
        self.restored_random_state: list[dict] | None = None  # per process, from a checkpoint

    def state_dict(self) -> dict:
        # A resumed stage draws from the instances its filter kept, and each process's generators continue from
        # where they were as the stage ended (rollout sampling, dropout).
        states = [random_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, random_state())
        return {"kept": self.kept, "random_state": states}

    def load_state_dict(self, state: dict) -> None:
        self.kept = {int(k): list(v) for k, v in state["kept"].items()}
        self.restored_random_state = state.get("random_state")

    def instances(self, task_index: int) -> Sequence[Example]:
        """The training examples a task draws from: all of them, or those the rollout filter kept."""
        train = self.tasks[task_index].train
        kept = self.kept.get(task_index)
        return train if kept is None else Subset(train, kept)

    def encoded(self, task_index: int, examples: Sequence[Example]) -> EncodedDataset:
        template = self.tasks[task_index].template
        return EncodedDataset(examples, self.processor, template, self.with_response, task=task_index)

    def stage_dataset(self, stage: int) -> ConcatDataset:
        return ConcatDataset([self.encoded(k, self.instances(k)) for k in self.stages[stage].tasks])

    def train_loader(self, stage: int, rank: int = 0, stream: int = 0) -> DataLoader:
        """Stage `stage`'s batches for one rank; another `stream` gives an independent draw (refills)."""
        cfg = self.cfg
        current = self.stage_dataset(stage)
        parts = [current]
        replay_rows = 0
        if self.replay is not None and stage > 0:
            replayed = [self.encoded(k, examples) for k, examples in self.replay.buffer(self, stage)]
            if replayed:
                parts.append(ConcatDataset(replayed))
                replay_rows = round(self.replay.fraction * cfg.data.batch_size)
        batches = cfg.steps_per_task * len(self.stages[stage].tasks) * cfg.trainer.accumulate_grad_batches
        # Every rank draws its own batches (the Trainer is told not to swap in a DistributedSampler, which would
        # make an epoch the whole dataset).
        seed = (cfg.seed * 1000 + stage) * 1000 + rank + stream * 2**40
        sampler = MixedBatchSampler(len(current), len(parts[-1]) if replay_rows else 0, cfg.data.batch_size,
                                    replay_rows, batches, torch.Generator().manual_seed(seed))
        return DataLoader(ConcatDataset(parts), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                          collate_fn=Collator(self.processor.pad_id), persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        if self.restored_random_state is not None:
            # The stage's loader is built at the point where the uninterrupted run saved its generators.
            set_random_state(self.restored_random_state[self.trainer.global_rank])
            self.restored_random_state = None
        # The trainer's epoch counter is the position in the sequence of stages.
        return self.train_loader(self.trainer.current_epoch, self.trainer.global_rank)
