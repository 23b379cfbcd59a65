"""Saves the adapters (LoRA/QLoRA) or the full weights after each task.

Writes `<run_dir>/checkpoints/<k>-<task>/` in the save_pretrained layout, loadable with peft or transformers.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from cpt.backbone import save_weights


class TaskCheckpoint(Callback):
    def __init__(self, run_dir: str | Path, task_names: list[str]):
        self.run_dir = Path(run_dir)
        self.task_names = list(task_names)

    def path_for(self, index: int) -> Path:
        return self.run_dir / "checkpoints" / f"{index + 1}-{self.task_names[index]}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_weights(pl_module.backbone, self.path_for(trainer.current_epoch), is_main=trainer.is_global_zero)
        trainer.strategy.barrier()
