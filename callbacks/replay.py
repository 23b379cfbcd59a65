"""Experience replay for continual training: a share of every training batch comes from earlier tasks.

At setup it adds itself to the data module as an extra source (`TaskSequenceData.add_source`): from the second
stage on, `round(fraction * batch)` rows of each batch are drawn from a buffer of `buffer_per_task` examples per
finished task (a subset fixed by the seed and the task), and the rest from the current stage. Each row keeps its
own task, so RFT scores it with that task's scorer.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.arguments import positive_integer
from cpt.data.datamodule import Subset, TaskSequenceData
from cpt.data.examples import Example


class ExperienceReplay(Callback):
    def __init__(self, fraction: float = 0.2, buffer_per_task: int = 500, seed: int = 0):
        if not 0 < fraction < 1:
            raise ValueError(f"replay fraction must be in (0, 1), got {fraction}")
        self.fraction, self.seed = fraction, seed
        self.buffer_per_task = positive_integer("replay buffer_per_task", buffer_per_task)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not isinstance(data, TaskSequenceData):
            raise ValueError("ExperienceReplay draws from a TaskSequenceData; the trainer has none")
        data.add_source(self)

    def examples(self, data: TaskSequenceData, stage: int) -> list[tuple[int, Sequence[Example]]]:
        """(task, examples) kept of every task trained before `stage`."""
        earlier = [k for s in data.stages[:stage] for k in s.tasks]
        kept = []
        for k in earlier:
            examples = data.instances(k)
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.seed * 1000 + k))
            kept.append((k, Subset(examples, order[: self.buffer_per_task].tolist())))
        return kept
