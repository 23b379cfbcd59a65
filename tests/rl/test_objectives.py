"""The policy objectives, the entropy options and the advantage scales: each against a hand computation that a
plausible wrong version fails, and against TRL 1.16's GRPOTrainer loss on the same log-probabilities, old
log-probabilities, advantages and masks (loss and gradient to 1e-6)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from cpt.config import RFTConfig
from cpt.rl.advantages import group_advantages
from cpt.rl.entropy import EntropyControl, high_entropy_mask
from cpt.rl.objectives import policy_loss, vespo_weights
from cpt.rl.policy_loss import aggregate, loss_denominator, rft_loss


def settings(**values):
    """The config's rft section with `values` set (dotted keys inside it)."""
    rft = OmegaConf.structured(RFTConfig)
    for key, value in values.items():
        OmegaConf.update(rft, key, value)
    return rft


def fixed_batch():
    """Two rollouts of three tokens. Row 0 has A = +1 and ratios 1, 1.5, 0.5; row 1 has A = -2, ratios 0.5, 1.5,
    1 and its third token is past the end of the completion."""
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5], [0.5, 1.5, 1.0]], dtype=torch.float64)).requires_grad_(True)
    return logp, old, torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([[1.0, 1, 1], [1, 1, 0]],
                                                                                     dtype=torch.float64)


def loss_and_grad(rft, logp, old, advantages, mask, **kwargs):
    denominator = loss_denominator(mask, rft.loss_aggregation, rft.max_new_tokens)
    loss = rft_loss(rft, logp, old, advantages, mask, denominator, **kwargs).loss
    grads = torch.autograd.grad(loss, [logp] + ([kwargs["entropy"]] if kwargs.get("entropy_coef") is not None
                                                 else []))
    return loss.detach(), grads


# --- hand computations ---------------------------------------------------------------------------------------

def test_gspo_clips_one_length_normalised_ratio_per_completion():
    logp, old, advantages, mask = fixed_batch()
    rft = settings(objective="gspo", loss_aggregation="seq_mean")
    # Row 0: exp(mean(log 1, log 1.5, log 0.5)) = 0.75^(1/3) = 0.9086, inside [0.8, 1.28]; row 1 over its two
    # tokens: 0.75^(1/2) = 0.8660, inside too. A mean of the ratios (1.0 and 1.0) or their product would differ.
    s0, s1 = 0.75 ** (1 / 3), 0.75 ** 0.5
    loss, (grad,) = loss_and_grad(rft, logp, old, advantages, mask)
    assert loss.item() == pytest.approx((-s0 * 1 + s1 * 2) / 2)
    # d(-s A)/d logp_t = -s A / |y|, every token of a completion alike; the completion averaged once (seq_mean).
    expected = torch.tensor([[-s0 / 3] * 3, [2 * s1 / 2, 2 * s1 / 2, 0.0]], dtype=torch.float64) / 2
    torch.testing.assert_close(grad, expected)
    # A ratio clipped whole: row 1's at 0.5 (log-ratios -0.693 on both tokens) is below 0.8 with A < 0.
    far = torch.log(torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 7.0]], dtype=torch.float64)).requires_grad_(True)
    result = policy_loss("gspo", far, old, advantages, mask, rft)
    assert result.stats["clip_low"].tolist() == [[False], [True]]
    assert result.per_token[1].item() == pytest.approx(0.8 * 2)


def test_luspo_weighs_a_completion_by_its_length():
    logp, old, advantages, mask = fixed_batch()
    rft = settings(objective="luspo", loss_aggregation="seq_sum")
    s0, s1 = 0.75 ** (1 / 3), 0.75 ** 0.5
    loss, _ = loss_and_grad(rft, logp, old, advantages, mask)
    assert loss.item() == pytest.approx((-s0 * 1 * 3 + s1 * 2 * 2) / 2)


def test_cispo_keeps_the_gradient_where_clip_drops_it():
    logp, old, advantages, mask = fixed_batch()
    rft = settings(objective="cispo")
    _, (grad,) = loss_and_grad(rft, logp, old, advantages, mask)
    # -sg(min(r, 1.28)) A grad log p: row 0's ratio 1.5 is capped at 1.28 but keeps a gradient (clip gives 0
    # there); row 1's 0.5 with A < 0 keeps 0.5 * 2 (clip gives 0 below 0.8). Without the stop-gradient the
    # weight's own derivative would add r A log p.
    expected = torch.tensor([[-1.0, -1.28, -0.5], [2 * 0.5, 2 * 1.28, 0.0]], dtype=torch.float64) / 5
    torch.testing.assert_close(grad, expected)


def test_sapo_gates_softly_with_a_temperature_per_sign():
    logp, old, advantages, mask = fixed_batch()
    rft = settings(objective="sapo", loss_aggregation="token_mean", **{"sapo.tau_pos": 1.0, "sapo.tau_neg": 2.0})
    loss, (grad,) = loss_and_grad(rft, logp, old, advantages, mask)
    ratio = torch.tensor([[1.0, 1.5, 0.5], [0.5, 1.5, 1.0]], dtype=torch.float64)
    tau = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    a = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    gate = torch.sigmoid(tau * (ratio - 1))
    assert loss.item() == pytest.approx(float((-(4 / tau) * gate * a * mask).sum() / 5))
    # d/dlogp of -(4/tau) sigmoid(tau (r - 1)) A = -4 sigmoid' r A: at r = 1 exactly -A, the policy gradient.
    torch.testing.assert_close(grad, -4 * gate * (1 - gate) * ratio * a * mask / 5)
    assert grad[0, 0].item() == pytest.approx(-1 / 5)


def test_vespo_weight_is_one_on_policy_and_a_gamma_off_it():
    logp, old, advantages, mask = fixed_batch()
    phi = vespo_weights(logp.detach() - old, mask, advantages, k_pos=2.0, lambda_pos=3.0, k_neg=3.0,
                        lambda_neg=2.0)
    # w is the product of a completion's ratios: 0.75 for both rows (a mean would give 1 and weight 1).
    w = 0.75
    assert phi[0].item() == pytest.approx(math.exp(3) * w ** 2 * math.exp(-3 * w))
    assert phi[1].item() == pytest.approx(math.exp(2) * w ** 3 * math.exp(-2 * w))
    assert vespo_weights(torch.zeros(2, 3), mask, advantages, 2.0, 3.0, 3.0, 2.0).flatten().tolist() == [1.0, 1.0]


def test_two_sided_clipping_caps_negative_advantages_only():
    old = torch.zeros(2, 1, dtype=torch.float64)
    logp = torch.log(torch.tensor([[3.0], [3.0]], dtype=torch.float64)).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 1, dtype=torch.float64)
    rft = settings(clip_delta=2.0)
    result = policy_loss("clip", logp, old, advantages, mask, rft)
    # A > 0: clipped at 1.28 as before. A < 0: -min(-min(3, 2), -clip(3)) = 2, not 3.
    assert result.per_token.flatten().tolist() == pytest.approx([-1.28, 2.0])
    assert result.stats["clip_delta"].flatten().tolist() == [False, True]


def test_aggregations_by_hand():
    logp, old, advantages, mask = fixed_batch()
    per_token = policy_loss("clip", logp, old, advantages, mask, settings()).per_token.detach()
    terms = per_token * mask  # row 0: -1, -1.28, -0.5; row 1: 1.6, 3.0
    rft = settings(loss_aggregation="max_length", max_new_tokens=4)
    loss, _ = loss_and_grad(rft, logp, old, advantages, mask)
    assert loss.item() == pytest.approx(float(terms.sum()) / (2 * 4))  # Dr. GRPO: rows x the longest allowed
    rft = settings(loss_aggregation="seq_sum")
    loss, _ = loss_and_grad(rft, logp, old, advantages, mask)
    assert loss.item() == pytest.approx(float(terms.sum()) / 2)


def test_high_entropy_tokens_by_quantile():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.7, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0]])  # the 7.0 is past the end: neither kept nor counted
    # Counted: 0.1 0.2 0.3 0.5 0.7 0.9. The 0.7 quantile sits at position 0.7 x 5 = 3.5, halfway from 0.5 to 0.7:
    # 0.6, so 0.7 and 0.9 are kept; the 0.6 quantile is 0.5 itself, kept too (at least the threshold).
    assert high_entropy_mask(entropy, mask, keep=0.3).tolist() == [[False, True, False, False],
                                                                   [False, True, False, False]]
    assert high_entropy_mask(entropy, mask, keep=0.4).tolist() == [[False, True, True, False],
                                                                   [False, True, False, False]]
    assert high_entropy_mask(entropy, mask, keep=1.0).tolist() == mask.bool().tolist()
    assert high_entropy_mask(entropy, mask, keep=0.0).sum() == 1


def test_adaptive_entropy_control_by_hand():
    control = EntropyControl(settings(**{"entropy.coef": 0.01, "entropy.adaptive": True, "entropy.target": 0.5,
                                         "entropy.step": 0.01, "entropy.max": 0.025}).entropy)
    assert control.applied() == 0.0  # nothing measured yet
    control.observe(0.4)  # at or below the target: more bonus, and it applies
    assert (control.coef, control.applied()) == (pytest.approx(0.02), pytest.approx(0.02))
    control.observe(0.3)
    assert control.coef == pytest.approx(0.025)  # capped at max
    control.observe(0.9)  # above: less, and none applied
    assert (control.coef, control.applied()) == (pytest.approx(0.015), 0.0)
    restored = EntropyControl(control.settings)
    restored.load_state_dict(control.state_dict())
    assert (restored.coef, restored.last_entropy) == (control.coef, control.last_entropy)


def test_advantage_scales_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    centred = rewards - rewards.mean(1, keepdim=True)
    batch_std = rewards.std()  # sample std of all eight
    torch.testing.assert_close(group_advantages(rewards, "grpo", scale="batch"), centred / (batch_std + 1e-6))
    torch.testing.assert_close(group_advantages(rewards, "grpo", scale="none"), centred)
    torch.testing.assert_close(group_advantages(rewards, "grpo"), group_advantages(rewards, "grpo", scale="group"))
    # rloo divided by its group's std; the batch given (every rank's rewards) replaces the local table
    others = torch.tensor([[1.0, 7.0]])
    torch.testing.assert_close(group_advantages(rewards, "rloo", scale="batch", batch_rewards=others),
                               group_advantages(rewards, "rloo") / (others.std() + 1e-6))


# --- equal to TRL ----------------------------------------------------------------------------------------------

def random_batch(seed: int, off_policy: float = 0.5):
    """Four rollouts of six tokens, ragged lengths, ratios up to about e^(2 off_policy) either way."""
    generator = torch.Generator().manual_seed(seed)
    logp = (torch.randn(4, 6, generator=generator, dtype=torch.float64) * 0.5 - 1.0).requires_grad_(True)
    old = logp.detach() + off_policy * torch.randn(4, 6, generator=generator, dtype=torch.float64)
    ref = logp.detach() + 0.3 * torch.randn(4, 6, generator=generator, dtype=torch.float64)
    advantages = torch.tensor([1.2, -0.7, 0.0, -1.9], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
                        dtype=torch.float64)
    entropy = (2 * torch.rand(4, 6, generator=generator, dtype=torch.float64)).requires_grad_(True)
    return logp, old, ref, advantages, mask, entropy


# (cpt's rft keys, TRL's GRPOConfig) for the same loss. TRL's loss_type fixes the aggregation: grpo and sapo
# average per completion (seq_mean), dapo, cispo and vespo per token (token_mean), dr_grpo over rows x
# max_completion_length (max_length), luspo sums per completion (seq_sum).
CASES = {
    "clip (dapo)": ({}, {"loss_type": "dapo", "epsilon_high": 0.28}),
    "clip seq_mean (grpo)": ({"loss_aggregation": "seq_mean"}, {"loss_type": "grpo", "epsilon_high": 0.28}),
    "clip max_length (dr_grpo)": ({"loss_aggregation": "max_length"}, {"loss_type": "dr_grpo",
                                                                         "epsilon_high": 0.28}),
    "clip_delta": ({"clip_delta": 1.5}, {"loss_type": "dapo", "epsilon_high": 0.28, "delta": 1.5}),
    "gspo": ({"objective": "gspo", "loss_aggregation": "seq_mean", "clip_low": 3e-4, "clip_high": 4e-4},
             {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4}),
    "gspo clip_delta": ({"objective": "gspo", "loss_aggregation": "seq_mean", "clip_delta": 1.3},
                        {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon_high": 0.28,
                         "delta": 1.3}),
    "luspo": ({"objective": "luspo", "loss_aggregation": "seq_sum"},
              {"loss_type": "luspo", "importance_sampling_level": "sequence", "epsilon_high": 0.28}),
    "cispo": ({"objective": "cispo", "clip_high": 0.28}, {"loss_type": "cispo", "epsilon_high": 1.28}),
    "cispo at ScaleRL's cap": ({"objective": "cispo", "clip_high": 4.0}, {"loss_type": "cispo",
                                                                          "epsilon_high": 5.0}),
    "sapo": ({"objective": "sapo", "loss_aggregation": "seq_mean", "sapo.tau_pos": 0.7, "sapo.tau_neg": 1.6},
             {"loss_type": "sapo", "sapo_temperature_pos": 0.7, "sapo_temperature_neg": 1.6}),
    "vespo": ({"objective": "vespo", "vespo.k_pos": 1.5, "vespo.lambda_pos": 2.5},
              {"loss_type": "vespo", "vespo_k_pos": 1.5, "vespo_lambda_pos": 2.5}),
    "kl k3 in the loss": ({"kl.coef": 0.04}, {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04,
                                              "use_bias_correction_kl": False}),
    "kl importance_weighted": ({"kl.coef": 0.04, "kl.importance_weighted": True},
                               {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04}),
    "gspo kl importance_weighted": ({"objective": "gspo", "loss_aggregation": "seq_mean", "kl.coef": 0.04,
                                     "kl.importance_weighted": True},
                                    {"loss_type": "grpo", "importance_sampling_level": "sequence",
                                     "epsilon_high": 0.28, "beta": 0.04}),
    "top_quantile": ({"entropy.top_quantile": 0.2}, {"loss_type": "dapo", "epsilon_high": 0.28,
                                                     "top_entropy_quantile": 0.2}),
    "sapo top_quantile": ({"objective": "sapo", "loss_aggregation": "seq_mean", "entropy.top_quantile": 0.5},
                          {"loss_type": "sapo", "top_entropy_quantile": 0.5}),
    "entropy bonus": ({"entropy.coef": 0.05}, {"loss_type": "dapo", "epsilon_high": 0.28, "entropy_coef": 0.05}),
    "entropy bonus on top tokens": ({"objective": "cispo", "clip_high": 4.0, "entropy.coef": 0.05,
                                     "entropy.top_quantile": 0.3},
                                    {"loss_type": "cispo", "epsilon_high": 5.0, "entropy_coef": 0.05,
                                     "top_entropy_quantile": 0.3}),
}


@pytest.mark.slow  # imports TRL (seconds)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_equal_trls(case, seed, tmp_path):
    from tests.helpers.trl_grpo import TRLLoss

    ours, theirs = CASES[case]
    rft = settings(max_new_tokens=6, **ours)
    logp, old, ref, advantages, mask, entropy = random_batch(seed)
    beta = rft.kl.coef if "kl.coef" in ours else 0.0
    bonus = rft.entropy.coef if rft.entropy.coef else None
    entropy_in = entropy if (bonus is not None or rft.entropy.top_quantile < 1) else None
    loss, grads = loss_and_grad(rft, logp, old, advantages, mask, entropy=entropy_in,
                                ref_logp=ref if beta else None, beta=beta, entropy_coef=bonus)
    trl = TRLLoss(tmp_path, max_completion_length=6, **{"beta": 0.0, **theirs})
    reference = trl(logp, old, advantages, mask, entropy=entropy, ref_logp=ref if beta else None)
    reference_grads = torch.autograd.grad(reference, [logp] + ([entropy] if bonus is not None else []))
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    for mine, its in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, its, atol=1e-6, rtol=0)
    assert grads[0].abs().sum() > 0  # a case whose gradient vanished would pass for nothing


@pytest.mark.slow  # imports TRL (seconds)
def test_adaptive_entropy_control_follows_trls_step_by_step(tmp_path):
    from tests.helpers.trl_grpo import TRLLoss

    values = {"coef": 0.02, "target": 1.0, "step": 0.01, "min": 0.0, "max": 0.03}
    rft = settings(max_new_tokens=6, **{"entropy.adaptive": True, **{f"entropy.{k}": v for k, v in values.items()}})
    trl = TRLLoss(tmp_path, max_completion_length=6, loss_type="dapo", epsilon_high=0.28, beta=0.0,
                  entropy_coef=0.02, use_adaptive_entropy=True, entropy_target=1.0, entropy_coef_delta=0.01,
                  entropy_coef_min=0.0, entropy_coef_max=0.03)
    control = EntropyControl(rft.entropy)
    applied = []
    for step, level in enumerate([0.3, 0.5, 0.4, 1.5, 1.4, 0.2]):  # mean entropies below, then above, the target
        logp, old, _, advantages, mask, entropy = random_batch(step)
        entropy = (entropy.detach() * level).requires_grad_(True)
        denominator = loss_denominator(mask, "token_mean")
        parts = rft_loss(rft, logp, old, advantages, mask, denominator, entropy=entropy,
                         entropy_coef=control.applied())
        applied.append(control.applied())
        reference = trl(logp, old, advantages, mask, entropy=entropy)
        assert parts.loss.item() == pytest.approx(reference.item(), abs=1e-6)
        mine = torch.autograd.grad(parts.loss, entropy)[0]
        torch.testing.assert_close(mine, torch.autograd.grad(reference, entropy)[0], atol=1e-6, rtol=0)
        control.observe(float((entropy.detach() * parts.acting).sum() / parts.acting.sum()))
        assert control.coef == pytest.approx(trl.entropy_coef)
    assert applied[0] == 0.0 and max(applied) > 0  # the bonus switched on after a low step, and off again


@pytest.mark.slow  # imports TRL (seconds)
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantage_scales_are_trls(scale):
    """TRL's scale_rewards formula (its _generate_and_score_completions, which needs a whole trainer to call): the
    group mean taken off, divided by the group's or the batch's std (its nanstd, n - 1) + eps."""
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[1.0, 0.0, 0.25, 1.0], [1.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    flat = rewards.flatten()
    mean = rewards.mean(1).repeat_interleave(4)
    std = nanstd(rewards, dim=1).repeat_interleave(4) if scale != "batch" else nanstd(flat).expand_as(flat)
    expected = flat - mean if scale == "none" else (flat - mean) / (std + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, "grpo", eps=1e-4, scale=scale).flatten(), expected)


# --- combinations the config refuses ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["rft.objective=gspo"], "gspo is defined with rft.loss_aggregation=seq_mean, not token_mean"),
    (["rft.objective=luspo", "rft.loss_aggregation=seq_mean"], "luspo is defined with rft.loss_aggregation=seq_sum"),
    (["rft.objective=sapo", "rft.loss_aggregation=seq_sum"], "sapo is defined with"),
    (["rft.objective=cispo", "rft.clip_delta=2"], "cispo has none"),
    (["rft.clip_delta=1.2"], r"below the clip it extends \(1 \+ clip_high = 1.28\)"),
    (["rft.objective=gspo", "rft.loss_aggregation=seq_mean", "rft.entropy.top_quantile=0.2"],
     "keeps single tokens in the loss, but rft.objective=gspo weighs whole completions"),
    (["rft.entropy.adaptive=true", "rft.entropy.coef=2"], r"within \[min, max\] = \[0.0, 1.0\]"),
    (["rft.advantage=drgrpo", "rft.advantage_scale=batch"], "for rft.advantage_scale=batch use grpo or rloo or remax"),
    (["method=onpolicy_sft", "rft.objective=cispo", "rft.entropy.coef=0.1"],
     "rft.objective, rft.entropy shape the RFT policy loss and would do nothing here"),
    (["rft.advantage=remax", "rft.group_size=1", "rft.advantage_scale=group"], "set rft.group_size >= 2"),
    (["rft.kl.importance_weighted=true", "rft.kl.placement=reward"], "set placement=loss"),
    (["rft.objective=ppo"], "bad value for 'rft.objective': 'ppo'; choose one of clip, gspo, luspo, cispo"),
    (["rft.advantage_scale=std"], "choose one of estimator, group, batch, none"),
])
def test_the_config_refuses_what_has_no_meaning(overrides, message):
    from cpt.config import load_config
    from cpt.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=rft", *overrides])


def test_every_objective_and_option_is_in_fit_help():
    from cpt.config import format_help
    from cpt.rl.objectives import OBJECTIVES

    text = format_help("fit")
    assert f"Must be: one of {', '.join(OBJECTIVES)}." in text
    for key in ("rft.clip_delta", "rft.advantage_scale", "rft.sapo.tau_pos", "rft.vespo.lambda_neg",
                "rft.entropy.coef", "rft.entropy.adaptive", "rft.entropy.top_quantile", "rft.kl.importance_weighted"):
        assert f"\n  {key} " in text or f"\n  {key}\n" in text


@pytest.mark.parametrize("objective, aggregation", [("clip", "token_mean"), ("gspo", "seq_mean"),
                                                    ("luspo", "seq_sum"), ("cispo", "token_mean"),
                                                    ("sapo", "seq_mean"), ("vespo", "token_mean")])
def test_on_policy_every_objective_is_the_policy_gradient(objective, aggregation):
    """One policy epoch (old = the current policy): every objective's gradient is A grad log p, weighed as its
    aggregation weighs tokens, which is why the objectives study runs two epochs."""
    logp, _, _, advantages, mask, _ = random_batch(3)
    rft = settings(objective=objective, loss_aggregation=aggregation, max_new_tokens=6)
    _, (grad,) = loss_and_grad(rft, logp, logp.detach(), advantages, mask)
    denominator = loss_denominator(mask, aggregation, max_tokens=6)
    expected, = torch.autograd.grad(aggregate(-advantages.unsqueeze(1) * logp, mask, aggregation, denominator), logp)
    torch.testing.assert_close(grad, expected)
