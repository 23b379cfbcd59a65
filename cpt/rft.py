"""Reinforcement fine-tuning of the GRPO family: sample G completions per prompt, score them, and raise the
probability of those that did better than their group.

One training step follows a batch of prompts through:
  1. rollouts:   each prompt repeated G times, sampled in one batched `generate` with the KV cache;
  2. rewards:    the reward function scores every completion (cpt.rewards); ReMax also decodes greedily;
  3. advantages: per group of G (cpt.advantages), after subtracting beta * KL when the KL sits in the reward;
  4. update:     `rft.epochs` optimizer steps on the clipped surrogate (cpt.policy_loss), plus beta * KL per
                 token when the KL sits in the loss, in micro-batches that add up to the whole batch's loss.
Nothing here knows about a particular task: the task's scorer and the template reach the reward function.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from cpt.advantages import group_advantages
from cpt.config import kl_values
from cpt.data import model_inputs, repeat_rows, slice_rows
from cpt.generation import Sampling, generate_ids
from cpt.module import CPTModule
from cpt.policy_loss import aggregate, clipped_surrogate, kl_estimate, loss_denominator
from cpt.reference import Reference
from cpt.rewards import Rewards, ScoredRollouts
from cpt.tasks import Task


def completion_mask(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of each completion's tokens up to and including its first end-of-turn token, truncated rows:
    those that never emitted it)."""
    is_eos = (ids == eos_id).long()
    before_first_eos = (is_eos.cumsum(1) - is_eos) == 0
    return before_first_eos, is_eos.sum(1) == 0


def completion_inputs(prompts: dict, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Model inputs of prompts followed by their completions (tokens after the first end-of-turn masked out)."""
    return {**model_inputs(prompts), "image_counts": prompts["image_counts"],
            "input_ids": torch.cat([prompts["input_ids"], ids], 1),
            "attention_mask": torch.cat([prompts["attention_mask"], mask.long()], 1)}


def token_log_probs(model: nn.Module, inputs: dict, completion_ids: torch.Tensor, temperature: float,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token | prefix) of every completion token under the sampling temperature, and the entropy of
    the next-token distribution (a health metric, without gradient)."""
    n = completion_ids.shape[1]
    # The logits at position i predict token i + 1: the last n + 1 positions cover the n completion tokens.
    logits = model(**model_inputs(inputs), logits_to_keep=n + 1).logits[:, :-1].float() / temperature
    log_probs = logits.log_softmax(-1)
    chosen = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    return chosen, entropy


class RFTModule(CPTModule):
    trains_on_answers = False

    def __init__(self, cfg: DictConfig, checkpoint: Path, tasks: Sequence[Task] = ()):
        super().__init__(cfg, checkpoint, tasks)
        self.automatic_optimization = False  # several optimizer steps per rollout batch (rft.epochs)
        self.rewards = Rewards.from_config(cfg.rft.reward)
        self.kl_coef = kl_values(cfg)[0]  # callbacks/kl_schedule.py sets it per stage or step
        self.reference: Reference | None = None
        # callbacks/online_filter.py installs itself here: it swaps groups whose rewards are all equal for fresh ones
        self.group_filter = None
        self.timing: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}  # the latest step's metrics, for callbacks

    def configure_model(self) -> None:
        super().configure_model()
        if max(kl_values(self.cfg)) > 0 and self.reference is None:
            self.reference = Reference(self.backbone, self.cfg.rft.kl.reference,
                                       build_copy=lambda: self.build_backbone(self.cfg.model))

    def optimizer_steps_per_stage(self) -> int:
        return super().optimizer_steps_per_stage() * self.cfg.rft.epochs

    def on_train_epoch_start(self) -> None:
        if self.reference is not None:
            self.reference.start_task(self.backbone)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the time spent inside to this step's `time/<phase>`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[phase] = self.timing.get(phase, 0.0) + time.perf_counter() - start

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) for the passes without gradient: rollouts, old and reference log-probs."""
        self.backbone.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.backbone.train()

    def sample(self, prompts: dict, greedy: bool = False) -> torch.Tensor:
        """Completion ids: sampled rollouts, or the greedy ones (ReMax's baseline)."""
        rft = self.cfg.rft
        with self.evaluating(), self.timed("generate"):
            return generate_ids(self.backbone, self.processor, prompts, rft.max_new_tokens,
                                synced=self.trainer.world_size > 1,
                                sampling=None if greedy else Sampling(rft.temperature, rft.top_p))

    def score(self, ids: torch.Tensor, batch: dict) -> ScoredRollouts:
        """Rewards of completions `ids` of the batch's rows, each by its own task's scorer."""
        with self.timed("score"):
            texts = [self.processor.decode(row) for row in ids]
            tasks = [self.tasks[int(t)] for t in batch["task"]]
            return self.rewards(texts, batch["examples"], [t.scorer for t in tasks], [t.template for t in tasks])

    def rollouts(self, batch: dict, group_size: int | None = None) -> tuple[dict, torch.Tensor, ScoredRollouts]:
        """Each prompt repeated G times (a group stays together on this rank), the sampled completions, their
        rewards."""
        prompts = repeat_rows(batch, group_size or self.cfg.rft.group_size)
        ids = self.sample(prompts)
        return prompts, ids, self.score(ids, prompts)

    def log_probs(self, model: nn.Module, inputs: dict, ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of all rollouts without gradient, in micro-batches."""
        size = self.cfg.rft.micro_batch_size or len(ids)
        return torch.cat([token_log_probs(model, slice_rows(inputs, i, i + size), ids[i:i + size],
                                          self.cfg.rft.temperature)[0] for i in range(0, len(ids), size)])

    def training_step(self, batch: dict, batch_idx: int) -> None:
        rft = self.cfg.rft
        beta = self.kl_coef if self.reference is not None else 0.0
        self.timing = {"generate": 0.0, "score": 0.0}

        # 1-2. rollouts and their rewards (ReMax also decodes greedily for its baseline)
        prompts, ids, scored = self.rollouts(batch)
        sampled, filter_stats = scored, {}  # reward metrics describe the batch as drawn, before any filtering
        if self.group_filter is not None:
            prompts, ids, scored, filter_stats = self.group_filter.select(self, prompts, ids, scored)
        greedy = self.score(self.sample(batch, greedy=True), batch) if rft.advantage == "remax" else None
        scored_at = time.perf_counter()

        mask, truncated = completion_mask(ids, self.processor.eos_id)
        counted = (mask & ~truncated.unsqueeze(1)) if rft.mask_truncated else mask
        counted = counted.float()
        inputs = completion_inputs(prompts, ids, mask)

        # 3. old and reference log-probs, advantages
        with self.evaluating():
            need_old = rft.epochs > 1 or (beta > 0 and rft.kl.placement == "reward")
            old_logp = self.log_probs(self.backbone, inputs, ids) if need_old else None
            ref_logp = None
            if beta > 0:
                with self.reference.model(self.backbone) as reference:
                    ref_logp = self.log_probs(reference, inputs, ids)
        reward = scored.total.to(self.device)
        if beta > 0 and rft.kl.placement == "reward":
            reward = reward - beta * (kl_estimate(old_logp, ref_logp, rft.kl.estimator) * counted).sum(1)
        advantages = group_advantages(reward.view(-1, rft.group_size), rft.advantage,
                                      None if greedy is None else greedy.total.to(self.device)).flatten()

        # 4. update
        stats = self.update(inputs, ids, counted, advantages, old_logp, ref_logp, beta)
        done = time.perf_counter()

        groups = sampled.total.view(-1, rft.group_size)
        metrics = {
            "reward/total": sampled.total.mean(),
            "reward/total_std": sampled.total.std() if len(sampled.total) > 1 else 0.0,
            "reward/errors": float(sampled.errors + (greedy.errors if greedy is not None else 0)),
            "rollout/all_equal_groups": (groups.max(1).values == groups.min(1).values).float().mean(),
            # Var[reward] within a prompt's group: what scales the policy gradient (see callbacks/analysis.py).
            "reward/group_var": groups.var(1, unbiased=False).mean(),
            "rollout/completion_length": mask.sum(1).float().mean(), "rollout/truncated": truncated.float().mean(),
            "time/generate": self.timing["generate"], "time/score": self.timing["score"],
            "time/update": done - scored_at,
            "train/task": float(self.task_index + 1), **stats, **filter_stats,
        }
        for name, values in sampled.components.items():
            metrics[f"reward/{name}"] = values.mean()
            metrics[f"reward/{name}_std"] = values.std() if len(values) > 1 else 0.0
        if greedy is not None:
            metrics["reward/greedy"] = greedy.total.mean()
        self.last_metrics = {k: float(v) for k, v in metrics.items()}
        self.log("reward", sampled.total.mean(), prog_bar=True, batch_size=len(ids), logger=False)
        self.log_dict(self.last_metrics, batch_size=len(ids),
                      sync_dist=self.trainer.world_size > 1)

    def update(self, inputs: dict, ids: torch.Tensor, counted: torch.Tensor, advantages: torch.Tensor,
               old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, beta: float) -> dict[str, float]:
        """`rft.epochs` optimizer steps over the rollouts; returns token-weighted health statistics."""
        rft = self.cfg.rft
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        size = rft.micro_batch_size or len(ids)
        denominator = loss_denominator(counted, rft.loss_aggregation)
        tokens = max(float(counted.sum()), 1.0)
        # Accumulated on the device and read once at the end: a float() per micro-batch would wait for the GPU.
        sums = {name: torch.zeros((), device=counted.device)
                for name in ("loss", "kl", "entropy", "clip_low", "clip_high")}
        for epoch in range(rft.epochs):
            for i in range(0, len(ids), size):
                rows = slice(i, i + size)
                m = counted[rows]
                logp, entropy = token_log_probs(self.backbone, slice_rows(inputs, i, i + size), ids[rows],
                                                rft.temperature, with_entropy=epoch == 0)
                # With one epoch the rollouts come from the current policy: the ratio is 1 and its gradient is
                # the policy gradient, so no extra forward pass is needed for the old log-probs.
                old = old_logp[rows] if old_logp is not None else logp.detach()
                per_token, low, high = clipped_surrogate(logp, old, advantages[rows], rft.clip_low, rft.clip_high)
                if beta > 0:
                    in_loss = rft.kl.placement == "loss"
                    kl = kl_estimate(logp if in_loss else logp.detach(), ref_logp[rows], rft.kl.estimator)
                    if in_loss:
                        per_token = per_token + beta * kl
                    if epoch == 0:
                        sums["kl"] += (kl.detach() * m).sum()
                loss = aggregate(per_token, m, rft.loss_aggregation, denominator)
                self.check_finite_loss(loss, "RFT")
                self.manual_backward(loss)
                sums["loss"] += loss.detach() / rft.epochs
                sums["clip_low"] += (low * m).sum() / rft.epochs
                sums["clip_high"] += (high * m).sum() / rft.epochs
                if entropy is not None:
                    sums["entropy"] += (entropy * m).sum()
            if self.cfg.trainer.gradient_clip_val is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.cfg.trainer.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        stats = {"train/loss": sums["loss"], "policy/entropy": sums["entropy"] / tokens,
                 "policy/clip_low": sums["clip_low"] / tokens, "policy/clip_high": sums["clip_high"] / tokens}
        if beta > 0:
            stats["policy/kl"] = sums["kl"] / tokens
        return {name: float(value) for name, value in stats.items()}
