"""Serves the stages of a run to one `Trainer.fit`: epoch k draws from stage k's tasks.

Each epoch is exactly `steps_per_task` training steps per task of the stage (RFT makes `rft.epochs` optimizer
steps of each batch): on every rank the sampler draws that many batches, with replacement, seeded by run seed,
stage, rank and stream.

Two extension points shape what is drawn; callbacks (built-in or a user's) use them before a stage's loader is
built (its `train_dataloader`, at the start of each epoch):
  keep_instances(task, indices)  a task draws only from these training instances (the rollout filter's kept ones);
  add_source(source)             an ExtraSource puts a share of every batch from other data (experience replay).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from cpt.data.batches import Batch, Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.tasks import Stage, Task, build_stages

if TYPE_CHECKING:  # the processor belongs to the model floor above; data only receives one
    from cpt.model.processor import VisionTextProcessor


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


class ExtraSource(Protocol):
    """Data mixed into every training batch besides the stage's own (callbacks/replay.py is one)."""

    fraction: float  # round(fraction * data.batch_size) rows of every batch come from this source

    def examples(self, data: TaskSequenceData, stage: int) -> list[tuple[int, Sequence[Example]]]:
        """(task index, examples) to draw from during `stage`; an empty list adds nothing to that stage. The
        task index decides the prompt template and, under RFT, the scorer of each row."""


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices of a ConcatDataset, drawn with replacement: `rows[s]` of them from the
    extra part s (indices [starts[s], starts[s] + sizes[s])), the others from [0, current)."""

    def __init__(self, current: int, extra: Sequence[tuple[int, int, int]], batch_size: int, batches: int,
                 generator: torch.Generator):
        self.current, self.extra, self.batch_size = current, list(extra), batch_size  # extra: (start, size, rows)
        self.batches, self.generator = batches, generator

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        fresh = self.batch_size - sum(rows for _, _, rows in self.extra)
        for _ in range(self.batches):
            rows = torch.randint(self.current, (fresh,), generator=self.generator).tolist()
            for start, size, count in self.extra:
                rows += (start + torch.randint(size, (count,), generator=self.generator)).tolist()
            yield rows


class TaskSequenceData(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, tasks: list[Task], processor: VisionTextProcessor, with_response: bool = True,
                 stages: list[Stage] | None = None):
        super().__init__()
        self.cfg, self.tasks, self.processor, self.with_response = cfg, tasks, processor, with_response
        self.stages = stages if stages is not None else build_stages(cfg)
        self.kept: dict[int, list[int]] = {}  # task index -> the training instances it draws from (keep_instances)
        self.sources: list[ExtraSource] = []
        self.restored_random_state: list[dict] | None = None  # per process, from a checkpoint

    # --- extension points -------------------------------------------------------------------------------------

    def keep_instances(self, task_index: int, indices: Sequence[int]) -> None:
        """From now on, task `task_index` draws only from these indices of its training split."""
        self.kept[task_index] = list(indices)

    def add_source(self, source: ExtraSource) -> None:
        """Mix `source` into every training batch from the next loader on."""
        if source in self.sources:
            return
        batch_size = self.cfg.data.batch_size
        if self.rows_from(source) == 0:
            raise ValueError(f"{type(source).__name__}: a fraction {source.fraction} of a batch of {batch_size} is "
                             "no row; raise its fraction or data.batch_size")
        if sum(self.rows_from(s) for s in [*self.sources, source]) > batch_size:
            raise ValueError(f"the extra sources would fill more than a batch of {batch_size} rows")
        self.sources.append(source)

    def rows_from(self, source: ExtraSource) -> int:
        """How many rows of every training batch `source` fills."""
        return round(source.fraction * self.cfg.data.batch_size)

    # --- state a resumed run continues from -------------------------------------------------------------------

    def state_dict(self) -> dict:
        # A resumed stage draws from the instances its filter kept, and each process's generators continue from
        # where they were as the stage ended (rollout sampling, dropout). The strategy gathers tensors only;
        # the generators' states are Python objects, so torch.distributed gathers them.
        states = [random_state()]
        if self.trainer is not None and self.trainer.world_size > 1:
            states = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, random_state())
        return {"kept": self.kept, "random_state": states}

    def load_state_dict(self, state: dict) -> None:
        self.kept = {int(k): list(v) for k, v in state["kept"].items()}
        self.restored_random_state = state.get("random_state")

    # --- loaders ----------------------------------------------------------------------------------------------

    def instances(self, task_index: int) -> Sequence[Example]:
        """The training examples a task draws from: all of them, or those kept by `keep_instances`."""
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
        parts, extra = [current], []
        for source in self.sources:
            drawn = [self.encoded(k, examples) for k, examples in source.examples(self, stage)]
            if drawn:
                start = sum(len(part) for part in parts)
                parts.append(ConcatDataset(drawn))
                extra.append((start, len(parts[-1]), self.rows_from(source)))
        batches = cfg.steps_per_task * len(self.stages[stage].tasks) * cfg.trainer.accumulate_grad_batches
        # Every rank draws its own batches (the Trainer is told not to swap in a DistributedSampler, which would
        # make an epoch the whole dataset).
        seed = (cfg.seed * 1000 + stage) * 1000 + rank + stream * 2**40
        sampler = MixedBatchSampler(len(current), extra, cfg.data.batch_size, batches,
                                    torch.Generator().manual_seed(seed))
        return DataLoader(ConcatDataset(parts), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                          collate_fn=Collator(self.processor.pad_id), persistent_workers=False)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)

    def train_dataloader(self) -> DataLoader:
        if self.restored_random_state is not None:
            # The stage's loader is built at the point where the uninterrupted run saved its generators.
            set_random_state(self.restored_random_state[self.trainer.global_rank])
            self.restored_random_state = None
        # The trainer's epoch counter is the position in the sequence of stages.
        return self.train_loader(self.trainer.current_epoch, self.trainer.global_rank)
