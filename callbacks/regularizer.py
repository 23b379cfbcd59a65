"""Pulls the weights towards those of the previous stage: EWC (weighted by a diagonal Fisher), MAS (weighted by
the sensitivity of the model's output) or plain L2.

The continual-learning baseline the study compares RFT with: training that is penalised for moving away from what
earlier tasks taught it. The penalty is

    (strength / 2) * sum_i F_i * (theta_i - theta*_i)^2        (F = 1 for kind="l2")

over the trainable parameters, with theta* the weights at the end of the previous stage and F each parameter's
importance, each averaged over examples: for "ewc" the diagonal empirical Fisher of Kirkpatrick et al. (2017),
the mean over examples of the squared gradient of the example's answer log-likelihood; for "mas" (Memory Aware
Synapses, Aljundi et al. 2018) the mean over examples of the absolute gradient of the squared L2 norm of the
model's output, the logits predicting the answer tokens of an example with an answer and the next token of a
prompt, so it needs no labels and runs under RFT as well.

When its hooks fire:
- `setup`: it adds itself to the module's loss terms (cpt.methods.loss_terms), so every method's training loss
  carries the penalty: SFT's, RFT's and on-policy SFT's.
- `on_train_epoch_end` (the end of a stage, except the last): stores theta*, a detached copy of every trainable
  parameter; for "ewc" and "mas" it also estimates the importance on that stage's training batches (one backward
  pass per example: the square of a batch's mean gradient is not its examples' mean square) and adds it to the
  importance of the stages before, so the penalty protects every earlier task, not only the last one ("online" EWC
  with one anchor and a summed Fisher; MAS accumulates its importance over tasks the same way).
- every backward pass of later stages (`loss`): the penalty, times the pass's share of the optimizer step, joins
  the training loss and is logged as `loss/<kind>`. Its gradient is exactly strength * F * (theta -
  theta*) per optimizer step, taken on each process's own part of a sharded parameter; gradient clipping
  (trainer.gradient_clip_val) applies to the sum. During the first stage there is no anchor yet and nothing
  happens.

The importance of each stage is normalised to mean 1 over the trainable parameters before it is added: the
gradient of an example's loss depends on the answer's length, the loss scale and the model, and `strength` should
not.
So after k stages the importance has mean k, and `strength` weighs EWC, MAS and L2 alike on average; EWC and MAS
only shift the pull onto the parameters that mattered for earlier tasks.

Memory: one copy of the trainable parameters (theta*), plus one more for "ewc" and "mas" (the importance), in the
parameters' dtype and placement (sharded under FSDP). Both are in `state_dict`, so a resumed run continues.
"""

from __future__ import annotations

from itertools import islice

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import Strategy
from torch import nn

from cpt.callbacks.arguments import finite_number, positive_integer
from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.methods.loss_terms import TrainingStep, answer_targets
from cpt.model.answer_loss import answer_nll
from cpt.model.backbone import local_part
from cpt.model.fisher import gradient_importance, sum_over_shards, trainable_parameters
from cpt.rl.log_probs import target_logits

KINDS = ("ewc", "l2", "mas")


def output_norm(model: nn.Module, batch: Batch) -> torch.Tensor:
    """MAS's output: the squared L2 norm of the logits, averaged over the tokens they predict: a batch's answer
    tokens where it has answers, else each prompt's next token."""
    if batch.labels is not None and bool((batch.labels != IGNORE_INDEX).any()):
        n, _, counted = answer_targets(batch)
        logits = target_logits(model, batch, n)
    else:
        logits = model(**batch.model_inputs(), logits_to_keep=1).logits.float()
        counted = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    return (logits.square().sum(-1) * counted).sum() / counted.sum()


# What each weighted kind's importance is: the loss whose per-example gradient it reads, and what it takes of it.
IMPORTANCE = {"ewc": (answer_nll, torch.square), "mas": (output_norm, torch.abs)}


def normalised(importance: dict[str, torch.Tensor], params: dict[str, nn.Parameter],
               strategy: Strategy) -> dict[str, torch.Tensor]:
    """The importance divided by its mean over all trainable parameters (over all ranks' shards)."""
    mass = sum_over_shards(((params[name], local_part(value).sum()) for name, value in importance.items()), strategy)
    numel = sum(params[name].numel() for name in importance)  # a DTensor's numel is its global size
    mean = mass.item() / numel
    if not mean > 0:
        raise ValueError("the importance is zero on every trainable parameter: the loss had no gradient on the "
                         "stage's batches, so there is nothing to weigh by; use kind='l2'")
    return {name: value / mean for name, value in importance.items()}


def penalty_gradient(theta: torch.Tensor, anchor: torch.Tensor, strength: float,
                     importance: torch.Tensor | None = None) -> torch.Tensor:
    """strength * F * (theta - theta*), the gradient of (strength/2) * sum F (theta - theta*)^2; F = 1 if None."""
    drift = theta - anchor
    return strength * (drift if importance is None else importance * drift)


class ParameterRegularizer(Callback):
    """EWC, MAS or L2 pull towards the previous stage's weights; see the module docstring for when and how."""

    def __init__(self, kind: str = "ewc", strength: float = 1.0, fisher_batches: int = 16):
        # strength 1: with the Fisher normalised to mean 1, the penalty's gradient is on average the drift
        # theta - theta* itself. On the tiny model at the default lr a weight drifts by about 2e-3 (rms) in 20 steps
        # and more in a 100-step stage, while its loss gradient is about 3e-3: the pull is of the size of the
        # learning signal. Raise it (10-1000) to hold the weights tighter, lower it to let them go.
        # fisher_batches 16 (the importance's batches, EWC's and MAS's): 256 examples at the default batch size, one
        # backward pass each, a few seconds on the tiny model beside a 100-step stage; a stage with fewer batches
        # gives all of them.
        if kind not in KINDS:
            raise ValueError(f"regularizer kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
        strength = finite_number("regularizer strength", strength)
        self.kind, self.strength = kind, strength
        self.fisher_batches = positive_integer("fisher_batches", fisher_batches)
        self.name, self.needs_logits = kind, False  # a loss term (cpt.methods.loss_terms), logged as loss/<kind>
        self.anchor: dict[str, torch.Tensor] = {}
        self.importance: dict[str, torch.Tensor] = {}

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
        if self.kind in IMPORTANCE:
            stage = normalised(self.estimate_importance(trainer, pl_module), params, trainer.strategy)
            self.importance = {name: self.importance[name] + value if name in self.importance else value
                               for name, value in stage.items()}

    def estimate_importance(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        # Every rank reads the first rank's batches: a sharded parameter's gradient is averaged over the ranks in
        # each backward pass, which is one example's gradient only when every rank took the same example (and so
        # every replica of a whole parameter computes the same importance too).
        loader = trainer.datamodule.train_loader(trainer.current_epoch, rank=0)
        loss_fn, of = IMPORTANCE[self.kind]

        def loss(model: nn.Module, batch) -> torch.Tensor:
            with trainer.precision_plugin.forward_context():
                return loss_fn(model, batch.to(pl_module.device))

        # Drawing batches takes a seed from the global generator; forking it keeps training's random stream (and
        # so a run with strength 0) the same as without the regularizer.
        with torch.random.fork_rng(devices=[]):
            return gradient_importance(pl_module.backbone, islice(loader, self.fisher_batches), loss, of)

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
            importance = local_part(self.importance[name]) if self.kind in IMPORTANCE else None
            gradient = penalty_gradient(theta.detach(), anchor, self.strength * step.share, importance)
            parts.append((param, 0.5 * (gradient * (theta.detach() - anchor)).sum()))
            product = (theta * gradient).sum()
            surrogate = product if surrogate is None else surrogate + product
        penalty = sum_over_shards(parts, step.module.trainer.strategy).to(surrogate.device)
        return penalty + surrogate - surrogate.detach(), {}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "anchor": self.anchor, "importance": self.importance}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["kind"] != self.kind:
            raise ValueError(f"the checkpoint's regularizer is {state_dict['kind']!r}, this run's is {self.kind!r}; "
                             "resume with the same regularizer.kind")
        self.anchor = dict(state_dict["anchor"])
        self.importance = dict(state_dict.get("importance", state_dict.get("fisher", {})))  # "fisher": before MAS
