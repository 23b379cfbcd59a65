"""Supervised fine-tuning: cross-entropy on the answer tokens only."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.methods.base import CPTModule


def sft_token_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(rows, width - 1) the next-token cross-entropy of every label that is not IGNORE_INDEX (the answer's
    tokens), 0 elsewhere; column i is the loss of token i + 1, predicted from the positions before it."""
    logits = model(**batch.model_inputs()).logits
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch.labels[:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="none")


def sft_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels that are not IGNORE_INDEX)."""
    return sft_token_losses(model, batch).sum() / (batch.labels[:, 1:] != IGNORE_INDEX).sum()


class SFTModule(CPTModule):
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = sft_loss(self.backbone, batch)
        self.check_finite_loss(loss, "SFT")
        size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/task", float(self.task_index + 1), batch_size=size)
        return loss
