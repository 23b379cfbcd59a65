"""RFT rewards: named components from a plug-in function, combined by configured weights.

A reward function is a plain callable, named in the config by import path (`rft.reward.function`), called as

    fn(completion: str, example: Example, *, scorer: Scorer, template: str) -> Mapping[str, float]

`scorer` is the task's own scorer (the evaluation metric) and `template` the prompt template in use; a
function may ignore both (`def fn(completion, example, **_)`). The total reward is the weighted sum of the
components named in `rft.reward.weights` (default 0.9 accuracy + 0.1 format, as in the study); a component
with weight 0 is logged but not rewarded, and one without a weight is ignored. A function that raises, or
returns a non-finite value, gives 0 for that sample: the run goes on and the failures are counted. Only a
function that fails on every sample of the very first batch stops the run, as that is a bug, not bad luck.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from cpt.data.examples import Example
from cpt.data.scoring import BOXED, Scorer, box_end
from cpt.errors import ConfigError
from cpt.plugins import load_object

log = logging.getLogger(__name__)

RewardFunction = Callable[..., Mapping[str, float]]
STUDY_WEIGHTS = {"accuracy": 0.9, "format": 0.1}
THINK = re.compile(r"\s*<think>(.*?)</think>(.*)", re.DOTALL)


def _one_closed_box(text: str) -> bool:
    return text.count(BOXED) == 1 and box_end(text, text.index(BOXED) + len(BOXED)) is not None


def format_reward(completion: str, template: str) -> float:
    """1 when the completion has the template's shape: exactly one closed \\boxed{...}, preceded under `cot` by
    one non-empty <think>...</think> block that opens the completion; else 0."""
    if template != "cot":
        return float("<think>" not in completion and _one_closed_box(completion))
    match = THINK.fullmatch(completion)
    if match is None or not match.group(1).strip() or "<think>" in match.group(1) + match.group(2):
        return 0.0
    return float("</think>" not in match.group(2) and _one_closed_box(match.group(2)))


def task_reward(completion: str, example: Example, *, scorer: Scorer, template: str) -> dict[str, float]:
    """The study's reward: accuracy by the task's own scorer, and whether the format was followed."""
    return {"accuracy": float(scorer(completion, example)), "format": format_reward(completion, template)}


@dataclass
class Scores:
    """What the reward function made of a batch of completions."""

    total: torch.Tensor  # (completions,) the weighted reward
    components: dict[str, torch.Tensor]  # name -> (completions,)
    failed: torch.Tensor  # (completions,) bool: the reward function failed on it (scored 0)


class Rewards:
    """Scores completions with a reward function and combines its components by weight."""

    def __init__(self, function: RewardFunction, weights: Mapping[str, float], name: str = "reward function"):
        self.function, self.weights, self.name = function, dict(weights), name
        self.errors_total = self.calls = 0

    @classmethod
    def from_config(cls, reward_cfg) -> Rewards:
        weights = STUDY_WEIGHTS if reward_cfg.weights is None else reward_cfg.weights
        return cls(load_object(reward_cfg.function, "reward function"), weights, reward_cfg.function)

    def _score_one(self, completion: str, example: Example, scorer: Scorer, template: str) -> dict[str, float] | None:
        try:
            components = self.function(completion, example, scorer=scorer, template=template)
            components = {str(k): float(v) for k, v in dict(components).items()}
        except Exception as error:  # a user's function: any failure scores 0, is counted, and the run goes on
            reason = f"{type(error).__name__}: {error}"
        else:
            bad = [k for k, v in components.items() if not math.isfinite(v)]
            if not bad:
                return components
            reason = f"non-finite component(s) {', '.join(bad)}"
        self.errors_total += 1
        if self.errors_total <= 5:
            log.warning("%s failed on completion %r (scored 0): %s%s", self.name, completion[:80], reason,
                        "; further failures are only counted (reward/errors)" if self.errors_total == 5 else "")
        return None

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], scorer: Scorer | Sequence[Scorer],
                 template: str | Sequence[str]) -> Scores:
        """Scores each completion; `scorer` and `template` are one for all, or one per completion (a batch mixing
        tasks)."""
        scorers = [scorer] * len(completions) if callable(scorer) else list(scorer)
        templates = [template] * len(completions) if isinstance(template, str) else list(template)
        scored = [self._score_one(c, e, f, t) for c, e, f, t in zip(completions, examples, scorers, templates)]
        self.calls += 1
        succeeded = [s for s in scored if s is not None]
        if self.calls == 1 and scored and not succeeded:
            raise ConfigError(f"{self.name} failed on every completion of the first batch (see the warnings above); "
                              "fix the function or rft.reward.function")
        missing = [name for name, weight in self.weights.items() if weight and succeeded
                   and all(name not in s for s in succeeded)]
        if missing:
            returned = ", ".join(sorted({k for s in succeeded for k in s}))
            raise ConfigError(f"{self.name} returned no {', '.join(missing)} component; it returns {returned}. "
                              f"Set rft.reward.weights to its components.")
        # Always the configured components, so every rank logs the same metrics.
        components = {name: torch.tensor([(s or {}).get(name, 0.0) for s in scored]) for name in self.weights}
        total = sum((weight * components[name] for name, weight in self.weights.items()), torch.zeros(len(scored)))
        return Scores(total, components, failed=torch.tensor([s is None for s in scored], dtype=torch.bool))
