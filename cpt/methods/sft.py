"""Supervised fine-tuning: cross-entropy on the answer tokens only."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.methods.base import CPTModule


def sft_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE_INDEX (the answer)."""
    logits = model(**batch.model_inputs()).logits
    # The token at position i is predicted from the positions before it.
    predicted, target = logits[:, :-1].float(), batch.labels[:, 1:]
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX)


class SFTModule(CPTModule):
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = sft_loss(self.backbone, batch)
        self.check_finite_loss(loss, "SFT")
        size = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/task", float(self.task_index + 1), batch_size=size)
        return loss
