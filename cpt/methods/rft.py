"""Reinforcement fine-tuning of the GRPO family: sample G completions per prompt, score them, and raise the
probability of those that did better than their group.

One training step follows a batch of prompts through five steps, one method each:
  1. roll_out:    G completions of each prompt, sampled in one batched `generate` with the KV cache (each prompt
                  prefilled once and its cache copied to its G rows, with rft.shared_prefix), and every
                  completion scored by the reward function (cpt.rl.rewards); ReMax also decodes greedily;
  2. filter:      the rollout filters (`add_rollout_filter`, e.g. callbacks/online_filter.py) may swap groups;
  3. log_probs:   the old and the reference policy's log-probabilities, without gradient, where the loss needs them;
  4. advantages:  per group of G (cpt.rl.advantages), after subtracting beta * KL when the KL sits in the reward;
  5. update:      `rft.epochs` optimizer steps on the policy loss `rft.objective` (cpt.rl.objectives; PPO's
                  clipped surrogate by default), aggregated as cpt.rl.policy_loss says, plus beta * KL per token
                  when the KL sits in the loss and the entropy bonus (cpt.rl.entropy), in micro-batches that add
                  up to the whole batch's loss.
Steps 3 and 5 run each group's prompt once and its G completions on top of it (rft.shared_prefix), and compute
the vocabulary-wide logits rft.log_prob_chunk tokens at a time (cpt.rl.log_probs).
Rollouts travel between the steps, and to the callbacks, as one `Rollouts` (cpt.rl.rollouts). Nothing here knows
about a particular task: the task's scorer and the template reach the reward function.

Steps 1 and 2, the rollouts' log-probabilities and the optimizer step are shared with on-policy SFT
(cpt/methods/rollout_module.py). Extension points for callbacks: `add_rollout_filter(filter)` (step 2) and
`set_kl_coef(beta)` (callbacks/kl_schedule.py); `roll_out` samples and scores rollouts for anyone
(callbacks/rollout_filter.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from cpt.config import kl_values
from cpt.data.batches import Batch
from cpt.data.tasks import Task
from cpt.methods.loss_terms import micro_batch_shares
from cpt.methods.rollout_module import RolloutModule
from cpt.rl.advantages import ESTIMATORS, group_advantages
from cpt.rl.entropy import EntropyControl
from cpt.rl.log_probs import why_prompts_repeat
from cpt.rl.policy_loss import kl_estimate, loss_denominator, rft_loss
from cpt.rl.reference import Reference
from cpt.rl.rollouts import Rollouts

log = logging.getLogger(__name__)


class RFTModule(RolloutModule):
    def __init__(self, cfg: DictConfig, checkpoint: Path, tasks: Sequence[Task] = ()):
        super().__init__(cfg, checkpoint, tasks)
        self.kl_coef = kl_values(cfg)[0]  # beta; callbacks/kl_schedule.py sets it per stage or step
        self.reference: Reference | None = None
        self.entropy_control = EntropyControl(cfg.rft.entropy)  # its adaptive state travels in checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["entropy_control"] = self.entropy_control.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "entropy_control" in checkpoint:
            self.entropy_control.load_state_dict(checkpoint["entropy_control"])

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
        repeated = why_prompts_repeat(self.backbone) if self.cfg.rft.shared_prefix else None
        if repeated:
            log.warning(f"rft.shared_prefix: {repeated}, so the log-probability passes repeat each prompt on its G "
                        "rows (rollouts still prefill it once)")
        if max(kl_values(self.cfg)) > 0 and self.reference is None:
            self.reference = Reference(self.backbone, self.cfg.rft.kl.reference,
                                       build_copy=lambda: self.build_backbone(self.cfg.model))

    def optimizer_steps_per_stage(self) -> int:
        return super().optimizer_steps_per_stage() * self.cfg.rft.epochs

    def on_train_epoch_start(self) -> None:
        if self.reference is not None:
            self.reference.start_task(self.backbone)

    # --- the five steps ---------------------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        self.timing = {"generate": 0.0, "score": 0.0, "update": 0.0}
        greedy_baseline = ESTIMATORS[self.cfg.rft.advantage].greedy_baseline
        prefix = self.prefill(batch)
        drawn = self.roll_out(batch, prefix=prefix)
        rollouts, filter_stats = self.filter(drawn)
        greedy = self.roll_out(batch, greedy=True, prefix=prefix) if greedy_baseline else None
        del prefix  # the prompts' KV cache: not needed by the update
        with self.timed("update"):
            counted = self.counted_tokens(rollouts)
            old_logp, ref_logp = self.log_probs(rollouts)
            advantages = self.advantages(rollouts, counted, old_logp, ref_logp, greedy)
            stats = self.update(rollouts, counted, advantages, old_logp, ref_logp)
        self.log_step(drawn, rollouts, greedy, {**stats, **filter_stats})

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
        """4. (rollouts,) advantages over each group, from rewards less beta * KL when the KL sits in the reward,
        scaled as rft.advantage_scale says (a batch's std over every rank's rewards)."""
        rft = self.cfg.rft
        reward = rollouts.rewards.to(self.device)
        if self.beta > 0 and rft.kl.placement == "reward":
            reward = reward - self.beta * (kl_estimate(old_logp, ref_logp, rft.kl.estimator) * counted).sum(1)
        baseline = None if greedy is None else greedy.rewards.to(self.device)
        scale = None if rft.advantage_scale == "estimator" else rft.advantage_scale
        batch = self.all_gather(reward).flatten() if scale == "batch" and self.trainer.world_size > 1 else None
        return group_advantages(reward.view(-1, rollouts.group_size), rft.advantage, baseline, scale=scale,
                                batch_rewards=batch).flatten()

    def update(self, rollouts: Rollouts, counted: torch.Tensor, advantages: torch.Tensor,
               old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None) -> dict[str, float]:
        """5. `rft.epochs` optimizer steps over the rollouts; returns token-weighted health statistics."""
        rft, beta, control = self.cfg.rft, self.beta, self.entropy_control
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        ids = rollouts.completion_ids
        size = rft.micro_batch_size or len(ids)
        denominator = loss_denominator(counted, rft.loss_aggregation, rft.max_new_tokens)
        tokens = max(float(counted.sum()), 1.0)
        # Accumulated on the device and read once at the end: a float() per micro-batch would wait for the GPU.
        zero = torch.zeros((), device=counted.device)
        sums: dict[str, torch.Tensor] = {"loss": zero, "kl": zero, "entropy": zero}
        shared: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor | float] = {}
        shares = micro_batch_shares(counted, size)
        applied = control.applied()
        for epoch in range(rft.epochs):
            coef = control.applied()  # the bonus of this optimizer step, set by the steps before it
            acted_on = torch.zeros(2, device=counted.device)  # entropy summed over the bonus's tokens, their count
            for i in range(0, len(ids), size):
                rows = slice(i, i + size)
                m = counted[rows]
                logp, entropy, step = self.update_log_probs(rollouts, m, i, shares[i // size],
                                                            with_entropy=epoch == 0 or control.enabled
                                                            or rft.entropy.top_quantile < 1,
                                                            entropy_grad=control.enabled)
                # With one epoch the rollouts come from the current policy: the ratio is 1 and its gradient is
                # the policy gradient, so no extra forward pass is needed for the old log-probs.
                old = old_logp[rows] if old_logp is not None else logp.detach()
                parts = rft_loss(rft, logp, old, advantages[rows], m, denominator, entropy=entropy,
                                 ref_logp=None if ref_logp is None else ref_logp[rows], beta=beta,
                                 entropy_coef=coef if control.enabled else None, share=shares[i // size])
                loss = parts.loss
                if parts.kl is not None and epoch == 0:
                    sums["kl"] = sums["kl"] + (parts.kl * m).sum()
                if control.enabled:
                    acted_on = acted_on + torch.stack([(entropy.detach() * parts.acting).sum(), parts.acting.sum()])
                extra = self.add_terms(step, terms, rft.epochs)
                self.check_finite_loss(loss if extra is None else loss + extra, "RFT")
                self.manual_backward(loss if extra is None else loss + extra)
                sums["loss"] = sums["loss"] + loss.detach() / rft.epochs
                for name, where in parts.stats.items():  # shares of tokens, e.g. on the clipped branch
                    shared[name] = shared.get(name, zero) + (where * m).sum() / rft.epochs
                if epoch == 0:
                    sums["entropy"] = sums["entropy"] + (entropy.detach() * m).sum()
            self.step_optimizer(optimizer, scheduler)
            if rft.entropy.adaptive:  # measured over every process's tokens, as the coefficient is one for all
                total = self.trainer.strategy.reduce(acted_on, reduce_op="sum")
                control.observe(float(total[0] / total[1].clamp(min=1)))
        stats = {"train/loss": sums["loss"], "policy/entropy": sums["entropy"] / tokens}
        stats.update({f"policy/{name}": value / tokens for name, value in shared.items()})
        if beta > 0:
            stats["policy/kl"] = sums["kl"] / tokens
        if control.enabled:
            stats["policy/entropy_coef"] = applied
        return {name: float(value) for name, value in {**stats, **terms}.items()}

    # --- helpers ----------------------------------------------------------------------------------------------

    def batched_log_probs(self, model: nn.Module, rollouts: Rollouts) -> torch.Tensor:
        """Log-probabilities of all rollouts without gradient, in micro-batches."""
        size = self.cfg.rft.micro_batch_size or len(rollouts)
        return torch.cat([self.rollout_log_probs(model, rollouts, i, i + size)[0]
                          for i in range(0, len(rollouts), size)])
