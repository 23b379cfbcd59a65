"""Reinforcement fine-tuning of the GRPO family: sample G completions per prompt, score them, and raise the
probability of those that did better than their group.

One training step follows a batch of prompts through five steps, one method each:
  1. roll_out:    G completions of each prompt, sampled in one batched `generate` with the KV cache (each prompt
                  prefilled once and its cache copied to its G rows, with rft.shared_prefix), and every
                  completion scored by the reward function (cpt.rl.rewards); ReMax also decodes greedily;
  2. filter:      the rollout filters (`add_rollout_filter`, e.g. callbacks/online_filter.py) may swap groups;
  3. log_probs:   the old and the reference policy's log-probabilities, without gradient, where the loss needs them;
  4. advantages:  per group of G (cpt.rl.advantages), after subtracting beta * KL when the KL sits in the reward;
  5. update:      `rft.epochs` optimizer steps on the clipped surrogate (cpt.rl.policy_loss), plus beta * KL per
                  token when the KL sits in the loss, in micro-batches that add up to the whole batch's loss.
Steps 3 and 5 run each group's prompt once and its G completions on top of it (rft.shared_prefix), and compute
the vocabulary-wide logits rft.log_prob_chunk tokens at a time (cpt.rl.log_probs).
Rollouts travel between the steps, and to the callbacks, as one `Rollouts` (cpt.rl.rollouts). Nothing here knows
about a particular task: the task's scorer and the template reach the reward function.

Extension points for callbacks: `add_rollout_filter(filter)` (step 2) and `set_kl_coef(beta)` (callbacks/
kl_schedule.py); `roll_out` samples and scores rollouts for anyone (callbacks/rollout_filter.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from cpt.config import kl_values
from cpt.data.batches import Batch
from cpt.data.tasks import Task
from cpt.methods.base import CPTModule
from cpt.methods.loss_terms import TrainingStep, micro_batch_shares
from cpt.model.generation import PromptCache, Sampling, generate_ids
from cpt.rl.advantages import group_advantages
from cpt.rl.log_probs import logits_log_probs, takes_block_masks, target_logits, token_log_probs
from cpt.rl.policy_loss import aggregate, clipped_surrogate, kl_estimate, loss_denominator
from cpt.rl.reference import Reference
from cpt.rl.rewards import Rewards, Scores
from cpt.rl.rollouts import Rollouts

log = logging.getLogger(__name__)


class RolloutFilter(Protocol):
    """Step 2 of an RFT step: sees every rollout batch after scoring and returns the one to train on."""

    def select(self, module: RFTModule, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        """The rollouts to train on, as many groups as given; and metrics to log with the step."""


class RFTModule(CPTModule):
    trains_on_answers = False

    def __init__(self, cfg: DictConfig, checkpoint: Path, tasks: Sequence[Task] = ()):
        super().__init__(cfg, checkpoint, tasks)
        self.automatic_optimization = False  # several optimizer steps per rollout batch (rft.epochs)
        self.rewards = Rewards.from_config(cfg.rft.reward)
        self.kl_coef = kl_values(cfg)[0]  # beta; callbacks/kl_schedule.py sets it per stage or step
        self.reference: Reference | None = None
        self.rollout_filters: list[RolloutFilter] = []
        self.timing: dict[str, float] = {}

    def add_rollout_filter(self, rollout_filter: RolloutFilter) -> None:
        """Run `rollout_filter.select` on every rollout batch after scoring (in the order added)."""
        if rollout_filter not in self.rollout_filters:
            self.rollout_filters.append(rollout_filter)

    def set_kl_coef(self, beta: float) -> None:
        """The weight of the KL term from the next step on (no effect where no reference is loaded)."""
        if beta < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {beta}")
        self.kl_coef = beta

    @property
    def beta(self) -> float:
        """The KL weight in effect: 0 without a reference model."""
        return self.kl_coef if self.reference is not None else 0.0

    def configure_model(self) -> None:
        super().configure_model()
        if self.cfg.rft.shared_prefix and not takes_block_masks(self.backbone):
            log.warning("rft.shared_prefix: flash-attention takes no block mask, so the log-probability passes "
                        "repeat each prompt on its G rows (rollouts still prefill it once); attn_implementation=sdpa "
                        "shares it there too")
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

    def prefill(self, prompts: Batch) -> PromptCache | None:
        """The prompts' KV cache, computed once for all their rollouts; None without rft.shared_prefix."""
        if not self.cfg.rft.shared_prefix:
            return None
        with self.evaluating(), self.timed("generate"):
            return PromptCache.prefill(self.backbone, prompts)

    def sample(self, prompts: Batch, repeats: int = 1, greedy: bool = False,
               prefix: PromptCache | None = None) -> torch.Tensor:
        """Completion ids, `repeats` per prompt: sampled rollouts, or the greedy ones (ReMax's baseline)."""
        rft = self.cfg.rft
        with self.evaluating(), self.timed("generate"):
            return generate_ids(self.backbone, self.processor, prompts, rft.max_new_tokens,
                                synced=self.trainer.world_size > 1,
                                sampling=None if greedy else Sampling(rft.temperature, rft.top_p),
                                repeats=repeats, prefix=prefix)

    def score(self, ids: torch.Tensor, batch: Batch) -> Scores:
        """Rewards of completions `ids` of the batch's rows, each by its own task's scorer."""
        with self.timed("score"):
            texts = [self.processor.decode(row) for row in ids]
            tasks = [self.tasks[int(t)] for t in batch.task]
            return self.rewards(texts, batch.examples, [t.scorer for t in tasks], [t.template for t in tasks])

    # --- the five steps ---------------------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        self.timing = {"generate": 0.0, "score": 0.0, "update": 0.0}
        remax = self.cfg.rft.advantage == "remax"
        prefix = self.prefill(batch)
        drawn = self.roll_out(batch, prefix=prefix)
        rollouts, filter_stats = self.filter(drawn)
        greedy = self.roll_out(batch, greedy=True, prefix=prefix) if remax else None
        del prefix  # the prompts' KV cache: not needed by the update
        with self.timed("update"):
            counted = self.counted_tokens(rollouts)
            old_logp, ref_logp = self.log_probs(rollouts)
            advantages = self.advantages(rollouts, counted, old_logp, ref_logp, greedy)
            stats = self.update(rollouts, counted, advantages, old_logp, ref_logp)
        self.log_step(drawn, rollouts, greedy, {**stats, **filter_stats})

    def roll_out(self, batch: Batch, group_size: int | None = None, greedy: bool = False,
                 prefix: PromptCache | None = None) -> Rollouts:
        """1. G completions of each prompt, consecutive rows (a group stays together on this rank), sampled and
        scored; with `greedy`, one per prompt, decoded greedily. `prefix`: the batch's PromptCache, when the
        caller made one to share (with rft.shared_prefix one is made here otherwise)."""
        size = 1 if greedy else group_size or self.cfg.rft.group_size
        if prefix is None:
            prefix = self.prefill(batch)
        ids = self.sample(batch, size, greedy, prefix)
        prompts = batch.repeat(size) if size > 1 else batch
        return Rollouts.sampled(prompts, ids, self.processor.eos_id, size).scored(self.score(ids, prompts))

    def filter(self, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        """2. The rollout filters' choice of rollouts, and their metrics."""
        stats: dict[str, float] = {}
        for rollout_filter in self.rollout_filters:
            rollouts, found = rollout_filter.select(self, rollouts)
            stats.update(found)
        return rollouts, stats

    def log_probs(self, rollouts: Rollouts) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """3. The old policy's log-probabilities (needed with several epochs, or for a KL in the reward) and the
        reference's (with a KL term), without gradient."""
        rft = self.cfg.rft
        with self.evaluating():
            need_old = rft.epochs > 1 or (self.beta > 0 and rft.kl.placement == "reward")
            old_logp = self.batched_log_probs(self.backbone, rollouts) if need_old else None
            ref_logp = None
            if self.beta > 0:
                with self.reference.model(self.backbone) as reference:
                    ref_logp = self.batched_log_probs(reference, rollouts)
        return old_logp, ref_logp

    def advantages(self, rollouts: Rollouts, counted: torch.Tensor, old_logp: torch.Tensor | None,
                   ref_logp: torch.Tensor | None, greedy: Rollouts | None) -> torch.Tensor:
        """4. (rollouts,) advantages over each group, from rewards less beta * KL when the KL sits in the reward."""
        rft = self.cfg.rft
        reward = rollouts.rewards.to(self.device)
        if self.beta > 0 and rft.kl.placement == "reward":
            reward = reward - self.beta * (kl_estimate(old_logp, ref_logp, rft.kl.estimator) * counted).sum(1)
        baseline = None if greedy is None else greedy.rewards.to(self.device)
        return group_advantages(reward.view(-1, rft.group_size), rft.advantage, baseline).flatten()

    def update(self, rollouts: Rollouts, counted: torch.Tensor, advantages: torch.Tensor,
               old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None) -> dict[str, float]:
        """5. `rft.epochs` optimizer steps over the rollouts; returns token-weighted health statistics."""
        rft, beta = self.cfg.rft, self.beta
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        ids = rollouts.completion_ids
        size = rft.micro_batch_size or len(ids)
        denominator = loss_denominator(counted, rft.loss_aggregation)
        tokens = max(float(counted.sum()), 1.0)
        # Accumulated on the device and read once at the end: a float() per micro-batch would wait for the GPU.
        sums = {name: torch.zeros((), device=counted.device)
                for name in ("loss", "kl", "entropy", "clip_low", "clip_high")}
        terms: dict[str, torch.Tensor | float] = {}
        shares = micro_batch_shares(counted, size)
        for epoch in range(rft.epochs):
            for i in range(0, len(ids), size):
                rows = slice(i, i + size)
                m = counted[rows]
                logp, entropy, step = self.update_log_probs(rollouts, m, i, shares[i // size],
                                                            with_entropy=epoch == 0)
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
                extra = self.add_terms(step, terms, rft.epochs)
                self.check_finite_loss(loss if extra is None else loss + extra, "RFT")
                self.manual_backward(loss if extra is None else loss + extra)
                sums["loss"] += loss.detach() / rft.epochs
                sums["clip_low"] += (low * m).sum() / rft.epochs
                sums["clip_high"] += (high * m).sum() / rft.epochs
                if entropy is not None:
                    sums["entropy"] += (entropy * m).sum()
            self.step_optimizer(optimizer, scheduler)
        stats = {"train/loss": sums["loss"], "policy/entropy": sums["entropy"] / tokens,
                 "policy/clip_low": sums["clip_low"] / tokens, "policy/clip_high": sums["clip_high"] / tokens}
        if beta > 0:
            stats["policy/kl"] = sums["kl"] / tokens
        return {name: float(value) for name, value in {**stats, **terms}.items()}

    # --- helpers ----------------------------------------------------------------------------------------------

    def step_optimizer(self, optimizer, scheduler) -> None:
        """One optimizer step on the accumulated gradient, clipped to trainer.gradient_clip_val, and one
        learning-rate step (a manually optimised module clips and steps itself)."""
        if self.cfg.trainer.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.cfg.trainer.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    def counted_tokens(self, rollouts: Rollouts) -> torch.Tensor:
        """(rollouts, tokens) 1.0 on the tokens the loss counts: each completion's, or none of a truncated one's
        with rft.mask_truncated."""
        mask = rollouts.mask & ~rollouts.truncated.unsqueeze(1) if self.cfg.rft.mask_truncated else rollouts.mask
        return mask.float()

    def rollout_log_probs(self, model: nn.Module, rollouts: Rollouts, start: int, stop: int,
                          with_entropy: bool = False, temperature: float | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probabilities (and entropies) of rollouts start..stop-1 under `model` at `temperature` (the
        rollouts', rft.temperature, by default), as rft.shared_prefix and rft.log_prob_chunk ask, of the
        distribution sampling draws from (the placeholders it never writes taken out)."""
        rft = self.cfg.rft
        stop = min(stop, len(rollouts))
        groups = torch.arange(start, stop) // rollouts.group_size if rft.shared_prefix else None
        return token_log_probs(model, rollouts.prompts.rows(start, stop), rollouts.completion_ids[start:stop],
                               rollouts.mask[start:stop], rft.temperature if temperature is None else temperature,
                               with_entropy, groups, rft.log_prob_chunk, self.processor.placeholder_ids)

    def update_log_probs(self, rollouts: Rollouts, counted: torch.Tensor, start: int, share: float,
                         with_entropy: bool = False, temperature: float | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None, TrainingStep]:
        """`rollout_log_probs` of the policy with gradient for an update, of the micro-batch of rollouts from
        `start` whose counted tokens are `counted`, and the `TrainingStep` its loss terms see (with its `share` of
        the step, and its logits when a term asks for them: the log-probabilities then come from those logits,
        the plain path's numbers)."""
        stop = start + len(counted)
        ids = rollouts.completion_ids[start:stop]
        sequences = rollouts.prompts.rows(start, stop).with_completions(ids, rollouts.mask[start:stop])
        step = TrainingStep(self, sequences, ids, counted.bool(), None, share)
        self.loss_terms_before(step)
        if self.terms_need_logits():
            step.logits = target_logits(self.backbone, sequences, ids.shape[1])
            logp, entropy = logits_log_probs(step.logits, ids, self.cfg.rft.temperature if temperature is None
                                             else temperature, with_entropy, self.processor.placeholder_ids)
        else:
            logp, entropy = self.rollout_log_probs(self.backbone, rollouts, start, stop, with_entropy, temperature)
        return logp, entropy, step

    def add_terms(self, step: TrainingStep, metrics: dict[str, torch.Tensor | float],
                  passes: int) -> torch.Tensor | None:
        """The loss terms on `step`, their metrics added into `metrics` (over the step's backward passes, each
        term's loss averaged over the `passes` optimizer steps of one batch, as `train/loss` is)."""
        extra, found = self.loss_terms_on(step)
        for name, value in found.items():
            metrics[name] = metrics.get(name, 0.0) + float(value) / passes
        return extra

    def batched_log_probs(self, model: nn.Module, rollouts: Rollouts) -> torch.Tensor:
        """Log-probabilities of all rollouts without gradient, in micro-batches."""
        size = self.cfg.rft.micro_batch_size or len(rollouts)
        return torch.cat([self.rollout_log_probs(model, rollouts, i, i + size)[0]
                          for i in range(0, len(rollouts), size)])

    def log_step(self, drawn: Rollouts, trained: Rollouts, greedy: Rollouts | None, stats: dict[str, float]) -> None:
        """Reward metrics describe the batch as drawn, before any filtering; lengths the rollouts trained on."""
        groups = drawn.group_rewards()
        failed = drawn.failed.sum() + (greedy.failed.sum() if greedy is not None else 0)
        metrics = {
            "reward/total": drawn.rewards.mean(),
            "reward/total_std": drawn.rewards.std() if len(drawn) > 1 else 0.0,
            "reward/errors": float(failed),
            "rollout/all_equal_groups": (~drawn.varied_groups()).float().mean(),
            # Var[reward] within a prompt's group: what scales the policy gradient (see callbacks/analysis.py).
            "reward/group_var": groups.var(1, unbiased=False).mean(),
            "rollout/completion_length": trained.mask.sum(1).float().mean(),
            "rollout/truncated": trained.truncated.float().mean(),
            "time/generate": self.timing["generate"], "time/score": self.timing["score"],
            "time/update": self.timing["update"],
            "train/task": float(self.task_index + 1), **stats,
        }
        for name, values in drawn.components.items():
            metrics[f"reward/{name}"] = values.mean()
            metrics[f"reward/{name}_std"] = values.std() if len(values) > 1 else 0.0
        if greedy is not None:
            metrics["reward/greedy"] = greedy.rewards.mean()
        self.step_metrics = {k: float(v) for k, v in metrics.items()}
        self.log("reward", drawn.rewards.mean(), prog_bar=True, batch_size=len(trained), logger=False)
        # Lightning's `log` costs about a millisecond per metric, and with sync_dist one collective each: the
        # metrics go to it only on the steps the logger writes (Lightning's own callbacks ask the same), averaged
        # over the processes in one collective.
        if self.trainer._logger_connector.should_update_logs:
            self.log_dict(self.mean_over_processes(self.step_metrics), batch_size=len(trained))

    def mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.trainer.world_size == 1:
            return metrics
        values = torch.tensor(list(metrics.values()), device=self.device)
        values = self.trainer.strategy.reduce(values, reduce_op="mean")
        return dict(zip(metrics, values.tolist()))
