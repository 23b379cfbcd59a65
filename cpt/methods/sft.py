"""Supervised fine-tuning: cross-entropy on the answer tokens only."""

from __future__ import annotations

import torch

from cpt.data.batches import Batch
from cpt.methods.base import CPTModule
from cpt.methods.loss_terms import TrainingStep, answer_targets
from cpt.model.answer_loss import mean_answer_loss


class SFTModule(CPTModule):
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        n, target_ids, target_mask = answer_targets(batch)
        step = TrainingStep(self, batch, target_ids, target_mask, None)
        self.loss_terms_before(step)
        logits = self.backbone(**batch.model_inputs()).logits
        loss = mean_answer_loss(logits, batch.labels)
        if self.terms_need_logits():
            step.logits = logits[:, -n - 1:-1].float()
        extra, metrics = self.loss_terms_on(step)
        total = loss if extra is None else loss + extra
        self.check_finite_loss(total, "SFT")
        size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/task", float(self.task_index + 1), batch_size=size)
        if metrics:
            self.log_dict(metrics, batch_size=size)
        return total
