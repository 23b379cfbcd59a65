"""A batch of rollouts: what sampling hands to scoring, the rollout filters, the advantages, the RFT update and the
forgetting analysis.

Rows come in groups: the `group_size` completions of one prompt are consecutive rows, and a group always stays on
the rank that sampled it, so group statistics never straddle ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.nn import functional as F

from cpt.data.batches import Batch
from cpt.rl.rewards import Scores


def completion_mask(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of each completion's tokens up to and including its first end-of-turn token, truncated rows:
    those that never emitted it)."""
    is_eos = (ids == eos_id).long()
    before_first_eos = (is_eos.cumsum(1) - is_eos) == 0
    return before_first_eos, is_eos.sum(1) == 0


@dataclass
class Rollouts:
    prompts: Batch  # row i: the prompt completion i answers (each prompt repeated group_size times)
    completion_ids: torch.Tensor  # (rollouts, tokens), padded after each completion's end-of-turn token
    mask: torch.Tensor  # (rollouts, tokens) bool: the completion's tokens, its end-of-turn token included
    truncated: torch.Tensor  # (rollouts,) bool: cut off at max_new_tokens without ending
    group_size: int
    rewards: torch.Tensor | None = None  # (rollouts,) the weighted reward; None until scored
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (rollouts,) reward components
    failed: torch.Tensor | None = None  # (rollouts,) bool: the reward function failed (scored 0)

    @classmethod
    def sampled(cls, prompts: Batch, completion_ids: torch.Tensor, eos_id: int, group_size: int) -> Rollouts:
        return cls(prompts, completion_ids, *completion_mask(completion_ids, eos_id), group_size)

    def scored(self, scores: Scores) -> Rollouts:
        return replace(self, rewards=scores.total, components=scores.components, failed=scores.failed)

    def __len__(self) -> int:
        return len(self.completion_ids)

    def group_rewards(self) -> torch.Tensor:
        """(groups, group_size) rewards."""
        return self.rewards.view(-1, self.group_size)

    def right(self, threshold: float) -> torch.Tensor:
        """(rollouts,) bool: the rollout is right, its `accuracy` reward component (the total reward if the reward
        function gives none) at least `threshold`."""
        return self.components.get("accuracy", self.rewards) >= threshold

    def varied_groups(self) -> torch.Tensor:
        """(groups,) bool: the group's rewards are not all equal (an all-equal group has zero advantage)."""
        groups = self.group_rewards()
        return groups.max(1).values > groups.min(1).values

    def take_groups(self, groups: Sequence[int]) -> Rollouts:
        """The given groups, in that order."""
        rows = [g * self.group_size + i for g in groups for i in range(self.group_size)]
        index = torch.tensor(rows, dtype=torch.long)

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[index.to(tensor.device)]

        return Rollouts(self.prompts.select(rows), pick(self.completion_ids), pick(self.mask), pick(self.truncated),
                        self.group_size, pick(self.rewards),
                        {name: pick(values) for name, values in self.components.items()}, pick(self.failed))

    @staticmethod
    def concat(parts: Sequence[Rollouts], pad_id: int) -> Rollouts:
        """Rollouts of several rounds as one batch: prompts re-padded on the left, completions on the right."""
        width = max(part.completion_ids.shape[1] for part in parts)

        def joined(name: str, fill=None) -> torch.Tensor | None:
            tensors = [getattr(part, name) for part in parts]
            if tensors[0] is None:
                return None
            if fill is not None:  # (rollouts, tokens): padded on the right to the widest round
                tensors = [F.pad(t, (0, width - t.shape[1]), value=fill) for t in tensors]
            return torch.cat(tensors)

        return Rollouts(Batch.concat([part.prompts for part in parts], pad_id), joined("completion_ids", pad_id),
                        joined("mask", False), joined("truncated"), parts[0].group_size, joined("rewards"),
                        {name: torch.cat([part.components[name] for part in parts]) for name in parts[0].components},
                        joined("failed"))
