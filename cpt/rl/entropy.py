"""Entropy in the RFT loss (`rft.entropy`): a bonus that keeps the policy from collapsing onto one answer, its
adaptive coefficient (Skywork-OR1), and the selection of the highest-entropy tokens ("Beyond the 80/20 rule"),
each as TRL 1.16's GRPOTrainer has it."""

from __future__ import annotations

import math

import torch


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """(rollouts, tokens) bool: the counted tokens whose entropy is at least the (1 - keep) quantile of the counted
    tokens' entropies (linear interpolation, as torch.quantile): about the `keep` share with the highest entropy,
    ties included. keep = 0 leaves the highest alone."""
    counted = mask.bool()
    values = entropy[counted].float()
    if values.numel() == 0:
        return torch.zeros_like(counted)
    return (entropy * mask >= torch.quantile(values, 1 - keep)) & counted


class EntropyControl:
    """The entropy bonus's coefficient, step by step (rft.entropy). Fixed: `coef` throughout. Adaptive: the bonus
    applies only while the entropy measured at the last optimizer step was at or below `target` (none before the
    first measurement), and after each step the coefficient moves by `step` towards more bonus when that step's
    entropy was at or below the target, towards less otherwise, within [min, max]."""

    def __init__(self, settings):
        self.settings = settings
        self.coef = float(settings.coef)
        self.last_entropy = math.inf

    @property
    def enabled(self) -> bool:
        """Whether the loss has a bonus term at all (adaptive control keeps it even at a coefficient of 0)."""
        return self.coef != 0.0 or bool(self.settings.adaptive)

    def applied(self) -> float:
        """The coefficient this optimizer step's loss uses."""
        if self.settings.adaptive and self.last_entropy > self.settings.target:
            return 0.0
        return self.coef

    def observe(self, entropy: float) -> None:
        """After an optimizer step: the mean entropy of the tokens its bonus acted on, over all processes."""
        if not self.settings.adaptive:
            return
        s = self.settings
        self.coef = min(self.coef + s.step, s.max) if entropy <= s.target else max(self.coef - s.step, s.min)
        self.last_entropy = entropy

    def state_dict(self) -> dict:
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.coef, self.last_entropy = float(state["coef"]), float(state["last_entropy"])
