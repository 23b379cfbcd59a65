"""The KL ablation: sets the RFT module's beta (`RFTModule.set_kl_coef`) before every training step.

`constant` keeps `coef`; `per_task` uses `per_task[k]` during stage k (0 turns the term off there); `linear` goes
from `coef` at a stage's first step to `final_coef` at its last. The reference the KL is measured against
(base model or start of the stage) is `rft.kl.reference`. Logs `policy/kl_coef` every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from cpt.methods.rft import RFTModule

SCHEDULES = ("constant", "per_task", "linear")


class KLSchedule(Callback):
    def __init__(self, schedule: str = "constant", coef: float = 0.01, per_task: Sequence[float] | None = None,
                 final_coef: float = 0.0, steps_per_stage: int = 1):
        if schedule not in SCHEDULES:
            raise ValueError(f"KL schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
        if schedule == "per_task" and not per_task:
            raise ValueError("the per_task KL schedule needs one beta per stage (per_task)")
        if min(coef, final_coef, *(per_task or [])) < 0:
            raise ValueError("every beta of the KL schedule (coef, final_coef, per_task) must be >= 0")
        self.schedule, self.coef, self.final_coef = schedule, coef, final_coef
        self.per_task = list(per_task or [])
        self.steps_per_stage = steps_per_stage

    def coef_at(self, stage: int, step: int) -> float:
        """beta at step `step` (from 0) of stage `stage` (from 0)."""
        if self.schedule == "per_task":
            return self.per_task[stage]
        if self.schedule == "linear":
            progress = step / max(1, self.steps_per_stage - 1)
            return self.coef + (self.final_coef - self.coef) * min(progress, 1.0)
        return self.coef

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, RFTModule):
            raise ValueError(f"KLSchedule sets the KL weight of an RFT module; {type(pl_module).__name__} has none")
        if self.schedule == "per_task" and len(self.per_task) < trainer.max_epochs:
            raise ValueError(f"the per_task KL schedule has {len(self.per_task)} betas for {trainer.max_epochs} stages")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        pl_module.set_kl_coef(self.coef_at(trainer.current_epoch, batch_idx))
        pl_module.log("policy/kl_coef", pl_module.kl_coef, batch_size=1)
