"""Advantage estimators of the GRPO family: how much better each rollout did than its group's baseline.

Rewards come as a (groups, G) table: row i holds the G rollouts of prompt i. The group of a prompt is always
generated and scored on one rank, so these statistics never straddle ranks.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "drgrpo", "rloo", "remax")


def group_advantages(rewards: torch.Tensor, estimator: str, greedy_rewards: torch.Tensor | None = None,
                     eps: float = 1e-6) -> torch.Tensor:
    """(groups, G) advantages.

    grpo:   (r - mean) / (std + eps), std the sample standard deviation (n - 1) of the group
    drgrpo: r - mean (Dr. GRPO's advantage: no division by the std, which over-weights near-unanimous groups;
            its other change, the loss normalisation, is `rft.loss_aggregation`)
    rloo:   r - mean of the other G - 1 rollouts
    remax:  r - reward of the greedy completion of the same prompt (`greedy_rewards`, (groups,))
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be a (groups, group_size) table, got shape {tuple(rewards.shape)}")
    size = rewards.shape[1]
    if estimator == "grpo":
        if size < 2:
            raise ValueError("grpo needs at least 2 rollouts per prompt (rft.group_size >= 2)")
        return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)
    if estimator == "drgrpo":
        if size < 2:
            raise ValueError("drgrpo needs at least 2 rollouts per prompt (rft.group_size >= 2)")
        return rewards - rewards.mean(1, keepdim=True)
    if estimator == "rloo":
        if size < 2:
            raise ValueError("rloo needs at least 2 rollouts per prompt (rft.group_size >= 2)")
        others = (rewards.sum(1, keepdim=True) - rewards) / (size - 1)
        return rewards - others
    if estimator == "remax":
        if greedy_rewards is None:
            raise ValueError("remax needs the rewards of the greedy completions")
        return rewards - greedy_rewards.reshape(-1, 1)
    raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
