"""The clipped policy-gradient loss of GRPO-style training, with its KL term, on per-token log-probabilities.

All tensors are (rollouts, completion tokens); `mask` is 1 on the tokens of each completion that count (up to
and including its end-of-turn token; all 0 for a truncated completion when those are masked).
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean")
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


def loss_denominator(mask: torch.Tensor, aggregation: str) -> float:
    """What the summed loss is divided by for a rank's whole rollout batch: its counted tokens (token_mean) or
    its counted completions (seq_mean). Computed once, so micro-batches add up to the full-batch loss; data
    parallelism then averages the ranks' gradients."""
    if aggregation == "token_mean":
        return max(float(mask.sum()), 1.0)
    if aggregation == "seq_mean":
        return max(float((mask.sum(1) > 0).sum()), 1.0)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, denominator: float) -> torch.Tensor:
    """token_mean: every counted token weighs the same. seq_mean: every completion weighs the same, its tokens
    averaged first."""
    if aggregation == "token_mean":
        return (per_token * mask).sum() / denominator
    lengths = mask.sum(1).clamp(min=1)
    return ((per_token * mask).sum(1) / lengths).sum() / denominator


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                      clip_high: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), ratio = p / p_old.

    Also returns where the clipped branch is taken (its gradient is zero): below 1 - clip_low with A < 0, and
    above 1 + clip_high with A > 0. `advantages` is per rollout, (rollouts,).
    """
    ratio = torch.exp(logp - old_logp)
    advantage = advantages.unsqueeze(1)
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantage
    clipped_low = (ratio < 1 - clip_low) & (advantage < 0)
    clipped_high = (ratio > 1 + clip_high) & (advantage > 0)
    return -torch.minimum(unclipped, clipped), clipped_low, clipped_high
