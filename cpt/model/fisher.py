"""The diagonal Fisher of a model's trainable parameters, and sums over parameters that may be sharded: what the EWC
regularizer weighs its pull by and what the forgetting analysis weighs a stage's update by."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from lightning.pytorch.strategies import Strategy
from torch import nn
from torch.distributed.tensor import DTensor

from cpt.data.batches import Batch
from cpt.model.backbone import local_part


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def sum_over_shards(parts: Iterable[tuple[torch.Tensor, torch.Tensor]], strategy: Strategy) -> torch.Tensor:
    """The sum over (parameter, sum over this rank's part of it) pairs: the parts of sharded parameters are added
    up over ranks (one reduction); a plain parameter is whole on every rank and counts once. Elementwise
    arithmetic between a parameter, its gradient and copies of the parameter is the same on every rank's part."""
    sharded, whole = [], []
    for param, value in parts:
        (sharded if isinstance(param, DTensor) else whole).append(value.float())
    result = torch.zeros(())
    if sharded:  # every rank holds the same parameters, so every rank takes part in this reduction
        result = strategy.reduce(torch.stack(sharded).sum(), reduce_op="sum")
    if whole:
        result = result.to(whole[0].device) + torch.stack(whole).sum()
    return result


def diagonal_fisher(model: nn.Module, batches: Iterable[Batch], loss_fn: Callable[[nn.Module, Batch], torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters (Kirkpatrick et al., 2017): the squared gradient of
    each example's loss, averaged over the examples. See `gradient_importance`."""
    return gradient_importance(model, batches, loss_fn, torch.square)


def gradient_importance(model: nn.Module, batches: Iterable[Batch],
                        loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
                        of: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per trainable parameter, `of` its gradient of each example's loss, averaged over every example of the
    batches: the squared gradient of an example's negative log-likelihood is the diagonal empirical Fisher (EWC),
    the absolute gradient of its output's squared norm MAS's importance (Aljundi et al., 2018).

    Each example takes its own backward pass (a batch of one): the square (or absolute value) of a batch's mean
    gradient is not the mean of its examples' squares, since the examples' gradients cancel in the mean.
    The model runs in eval mode (no dropout) and is put back in the mode it was in; gradients are cleared
    before and after, so the training step that follows starts clean.
    """
    params = trainable_parameters(model)
    importance = {name: torch.zeros_like(param) for name, param in params.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            for row in range(len(batch)):
                model.zero_grad(set_to_none=True)
                loss_fn(model, batch.select([row])).backward()
                for name, param in params.items():
                    if param.grad is not None:
                        local_part(importance[name]).add_(of(local_part(param.grad).detach()))
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ValueError("no examples to estimate the parameters' importance on; it needs at least one")
    return {name: value / count for name, value in importance.items()}
