"""Advantage estimators of the GRPO family: how much better each rollout did than its group's baseline.

Rewards come as a (groups, G) table: row i holds the G rollouts of prompt i. The group of a prompt is always
generated and scored on one rank, so these statistics never straddle ranks. Each estimator declares what it needs
of the rollouts (a minimum group size, a greedy completion per prompt as its baseline); the config's checks and
the RFT step read those traits rather than the estimator's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SCALES = ("group", "batch", "none")  # what a centred advantage is divided by (rft.advantage_scale)


@dataclass(frozen=True)
class Estimator:
    centre: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (rewards, greedy) -> r - baseline
    scale: str = "none"  # its own scale, taken where rft.advantage_scale=estimator
    min_group_size: int = 2  # it compares rollouts within a group
    greedy_baseline: bool = False  # its baseline is the reward of a greedy completion of the same prompt
    rescalable: bool = True  # False: it is defined by not dividing (a scale would make it another estimator)


def _group_mean(rewards: torch.Tensor, greedy: torch.Tensor | None) -> torch.Tensor:
    return rewards - rewards.mean(1, keepdim=True)


def _rloo(rewards: torch.Tensor, greedy: torch.Tensor | None) -> torch.Tensor:
    others = (rewards.sum(1, keepdim=True) - rewards) / (rewards.shape[1] - 1)
    return rewards - others


def _remax(rewards: torch.Tensor, greedy: torch.Tensor | None) -> torch.Tensor:
    return rewards - greedy.reshape(-1, 1)


ESTIMATORS = {
    "grpo": Estimator(_group_mean, scale="group"),
    "drgrpo": Estimator(_group_mean, rescalable=False),
    "rloo": Estimator(_rloo),
    "remax": Estimator(_remax, min_group_size=1, greedy_baseline=True),
}


def group_advantages(rewards: torch.Tensor, estimator: str, greedy_rewards: torch.Tensor | None = None,
                     eps: float = 1e-6, scale: str | None = None,
                     batch_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """(groups, G) advantages: the estimator's centred reward, divided as `scale` says (None: the estimator's own).

    grpo:   r - mean, over the group's std: (r - mean) / (std + eps), std the sample standard deviation (n - 1)
    drgrpo: r - mean (Dr. GRPO's advantage: no division by the std, which over-weights near-unanimous groups;
            its other change, the loss normalisation, is rft.loss_aggregation=max_length)
    rloo:   r - mean of the other G - 1 rollouts
    remax:  r - reward of the greedy completion of the same prompt (`greedy_rewards`, (groups,))
    scale:  group (the group's reward std), batch (the sample std of `batch_rewards`, every rollout of the step on
            every rank; `rewards` itself by default: PPO-Lite's) or none.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be a (groups, group_size) table, got shape {tuple(rewards.shape)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    traits = ESTIMATORS[estimator]
    if rewards.shape[1] < traits.min_group_size:
        raise ValueError(f"{estimator} needs at least {traits.min_group_size} rollouts per prompt "
                         f"(rft.group_size >= {traits.min_group_size})")
    if traits.greedy_baseline and greedy_rewards is None:
        raise ValueError(f"{estimator} needs the rewards of the greedy completions")
    centred = traits.centre(rewards, greedy_rewards)
    scale = scale or traits.scale
    if scale == "group":
        return centred / (rewards.std(1, keepdim=True) + eps)
    if scale == "batch":
        return centred / ((rewards if batch_rewards is None else batch_rewards).std() + eps)
    if scale == "none":
        return centred
    raise ValueError(f"unknown advantage scale {scale!r}; choose one of {', '.join(SCALES)}")
