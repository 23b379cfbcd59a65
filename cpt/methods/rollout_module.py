"""What the methods that learn from the model's own rollouts share (RFT, cpt/methods/rft.py; on-policy SFT,
cpt/methods/onpolicy_sft.py): sampling G completions of each prompt in one batched `generate` with the KV cache (each
prompt prefilled once and its cache copied to its G rows, with rft.shared_prefix), scoring every completion with the
reward function (cpt.rl.rewards), the rollout filters, the rollouts' log-probabilities, the optimizer step (these
modules optimise manually), and the step's metrics. A subclass's `training_step` decides what to learn from them.

Extension points for callbacks: `add_rollout_filter(filter)` (e.g. callbacks/online_filter.py); `roll_out` samples
and scores rollouts for anyone (callbacks/rollout_filter.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from cpt.data.batches import Batch
from cpt.data.tasks import Task
from cpt.methods.base import CPTModule
from cpt.methods.loss_terms import TrainingStep
from cpt.model.generation import PromptCache, Sampling, generate_ids
from cpt.rl.log_probs import logits_log_probs, target_logits, token_log_probs
from cpt.rl.rewards import Rewards, Scores
from cpt.rl.rollouts import Rollouts


class RolloutFilter(Protocol):
    """Sees every rollout batch after scoring (step 2 of an RFT step) and returns the one to train on."""

    def select(self, module: RolloutModule, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        """The rollouts to train on, as many groups as given; and metrics to log with the step."""


class RolloutModule(CPTModule):
    trains_on_answers = False  # the data are prompts: the answers are the model's own rollouts

    def __init__(self, cfg: DictConfig, checkpoint: Path, tasks: Sequence[Task] = ()):
        super().__init__(cfg, checkpoint, tasks)
        self.automatic_optimization = False  # the step decides its optimizer steps (rft.epochs per rollout batch)
        self.rewards = Rewards.from_config(cfg.rft.reward)
        self.rollout_filters: list[RolloutFilter] = []
        self.timing: dict[str, float] = {}

    def add_rollout_filter(self, rollout_filter: RolloutFilter) -> None:
        """Run `rollout_filter.select` on every rollout batch after scoring (in the order added)."""
        if rollout_filter not in self.rollout_filters:
            self.rollout_filters.append(rollout_filter)

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
                          with_entropy: bool = False, temperature: float | None = None, entropy_grad: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probabilities (and entropies) of rollouts start..stop-1 under `model` at `temperature` (the
        rollouts', rft.temperature, by default), as rft.shared_prefix and rft.log_prob_chunk ask, of the
        distribution sampling draws from (the placeholders it never writes taken out)."""
        rft = self.cfg.rft
        stop = min(stop, len(rollouts))
        groups = torch.arange(start, stop) // rollouts.group_size if rft.shared_prefix else None
        return token_log_probs(model, rollouts.prompts.rows(start, stop), rollouts.completion_ids[start:stop],
                               rollouts.mask[start:stop], rft.temperature if temperature is None else temperature,
                               with_entropy, groups, rft.log_prob_chunk, self.processor.placeholder_ids,
                               entropy_grad)

    def update_log_probs(self, rollouts: Rollouts, counted: torch.Tensor, start: int, share: float,
                         with_entropy: bool = False, temperature: float | None = None, entropy_grad: bool = False
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
                                             else temperature, with_entropy, self.processor.placeholder_ids,
                                             entropy_grad)
        else:
            logp, entropy = self.rollout_log_probs(self.backbone, rollouts, start, stop, with_entropy, temperature,
                                                   entropy_grad)
        return logp, entropy, step

    def add_terms(self, step: TrainingStep, metrics: dict[str, torch.Tensor | float],
                  passes: int) -> torch.Tensor | None:
        """The loss terms on `step`, their metrics added into `metrics` (over the step's backward passes, each
        term's loss averaged over the `passes` optimizer steps of one batch, as `train/loss` is)."""
        extra, found = self.loss_terms_on(step)
        for name, value in found.items():
            metrics[name] = metrics.get(name, 0.0) + float(value) / passes
        return extra

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
