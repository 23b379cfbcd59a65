"""On-policy SFT (rejection-sampling fine-tuning): supervised fine-tuning on the model's own correct rollouts.

Each step samples G completions of every prompt from the current policy with RFT's rollout settings
(rft.group_size, temperature, top_p, max_new_tokens; the rollout filters apply too), scores them with RFT's reward
function, keeps the right ones (the `accuracy` component, or the total reward if there is none, at least
rft.filter.correct_threshold) and takes one optimizer step on their next-token cross-entropy, averaged over the
kept completions' tokens. A step with no right rollout has a zero gradient, and the optimizer and the schedule
still take their step (as RFT's do on a batch whose groups all have equal rewards), so every run takes the same
schedule.

The data are RFT's, the loss is SFT's: beside SFT (off-policy data, SFT loss) and RFT (on-policy data, RL loss) it
tells whether on-policy data or the RL objective keeps earlier knowledge (Retaining by Doing, arXiv 2510.18874).
There is no KL term, so no reference model is loaded and rft.kl is not used.
"""

from __future__ import annotations

import logging

import torch

from cpt.config import kl_values
from cpt.data.batches import Batch
from cpt.methods.loss_terms import micro_batch_shares
from cpt.methods.rollout_module import RolloutModule
from cpt.rl.rollouts import Rollouts

log = logging.getLogger(__name__)


class OnPolicySFTModule(RolloutModule):
    """RFT's rollouts (cpt/methods/rollout_module.py), SFT's loss on the right ones; one optimizer step per batch
    (rft.epochs is RFT's)."""

    def configure_model(self) -> None:
        super().configure_model()
        if max(kl_values(self.cfg)) > 0:
            log.warning("method=onpolicy_sft has no KL term: rft.kl (coef %s) is not used", self.cfg.rft.kl.coef)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        self.timing = {"generate": 0.0, "score": 0.0, "update": 0.0}
        drawn = self.roll_out(batch)
        rollouts, filter_stats = self.filter(drawn)
        with self.timed("update"):
            right = rollouts.right(self.cfg.rft.filter.correct_threshold)
            loss, terms = self.update_on_right(rollouts, right)
        self.log_step(drawn, rollouts, None, {**filter_stats, "train/loss": loss,
                                              "onpolicy/right": float(right.float().mean()), **terms})

    def update_on_right(self, rollouts: Rollouts, right: torch.Tensor) -> tuple[float, dict[str, float]]:
        """One optimizer step on the mean negative log-likelihood (temperature 1: the model's own distribution) of
        the right rollouts' tokens, plus the loss terms (which see every rollout); returns the loss and the terms'
        metrics. Every rollout goes through the forward and backward passes, the wrong ones with weight 0: under
        FSDP every process must run the same passes, whatever it kept."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        completions = self.counted_tokens(rollouts)  # what the loss terms see: every rollout the step runs
        counted = completions * right.to(self.device).unsqueeze(1).float()
        tokens = max(float(counted.sum()), 1.0)
        size = self.cfg.rft.micro_batch_size or len(rollouts)
        shares = micro_batch_shares(completions, size)
        total, terms = 0.0, {}
        for start in range(0, len(rollouts), size):
            logp, _, step = self.update_log_probs(rollouts, completions[start:start + size], start,
                                                  shares[start // size], temperature=1.0)
            loss = -(logp * counted[start:start + size]).sum() / tokens
            extra = self.add_terms(step, terms, passes=1)
            self.check_finite_loss(loss if extra is None else loss + extra, "on-policy SFT")
            self.manual_backward(loss if extra is None else loss + extra)
            total += float(loss.detach())
        self.step_optimizer(optimizer, scheduler)
        return total, terms
