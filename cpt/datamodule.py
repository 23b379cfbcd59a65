"""Serves the task sequence to one `Trainer.fit`: epoch k draws from task k.

Each epoch is exactly `steps_per_task` optimizer steps: the sampler draws that many batches (with
replacement, seeded by run seed and task) and Lightning splits them over ranks.
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
    def __init__(self, cfg: DictConfig, tasks: list[Task], processor: VisionTextProcessor):
        super().__init__()
        self.cfg, self.tasks, self.processor = cfg, tasks, processor

    def train_loader(self, task_index: int, world_size: int = 1) -> DataLoader:
        cfg = self.cfg
        task = self.tasks[task_index]
        dataset = EncodedDataset(task.train, self.processor, cfg.data.template)
        batches = cfg.steps_per_task * cfg.trainer.accumulate_grad_batches * world_size
        sampler = RandomSampler(dataset, replacement=True, num_samples=batches * cfg.data.batch_size,
                                generator=torch.Generator().manual_seed(cfg.seed * 1000 + task_index))
        return DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                          collate_fn=Collator(self.processor.pad_id), persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        # The trainer's epoch counter is the position in the sequence.
        return self.train_loader(self.trainer.current_epoch, self.trainer.world_size)
