"""How the per-token policy loss (cpt.rl.objectives) becomes one number, and the KL term added to it.

All tensors are (rollouts, completion tokens); `mask` is 1 on the tokens of each completion that count (up to
and including its end-of-turn token; all 0 for a truncated completion when those are masked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpt.rl.entropy import high_entropy_mask
from cpt.rl.objectives import OBJECTIVES, log_importance_weights, policy_loss

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean", "seq_sum", "max_length")
REFERENCES = ("base", "task_start")  # what the KL term pulls towards: see cpt.rl.reference


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates of KL(policy || reference) from tokens sampled from the policy (Schulman's k1-k3).

    k1 = log p - log q (unbiased, noisy, can be negative); k2 = (log p - log q)^2 / 2;
    k3 = q/p - 1 - log(q/p) (unbiased, never negative; the study's `low_var_kl`), capped at 10 per token.
    k1 belongs in the reward: in the loss its expected gradient is zero.
    """
    log_ratio = ref_logp - logp  # log q/p
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        log_ratio = log_ratio.clamp(-20.0, 20.0)  # exp of a far-off token would overflow
        return (torch.exp(log_ratio) - 1 - log_ratio).clamp(max=10.0)  # one such token must not dominate
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def loss_denominator(mask: torch.Tensor, aggregation: str, max_tokens: int | None = None) -> float:
    """What the summed loss is divided by for a rank's whole rollout batch: its counted tokens (token_mean), its
    counted completions (seq_mean, seq_sum) or its rows times the longest completion allowed, `max_tokens`
    (max_length: Dr. GRPO's constant). Computed once, so micro-batches add up to the full-batch loss; data
    parallelism then averages the ranks' gradients."""
    if aggregation == "token_mean":
        return max(float(mask.sum()), 1.0)
    if aggregation in ("seq_mean", "seq_sum"):
        return max(float((mask.sum(1) > 0).sum()), 1.0)
    if aggregation == "max_length":
        if max_tokens is None:
            raise ValueError("max_length aggregation divides by the longest completion allowed: pass max_tokens")
        return float(mask.shape[0] * max_tokens)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, denominator: float) -> torch.Tensor:
    """token_mean: every counted token weighs the same. seq_mean: every completion weighs the same, its tokens
    averaged first. seq_sum: each completion's tokens summed, so a completion weighs by its length (LUSPO).
    max_length: the tokens summed over a constant (Dr. GRPO). `per_token` may hold one value per completion,
    (rollouts, 1): it then stands for each of its counted tokens."""
    if aggregation == "seq_mean":
        lengths = mask.sum(1).clamp(min=1)
        return ((per_token * mask).sum(1) / lengths).sum() / denominator
    return (per_token * mask).sum() / denominator


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor  # the micro-batch's part of the step's loss
    stats: dict[str, torch.Tensor]  # the objective's (cpt.rl.objectives.PolicyLoss.stats)
    kl: torch.Tensor | None  # per token, without gradient; None without a KL term
    acting: torch.Tensor  # the tokens the policy loss and the entropy bonus act on (rft.entropy.top_quantile)


def rft_loss(rft, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             denominator: float, *, entropy: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
             beta: float = 0.0, entropy_coef: float | None = None, share: float = 1.0) -> LossParts:
    """The RFT loss of one micro-batch under the config's rft section: the objective's per-token loss (on the
    highest-entropy tokens only, with top_quantile < 1), plus beta * KL per token where the KL sits in the loss
    (every counted token; times the importance ratio with rft.kl.importance_weighted), aggregated over
    `denominator` (loss_denominator of the whole batch), less `entropy_coef` (None: no bonus term) times the mean
    entropy of the tokens acted on, weighted by the micro-batch's `share` of the step. `entropy` carries its
    gradient when the bonus is on."""
    result = policy_loss(rft.objective, logp, old_logp, advantages, mask, rft)
    per_token, acting = result.per_token, mask
    if rft.entropy.top_quantile < 1:
        acting = mask * high_entropy_mask(entropy.detach(), mask, rft.entropy.top_quantile)
        per_token = per_token * acting
    kl = None
    if beta > 0:
        in_loss = rft.kl.placement == "loss"
        kl = kl_estimate(logp if in_loss else logp.detach(), ref_logp, rft.kl.estimator)
        if in_loss:
            weighted = kl
            if rft.kl.importance_weighted:  # the ratio with its gradient: the unbiased reverse-KL gradient
                sequence = OBJECTIVES[rft.objective].sequence_ratio
                weighted = kl * torch.exp(log_importance_weights(logp, old_logp, mask, sequence))
            per_token = per_token + beta * weighted
    loss = aggregate(per_token, mask, rft.loss_aggregation, denominator)
    if entropy_coef is not None:
        loss = loss - entropy_coef * share * (entropy * acting).sum() / acting.sum().clamp(min=1)
    return LossParts(loss, result.stats, None if kl is None else kl.detach(), acting)
