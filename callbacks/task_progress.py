"""A progress bar that says which task of the sequence is training ("Task 2/7 colour") and its steps; with a label
(the experiment and seed of a study's run), that first."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class TaskProgressBar(TQDMProgressBar):
    def __init__(self, task_names: list[str], refresh_rate: int = 1, label: str = ""):
        super().__init__(refresh_rate=refresh_rate)
        self.task_names = list(task_names)
        self.label = f"{label} · " if label else ""

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        k = trainer.current_epoch
        self.train_progress_bar.set_description(
            f"{self.label}Task {k + 1}/{len(self.task_names)} {self.task_names[k]}")
