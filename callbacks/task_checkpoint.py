"""After each task: the adapters (LoRA/QLoRA) or the full weights, and the training state to resume from.

Writes `<run_dir>/checkpoints/<k>-<task>/` in the save_pretrained layout, loadable on its own with peft or transformers
(weights or adapters, the processor with its chat template, the generation config, a model card), and
`<run_dir>/checkpoints/last.ckpt`: Lightning's checkpoint of the finished stage (trainable weights, optimizer,
schedule, loop position, every callback's state, the data module's kept instances and random generators).
`resume=true` continues from it. It is a `Checkpoint`, so Lightning runs it after the other callbacks: the
stage's evaluation row and the next stage's filtering are in it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from cpt.atomic import remove, staging_path, swap_in
from cpt.model.backbone import base_model, save_weights
from cpt.run_files import LAST


class TaskCheckpoint(Checkpoint):
    def __init__(self, run_dir: str | Path, task_names: list[str], describe: Callable[[int], str] | None = None):
        """`describe(k)`: the model card (README.md) of stage k's directory."""
        self.run_dir = Path(run_dir)
        self.task_names = list(task_names)
        self.describe = describe

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

    def path_for(self, index: int) -> Path:
        return self.run_dir / "checkpoints" / f"{index + 1}-{self.task_names[index]}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Both are written beside their place and renamed into it (cpt.atomic): a run stopped while saving keeps the
        # previous version whole, and at no moment is there neither.
        stage_dir = self.path_for(trainer.current_epoch)
        if trainer.is_global_zero:  # what a run stopped while saving left behind
            remove(staging_path(stage_dir))
            remove(staging_path(self.last))
        trainer.strategy.barrier()
        save_weights(pl_module.backbone, staging_path(stage_dir), is_main=trainer.is_global_zero)
        if trainer.is_global_zero:  # what loading it on its own needs besides the weights
            pl_module.processor.save_pretrained(staging_path(stage_dir))
            base_model(pl_module.backbone).generation_config.save_pretrained(staging_path(stage_dir))
            if self.describe is not None:
                (staging_path(stage_dir) / "README.md").write_text(self.describe(trainer.current_epoch))
        # A file, or a directory of shards under FSDP; the whole training state (weights_only=False), as resume needs.
        trainer.save_checkpoint(staging_path(self.last), weights_only=False)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            swap_in(staging_path(stage_dir), stage_dir)
            swap_in(staging_path(self.last), self.last)
        trainer.strategy.barrier()
