"""Terms a callback adds to the training loss: the extension point every method (SFT, RFT, on-policy SFT) gives the
continual-learning baselines (callbacks/regularizer.py's EWC, L2 and MAS penalties, LwF, DER).

A term is called on every batch a method takes a backward pass on, with a `TrainingStep`: the rows the loss sees
(prompts followed by their targets: SFT's answers, or the rollouts' completions), which of their last columns are
targets that count, and, when the term asks for them (`needs_logits`), the model's logits predicting those targets,
with their gradient. It returns its loss, already weighted (None: nothing this step), and metrics to log. The
method adds the terms' losses to its own before the backward pass and logs each as `loss/<name>`. A term may also
have `before(step)`, called with the same rows before the model's forward that computes the step's logits (there
`step.logits` is None): the place for a pass of another model, such as a teacher whose weights are swapped into the
model for it, which must not happen between the forward and its backward.

A method that takes several backward passes per optimizer step (RFT and on-policy SFT, in micro-batches) gives each
the `share` of the step it carries (its part of the step's counted tokens; the shares of one optimizer step add up
to 1). A term defined per optimizer step (a penalty on the weights) scales its loss by it; a term defined as a mean
over target tokens takes its micro-batch's mean times the share, which adds up to the mean over the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import lightning as L
import torch

from cpt.data.batches import IGNORE_INDEX, Batch


@dataclass
class TrainingStep:
    """One backward pass's worth of a training step, as a loss term sees it."""

    module: L.LightningModule  # the method's CPTModule
    sequences: Batch  # (rows, width): prompts followed by their targets, left-padded
    target_ids: torch.Tensor  # (rows, n): the targets, the last n columns of `sequences`
    target_mask: torch.Tensor  # (rows, n) bool: the targets that count (an answer's tokens; a completion's)
    logits: torch.Tensor | None  # (rows, n, vocab) float, predicting each target, with gradient; None unless asked
    share: float = 1.0  # this backward pass's part of the optimizer step


class LossTerm(Protocol):
    name: str  # logged as loss/<name>
    needs_logits: bool  # whether `loss` reads `step.logits` (RFT then computes the update's full logits)

    def loss(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, torch.Tensor | float]]:
        """The term's loss on this step (None: none) and metrics to log, by name."""


def answer_targets(batch: Batch) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(n, target_ids, target_mask) of a left-padded SFT batch: its answers are the last tokens of every row, n
    the longest."""
    counted = batch.labels != IGNORE_INDEX
    n = int(counted.sum(1).max())
    return n, batch.input_ids[:, -n:], counted[:, -n:]


def micro_batch_shares(counted: torch.Tensor, size: int) -> list[float]:
    """Each micro-batch's share of a step, micro-batches of `size` rows of `counted` (rows, tokens): its part of
    the counted tokens, or of the rows where none counts."""
    per_row = counted.sum(1).float().cpu()
    if per_row.sum() == 0:
        per_row = torch.ones_like(per_row)
    return [float(part.sum() / per_row.sum()) for part in per_row.split(size)]
