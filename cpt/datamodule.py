"""Serves the task sequence to one `Trainer.fit`: epoch k draws from task k.

Each epoch is exactly `steps_per_task` training steps (batches; RFT makes `rft.epochs` optimizer steps of
each): on every rank the sampler draws that many batches
(with replacement, seeded by run seed, task and rank).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, RandomSampler

from cpt.data import Collator, EncodedDataset
from cpt.processor import VisionTextProcessor
from cpt.tasks import Task


class TaskSequenceData(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, tasks: list[Task], processor: VisionTextProcessor, with_response: bool = True):
        super().__init__()
        self.cfg, self.tasks, self.processor, self.with_response = cfg, tasks, processor, with_response

    def train_loader(self, task_index: int, rank: int = 0) -> DataLoader:
        cfg = self.cfg
        task = self.tasks[task_index]
        dataset = EncodedDataset(task.train, self.processor, cfg.data.template, self.with_response)
        batches = cfg.steps_per_task * cfg.trainer.accumulate_grad_batches
        # Every rank draws its own batches (the Trainer is told not to swap in a DistributedSampler, which would
        # make an epoch the whole dataset).
        seed = (cfg.seed * 1000 + task_index) * 1000 + rank
        sampler = RandomSampler(dataset, replacement=True, num_samples=batches * cfg.data.batch_size,
                                generator=torch.Generator().manual_seed(seed))
        return DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                          collate_fn=Collator(self.processor.pad_id), persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        # The trainer's epoch counter is the position in the sequence.
        return self.train_loader(self.trainer.current_epoch, self.trainer.global_rank)
