"""Moves training from one task to the next every `steps_per_task` training steps.

One `Trainer.fit` walks the whole sequence: epoch k is task k (the data module serves task k's data in
epoch k and its epoch is exactly `steps_per_task` steps long). At the start of each epoch this callback
points the module at the new task (`CPTModule.start_stage`) and, with `reset_optimizer`, gives AdamW fresh
moments (each stage of the study is a separate fine-tuning run). The module logs the task index with every step.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from cpt.methods.base import CPTModule


class TaskSwitching(Callback):
    def __init__(self, task_names: list[str], reset_optimizer: bool = True):
        self.task_names = list(task_names)
        self.reset_optimizer = reset_optimizer

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, CPTModule):
            raise ValueError(f"TaskSwitching moves a CPT module through its stages; {type(pl_module).__name__} is not "
                             "one")
        if trainer.max_epochs != len(self.task_names):
            raise ValueError(f"the trainer runs {trainer.max_epochs} epochs for {len(self.task_names)} tasks; "
                             "set max_epochs to the number of tasks (one epoch per task)")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        index = trainer.current_epoch
        pl_module.start_stage(index)
        if self.reset_optimizer and index > 0:
            for optimizer in trainer.optimizers:
                optimizer.state.clear()
