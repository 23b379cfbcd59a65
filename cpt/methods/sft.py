"""Supervised fine-tuning: cross-entropy on the answer tokens only."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.methods.base import CPTModule
from cpt.methods.loss_terms import TrainingStep, answer_targets


def answer_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(rows, width - 1) the next-token cross-entropy of every label that is not IGNORE_INDEX (the answer's
    tokens), 0 elsewhere; column i is the loss of token i + 1, predicted from the positions before it."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="none")


def mean_answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels that are not IGNORE_INDEX)."""
    return answer_token_losses(logits, labels).sum() / (labels[:, 1:] != IGNORE_INDEX).sum()


def sft_token_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """`answer_token_losses` of the model on the batch."""
    return answer_token_losses(model(**batch.model_inputs()).logits, batch.labels)


def sft_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """`mean_answer_loss` of the model on the batch."""
    return mean_answer_loss(model(**batch.model_inputs()).logits, batch.labels)


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
