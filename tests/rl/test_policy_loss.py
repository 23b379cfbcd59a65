"""The clipped loss, its aggregation and the KL estimators against values worked out by hand."""

import math

import pytest
import torch

from cpt.rl.objectives import clipped_surrogate
from cpt.rl.policy_loss import aggregate, kl_estimate, loss_denominator
from cpt.rl.rollouts import completion_mask


def test_kl_estimators_on_known_probabilities():
    # Policy gives the sampled token p = 0.5, the reference q = 0.25: log q/p = -log 2.
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    same = kl_estimate(logp, logp, "k3")
    assert same.item() == 0.0
    # A token the reference finds e^30 times likelier would give e^20 - 21 even after clamping the log-ratio.
    assert kl_estimate(torch.tensor([-30.0]), torch.tensor([0.0]), "k3").item() == 10.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k4")


def fixed_batch():
    """Two rollouts of three tokens. Row 0 has A = +1 and ratios 1, 1.5, 0.5; row 1 has A = -2, ratios 0.5,
    1.5, 1 and its third token is past the end of the completion."""
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5], [0.5, 1.5, 1.0]])).requires_grad_(True)
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp, old, advantages, mask


def test_clipped_loss_both_branches_and_aggregations():
    logp, old, advantages, mask = fixed_batch()
    result = clipped_surrogate(logp, old, advantages, clip_low=0.2, clip_high=0.28)
    per_token, low, high = result.per_token, result.stats["clip_low"], result.stats["clip_high"]
    # Row 0 (A=+1): -min(1, 1) = -1; 1.5 is clipped to 1.28 -> -1.28; 0.5 < 0.8 but A > 0 keeps -0.5.
    # Row 1 (A=-2): 0.5 is clipped to 0.8 -> -min(-1, -1.6) = 1.6; 1.5 keeps -min(-3, -2.56) = 3.
    torch.testing.assert_close(per_token[:, :2], torch.tensor([[-1.0, -1.28], [1.6, 3.0]]))
    assert per_token[0, 2].item() == pytest.approx(-0.5)
    assert high.tolist() == [[False, True, False], [False, False, False]]
    assert low.tolist() == [[False, False, False], [True, False, False]]

    token_mean = aggregate(per_token, mask, "token_mean", loss_denominator(mask, "token_mean"))
    assert token_mean.item() == pytest.approx((-1 - 1.28 - 0.5 + 1.6 + 3.0) / 5)
    seq_mean = aggregate(per_token, mask, "seq_mean", loss_denominator(mask, "seq_mean"))
    assert seq_mean.item() == pytest.approx(((-1 - 1.28 - 0.5) / 3 + (1.6 + 3.0) / 2) / 2)

    token_mean.backward()
    grad = logp.grad
    # d(-ratio * A)/dlogp = -ratio * A; zero where the clipped branch is taken or the token is masked.
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 0.0, -0.5], [0.0, 2 * 1.5, 0.0]]) / 5)


def test_truncated_completions_can_be_left_out():
    # Row 1 never ended: masking it leaves row 0 alone in the loss.
    logp, old, advantages, mask = fixed_batch()
    ids = torch.tensor([[5, 9, 2], [5, 6, 7]])
    ended, truncated = completion_mask(ids, eos_id=9)
    assert ended.tolist() == [[True, True, False], [True, True, True]] and truncated.tolist() == [False, True]
    counted = (ended & ~truncated.unsqueeze(1)).float()
    per_token = clipped_surrogate(logp, old, advantages, 0.2, 0.28).per_token
    loss = aggregate(per_token, counted, "token_mean", loss_denominator(counted, "token_mean"))
    assert loss.item() == pytest.approx((-1 - 1.28) / 2)
    nothing = torch.zeros(2, 3)
    assert aggregate(per_token, nothing, "token_mean", loss_denominator(nothing, "token_mean")).item() == 0.0


def test_micro_batches_add_up_to_the_whole_batch():
    logp, old, advantages, mask = fixed_batch()
    per_token = clipped_surrogate(logp, old, advantages, 0.2, 0.28).per_token
    for mode in ("token_mean", "seq_mean", "seq_sum", "max_length"):
        denominator = loss_denominator(mask, mode, max_tokens=4)
        whole = aggregate(per_token, mask, mode, denominator)
        parts = sum(aggregate(per_token[i:i + 1], mask[i:i + 1], mode, denominator) for i in range(2))
        assert parts.item() == pytest.approx(whole.item())
