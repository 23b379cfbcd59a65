"""The policy losses of the GRPO family (`rft.objective`): how far each token's (or completion's) probability
ratio to the policy that sampled it may move the update.

Each objective maps per-token log-probabilities `logp` (with gradient), the sampling policy's `old_logp`,
per-rollout `advantages` (rollouts,) and the counted tokens `mask` (rollouts, tokens) to a per-token loss, which
`cpt.rl.policy_loss.aggregate` averages as `rft.loss_aggregation` says. With one policy epoch (rft.epochs = 1)
the ratio is exactly 1 and every objective's gradient is the plain policy gradient A * grad log p, weighted as its
aggregation weighs tokens: they differ only where the update runs off-policy (rft.epochs > 1).

  clip   PPO's clipped surrogate per token, -min(rA, clip(r, 1 - clip_low, 1 + clip_high) A) (DAPO's clip-higher),
         with rft.clip_delta capping r where A < 0 (two-sided clipping, INTELLECT-2).
  gspo   the same on one ratio per completion, exp(mean of its tokens' log-ratios) (GSPO, Zheng et al. 2025):
         a completion is clipped whole, and its loss averaged once (seq_mean).
  luspo  GSPO's ratio and clip, each completion's loss summed over its tokens, so a completion weighs by its
         length (LUSPO).
  cispo  -sg(min(r, 1 + clip_high)) A log p: the importance weight is clipped and carries no gradient, so no
         token's gradient is ever dropped (CISPO, MiniMax-M1).
  sapo   -(4 / tau) sigmoid(tau (r - 1)) A: a soft gate instead of a hard clip, with its own temperature for
         positive and negative advantages (SAPO, Gao et al. 2025).
  vespo  -sg(phi(w)) A log p, w the completion's ratio (product over its tokens), phi(w) = e^lambda w^k e^(-lambda w)
         a gamma weight with phi(1) = 1, k and lambda per advantage sign (VESPO).

Each is TRL 1.16's `GRPOTrainer` loss of the same name (tests/rl/test_objectives.py compares the loss and its
gradient): TRL's `loss_type` with `importance_sampling_level="sequence"` for gspo and luspo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PolicyLoss:
    per_token: torch.Tensor  # (rollouts, tokens) or (rollouts, 1) for one value per completion
    # Shares of tokens to log (name -> 0/1 per token, or per completion), e.g. where the clipped branch is taken
    stats: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    loss: Callable[..., PolicyLoss]  # (logp, old_logp, advantages, mask, rft) -> PolicyLoss
    aggregations: tuple[str, ...]  # the loss normalisations it is defined with (rft.loss_aggregation)
    sequence_level: bool  # one weight per completion: token-level selections would contradict it
    hard_clip: bool  # a hard-clipped ratio, so rft.clip_delta has something to cap
    sequence_ratio: bool = False  # its importance ratio is one per completion (what rft.kl.importance_weighted uses)


def log_importance_weights(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                           sequence: bool) -> torch.Tensor:
    """log r per token, or per completion (rollouts, 1): the mean of its counted tokens' log-ratios (GSPO's
    length-normalised sequence ratio)."""
    log_ratio = logp - old_logp
    if not sequence:
        return log_ratio
    return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                      clip_high: float, delta: float | None = None, mask: torch.Tensor | None = None,
                      sequence: bool = False) -> PolicyLoss:
    """-min(r' A, clip(r, 1 - clip_low, 1 + clip_high) A), r' = min(r, delta) (r where delta is None).

    Stats: where the clipped branch is taken (its gradient is zero): clip_low (r < 1 - clip_low, A < 0) and
    clip_high (r > 1 + clip_high, A > 0); with delta, clip_delta (r > delta, A < 0: capped)."""
    ratio = torch.exp(log_importance_weights(logp, old_logp, mask, sequence))
    advantage = advantages.unsqueeze(1)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantage
    capped = ratio if delta is None else ratio.clamp(max=delta)
    stats = {"clip_low": (ratio < 1 - clip_low) & (advantage < 0),
             "clip_high": (ratio > 1 + clip_high) & (advantage > 0)}
    if delta is not None:
        stats["clip_delta"] = (ratio > delta) & (advantage < 0)
    return PolicyLoss(-torch.minimum(capped * advantage, clipped), stats)


def _clip(logp, old_logp, advantages, mask, rft) -> PolicyLoss:
    return clipped_surrogate(logp, old_logp, advantages, rft.clip_low, rft.clip_high, rft.clip_delta)


def _gspo(logp, old_logp, advantages, mask, rft) -> PolicyLoss:
    return clipped_surrogate(logp, old_logp, advantages, rft.clip_low, rft.clip_high, rft.clip_delta, mask,
                             sequence=True)


def _cispo(logp, old_logp, advantages, mask, rft) -> PolicyLoss:
    ratio = torch.exp(logp - old_logp)
    advantage = advantages.unsqueeze(1)
    weight = ratio.clamp(max=1 + rft.clip_high).detach()
    return PolicyLoss(-weight * advantage * logp, {"clip_high": (ratio > 1 + rft.clip_high) & (advantage > 0)})


def _sapo(logp, old_logp, advantages, mask, rft) -> PolicyLoss:
    ratio = torch.exp(logp - old_logp)
    advantage = advantages.unsqueeze(1)
    tau = torch.where(advantage > 0, rft.sapo.tau_pos, rft.sapo.tau_neg)
    return PolicyLoss(-torch.sigmoid(tau * (ratio - 1)) * 4 / tau * advantage, {})


def vespo_weights(log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, k_pos: float,
                  lambda_pos: float, k_neg: float, lambda_neg: float) -> torch.Tensor:
    """(rollouts, 1) phi(w) = exp(lambda + k log w - lambda w), w = the completion's ratio, its log the sum of its
    tokens' log-ratios (each clamped to [-20, 20], the sum to [log 1e-8, 20] as VESPO's code does); k and
    lambda those of the advantage's sign (A >= 0: the positive ones). No gradient: a weight on the
    policy gradient."""
    with torch.no_grad():
        log_w = (log_ratio.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True).clamp(math.log(1e-8), 20.0)
        positive = advantages.unsqueeze(1) >= 0
        k = torch.where(positive, k_pos, k_neg)
        lam = torch.where(positive, lambda_pos, lambda_neg).clamp(min=1e-4)
        return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _vespo(logp, old_logp, advantages, mask, rft) -> PolicyLoss:
    v = rft.vespo
    phi = vespo_weights(logp - old_logp, mask, advantages, v.k_pos, v.lambda_pos, v.k_neg, v.lambda_neg)
    return PolicyLoss(-phi * advantages.unsqueeze(1) * logp, {})


TOKEN_AGGREGATIONS = ("token_mean", "seq_mean", "max_length")
OBJECTIVES = {
    "clip": Objective(_clip, TOKEN_AGGREGATIONS, sequence_level=False, hard_clip=True),
    "gspo": Objective(_gspo, ("seq_mean",), sequence_level=True, hard_clip=True, sequence_ratio=True),
    "luspo": Objective(_gspo, ("seq_sum",), sequence_level=True, hard_clip=True, sequence_ratio=True),
    "cispo": Objective(_cispo, TOKEN_AGGREGATIONS, sequence_level=False, hard_clip=False),
    "sapo": Objective(_sapo, TOKEN_AGGREGATIONS, sequence_level=False, hard_clip=False),
    "vespo": Objective(_vespo, ("token_mean", "seq_mean"), sequence_level=True, hard_clip=False),
}


def policy_loss(objective: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, rft) -> PolicyLoss:
    """The per-token loss of `objective` (a key of OBJECTIVES) with the settings of `rft` (the config's rft
    section)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective].loss(logp, old_logp, advantages, mask, rft)
