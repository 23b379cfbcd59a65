"""Advantage estimators against values worked out by hand."""

import pytest
import torch

from cpt.rl.advantages import group_advantages

# Two groups of four rollouts: one with a single success, one where every rollout scored the same.
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])


def test_grpo_divides_by_the_group_sample_std():
    # Row 0: mean 0.25; sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
    adv = group_advantages(REWARDS, "grpo")
    torch.testing.assert_close(adv[0], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0)
    assert adv[1].abs().max() == 0  # a unanimous group teaches nothing


def test_drgrpo_only_subtracts_the_mean():
    adv = group_advantages(REWARDS, "drgrpo")
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.0] * 4]))


def test_rloo_subtracts_the_mean_of_the_others():
    adv = group_advantages(REWARDS, "rloo")
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [0.0] * 4]))


def test_remax_subtracts_the_greedy_reward():
    adv = group_advantages(REWARDS, "remax", greedy_rewards=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(adv, torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.5] * 4]))


def test_estimators_reject_what_they_cannot_use():
    with pytest.raises(ValueError, match="remax needs the rewards of the greedy completions"):
        group_advantages(REWARDS, "remax")
    with pytest.raises(ValueError, match="at least 2 rollouts"):
        group_advantages(torch.ones(3, 1), "grpo")
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages(REWARDS, "ppo")
