"""The next-token cross-entropy on a batch's answer tokens: SFT's loss, the loss the toy foundation is pre-trained
with, and (summed over an example's answer, its negative log-likelihood) the loss whose per-example gradients
weigh parameters for EWC and the analysis."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cpt.data.batches import IGNORE_INDEX, Batch


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


def answer_nll(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The negative log-likelihood of the batch's answers, summed over their tokens: for a batch of one example,
    -log p(answer | prompt), whose squared gradient is that example's term of the empirical Fisher."""
    return sft_token_losses(model, batch).sum()
