"""Learning without Forgetting (Li and Hoiem, 2016): distillation from the model as the task began, on the new
task's own inputs.

From the second stage on, every training step adds

    weight * mean over the step's targets of KL(softmax(z_teacher / T) || softmax(z_student / T))

where z are the logits predicting each target token (SFT's answer tokens; RFT's and on-policy SFT's sampled
completions) and the teacher is the model as the current stage began. Up to the teacher's entropy, which has no
gradient, this is LwF's distillation loss (cross-entropy with the teacher's temperature-softened outputs; the
original uses T = 2 and weight 1), and it is the KL(teacher || student) on label tokens of MLLM-CTBench's LLM version.
The first stage has nothing earlier to keep and no term.

The teacher is `cpt.rl.reference.Reference` with `task_start`: under LoRA the stage-start adapter weights, swapped in
for its pass (no second model); under full fine-tuning a frozen copy of the backbone, refreshed at each stage start
(a second model in memory, sharded like the backbone under FSDP). Its pass runs in `before`, ahead of the student's
forward, so the swap never touches weights a pending backward pass reads. A resumed run starts a stage from its saved
weights, which are the teacher: nothing else needs keeping.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.arguments import finite_number
from cpt.methods.loss_terms import TrainingStep
from cpt.rl.log_probs import target_logits
from cpt.rl.reference import Reference


class LearningWithoutForgetting(Callback):
    name, needs_logits = "lwf", True

    def __init__(self, weight: float = 1.0, temperature: float = 2.0):
        self.weight = finite_number("lwf weight", weight, positive=True)
        self.temperature = finite_number("lwf temperature", temperature, positive=True)
        self.teacher: Reference | None = None
        self.teacher_logits: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.add_loss_term(self)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def frozen_copy() -> torch.nn.Module:
            return pl_module.build_backbone(pl_module.cfg.model).to(pl_module.device)

        self.teacher = Reference(pl_module.backbone, "task_start", build_copy=frozen_copy)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.teacher.start_task(pl_module.backbone)

    def before(self, step: TrainingStep) -> None:
        """The teacher's logits on the step's targets, softened, ahead of the student's forward."""
        self.teacher_logits = None
        if step.module.task_index == 0:
            return
        policy = step.module.backbone
        was_training = policy.training
        policy.eval()  # no dropout in the teacher's pass
        try:
            with torch.no_grad(), self.teacher.model(policy) as teacher:
                self.teacher_logits = target_logits(teacher, step.sequences, step.target_ids.shape[1])
        finally:
            policy.train(was_training)

    def loss(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, float]]:
        if self.teacher_logits is None:
            return None, {}
        teacher = (self.teacher_logits / self.temperature).log_softmax(-1)
        student = (step.logits / self.temperature).log_softmax(-1)
        per_target = (teacher.exp() * (teacher - student)).sum(-1)  # KL(teacher || student), (rows, n)
        counted = step.target_mask.float()
        self.teacher_logits = None
        return self.weight * step.share * (per_target * counted).sum() / counted.sum().clamp(min=1), {}
