"""Callbacks that stop a run partway, for the tests of non-finite losses and of resuming: from a given task on,
the last process's images are NaN (its loss is NaN while the others' stay finite), or the run crashes."""

from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PoisonBatch(Callback):
    """From the given task on, the last process's images are NaN."""

    def __init__(self, task: int = 2):
        self.task = task

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == trainer.world_size - 1 and pl_module.task_index + 1 >= self.task:
            batch.pixel_values.fill_(float("nan"))


class CrashAtTask(Callback):
    """Stops the run with an error as the given task begins, as a crash or a killed job would."""

    def __init__(self, task: int = 2):
        self.task = task

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.task:
            raise RuntimeError(f"simulated crash at the start of task {self.task}")


class CrashOnce(CrashAtTask):
    """CrashAtTask the first time only: it leaves `marker` behind, and a run started again (with the same saved
    config, so with this callback) does not crash. For tests of a continued run given exactly its own config."""

    def __init__(self, task: int = 2, marker: str = ""):
        super().__init__(task)
        self.marker = Path(marker)

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.task and not self.marker.exists():
            self.marker.write_text("crashed")
            super().on_train_epoch_start(trainer, pl_module)
