"""A callback for the non-finite loss tests: from a given task on, the last process's images are NaN, so its loss
is NaN while the other processes' losses stay finite."""

from lightning.pytorch.callbacks import Callback


class PoisonBatch(Callback):
    def __init__(self, task: int = 2):
        self.task = task

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == trainer.world_size - 1 and pl_module.task_index + 1 >= self.task:
            batch["pixel_values"].fill_(float("nan"))
