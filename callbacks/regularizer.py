"""Pulls the weights towards those of the previous stage: EWC (weighted by a diagonal Fisher) or plain L2.

The continual-learning baseline the study compares RFT with: training that is penalised for moving away from what
earlier tasks taught it. The penalty is

    (strength / 2) * sum_i F_i * (theta_i - theta*_i)^2        (F = 1 for kind="l2")

over the trainable parameters, with theta* the weights at the end of the previous stage.

When its hooks fire:
- `setup`: it adds itself to the module's loss terms (cpt.methods.loss_terms), so every method's training loss
  carries the penalty: SFT's, RFT's and on-policy SFT's.
- `on_train_epoch_end` (the end of a stage, except the last): stores theta*, a detached copy of every trainable
  parameter; for "ewc" it also estimates the diagonal Fisher on that stage's training batches and adds it to the
  Fisher of the stages before, so the penalty protects every earlier task, not only the last one ("online" EWC
  with one anchor and a summed Fisher).
- every backward pass of later stages (`loss`): the penalty, times the pass's share of the optimizer step, joins
  the training loss and is logged as `loss/ewc` or `loss/l2`. Its gradient is exactly strength * F * (theta -
  theta*) per optimizer step, taken on each process's own part of a sharded parameter; gradient clipping
  (trainer.gradient_clip_val) applies to the sum. During the first stage there is no anchor yet and nothing
  happens.

The Fisher of each stage is normalised to mean 1 over the trainable parameters before it is added: the squared
gradient of a batch's mean loss depends on the batch size, the loss scale and the model, and `strength`
should not. So after k stages the Fisher has mean k, and `strength` weighs EWC and L2 alike on average; EWC
only shifts the pull onto the parameters that mattered for earlier tasks.

Memory: one copy of the trainable parameters (theta*), plus one more for "ewc" (the Fisher), in the
parameters' dtype and placement (sharded under FSDP). Both are in `state_dict`, so a resumed run continues.
"""

from __future__ import annotations

import math
from itertools import islice

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import Strategy
from torch import nn
from torch.distributed.tensor import DTensor

from cpt.methods.loss_terms import TrainingStep
from cpt.methods.sft import sft_loss
from cpt.model.backbone import local_part
from cpt.model.fisher import diagonal_fisher, sum_over_shards, trainable_parameters

KINDS = ("ewc", "l2")


def normalised(fisher: dict[str, torch.Tensor], params: dict[str, nn.Parameter],
               strategy: Strategy) -> dict[str, torch.Tensor]:
    """The Fisher divided by its mean over all trainable parameters (over all ranks' shards)."""
    mass = sum_over_shards(((params[name], local_part(value).sum()) for name, value in fisher.items()), strategy)
    numel = sum(params[name].numel() for name in fisher)  # a DTensor's numel is its global size
    mean = mass.item() / numel
    if not mean > 0:
        raise ValueError("the Fisher is zero on every trainable parameter: the loss had no gradient on the stage's "
                         "batches, so EWC has nothing to weigh by; use kind='l2'")
    return {name: value / mean for name, value in fisher.items()}


def penalty_gradient(theta: torch.Tensor, anchor: torch.Tensor, strength: float,
                     fisher: torch.Tensor | None = None) -> torch.Tensor:
    """strength * F * (theta - theta*), the gradient of (strength/2) * sum F (theta - theta*)^2; F = 1 if None."""
    drift = theta - anchor
    return strength * (drift if fisher is None else fisher * drift)


class ParameterRegularizer(Callback):
    """EWC or L2 pull towards the previous stage's weights; see the module docstring for when and how."""

    def __init__(self, kind: str = "ewc", strength: float = 1.0, fisher_batches: int = 16):
        # strength 1: with the Fisher normalised to mean 1, the penalty's gradient is on average the drift
        # theta - theta* itself. On the tiny model at the default lr a weight drifts by about 2e-3 (rms) in 20 steps
        # and more in a 100-step stage, while its loss gradient is about 3e-3: the pull is of the size of the
        # learning signal. Raise it (10-1000) to hold the weights tighter, lower it to let them go.
        # fisher_batches 16: 256 examples at the default batch size, cheap beside a 100-step stage; a stage
        # with fewer batches gives all of them.
        if kind not in KINDS:
            raise ValueError(f"regularizer kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
                or strength < 0:
            raise ValueError(f"regularizer strength must be a finite number >= 0, got {strength!r}")
        if isinstance(fisher_batches, bool) or not isinstance(fisher_batches, int) or fisher_batches < 1:
            raise ValueError(f"fisher_batches must be a positive integer, got {fisher_batches!r}")
        self.kind, self.strength, self.fisher_batches = kind, float(strength), fisher_batches
        self.name, self.needs_logits = kind, False  # a loss term (cpt.methods.loss_terms), logged as loss/<kind>
        self.anchor: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.add_loss_term(self)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.kind == "ewc" and not pl_module.trains_on_answers:
            raise ValueError("the EWC Fisher is estimated from the SFT loss on the answers, and this method's "
                             "batches carry prompts only; use kind='l2'")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= trainer.max_epochs:
            return  # no later stage to hold to this one
        params = trainable_parameters(pl_module.backbone)
        self.anchor = {name: param.detach().clone() for name, param in params.items()}
        if self.kind == "ewc":
            stage = normalised(self.estimate_fisher(trainer, pl_module), params, trainer.strategy)
            self.fisher = {name: self.fisher[name] + value if name in self.fisher else value
                           for name, value in stage.items()}

    def estimate_fisher(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        loader = trainer.datamodule.train_loader(trainer.current_epoch, trainer.global_rank)

        def loss(model: nn.Module, batch) -> torch.Tensor:
            with trainer.precision_plugin.forward_context():
                return sft_loss(model, batch.to(pl_module.device))

        # Drawing batches takes a seed from the global generator; forking it keeps training's random stream (and
        # so a run with strength 0) the same as without the regularizer.
        with torch.random.fork_rng(devices=[]):
            fisher = diagonal_fisher(pl_module.backbone, islice(loader, self.fisher_batches), loss)
        # A whole (unsharded) parameter's gradient above was this rank's alone (DDP syncs only inside the training
        # step): average over the ranks, so that every replica adds the same penalty and they stay equal.
        params = trainable_parameters(pl_module.backbone)
        return {name: value if isinstance(params[name], DTensor)
                else trainer.strategy.reduce(value, reduce_op="sum") / trainer.world_size
                for name, value in fisher.items()}

    def loss(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The penalty on the current weights, times `step.share`. Its value is the whole penalty (summed over
        the processes' shards); its gradient is exactly the share of strength * F * (theta - theta*), on each
        process's part of every parameter (the product with the detached gradient makes it so: no second
        derivative of the square, no collective in the backward pass)."""
        if not self.anchor:
            return None, {}
        parts, surrogate = [], None
        for name, param in trainable_parameters(step.module.backbone).items():
            theta, anchor = local_part(param), local_part(self.anchor[name])
            fisher = local_part(self.fisher[name]) if self.kind == "ewc" else None
            gradient = penalty_gradient(theta.detach(), anchor, self.strength * step.share, fisher)
            parts.append((param, 0.5 * (gradient * (theta.detach() - anchor)).sum()))
            product = (theta * gradient).sum()
            surrogate = product if surrogate is None else surrogate + product
        penalty = sum_over_shards(parts, step.module.trainer.strategy).to(surrogate.device)
        return penalty + surrogate - surrogate.detach(), {}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "anchor": self.anchor, "fisher": self.fisher}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["kind"] != self.kind:
            raise ValueError(f"the checkpoint's regularizer is {state_dict['kind']!r}, this run's is {self.kind!r}; "
                             "resume with the same regularizer.kind")
        self.anchor, self.fisher = dict(state_dict["anchor"]), dict(state_dict["fisher"])
