"""After each task: the adapters (LoRA/QLoRA) or the full weights, and the training state to resume from.

Writes `<run_dir>/checkpoints/<k>-<task>/` in the save_pretrained layout, loadable with peft or transformers, and
`<run_dir>/checkpoints/last.ckpt`: Lightning's checkpoint of the finished stage (trainable weights, optimizer,
schedule, loop position, every callback's state, the data module's kept instances and random generators).
`resume=true` continues from it. It is a `Checkpoint`, so Lightning runs it after the other callbacks: the
stage's evaluation row and the next stage's filtering are in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from cpt.model.backbone import save_weights

LAST = "last.ckpt"


class TaskCheckpoint(Checkpoint):
    def __init__(self, run_dir: str | Path, task_names: list[str]):
        self.run_dir = Path(run_dir)
        self.task_names = list(task_names)

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

    def path_for(self, index: int) -> Path:
        return self.run_dir / "checkpoints" / f"{index + 1}-{self.task_names[index]}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_weights(pl_module.backbone, self.path_for(trainer.current_epoch), is_main=trainer.is_global_zero)
        # Written beside, then renamed: a run stopped while saving keeps the previous stage's state.
        staging = self.last.with_name(LAST + ".saving")
        trainer.save_checkpoint(staging)  # a file, or a directory of shards under FSDP
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if self.last.is_dir():
                shutil.rmtree(self.last)
            elif self.last.exists():
                self.last.unlink()
            staging.rename(self.last)
        trainer.strategy.barrier()
