"""The reference policy of the KL term: the original base model, or the model as it was when the current task
started (`rft.kl.reference`).

With LoRA the base is the backbone with its adapters switched off, so no second copy is loaded; the
start-of-task reference keeps a copy of the adapter weights only and swaps it in for the reference pass.
Under full fine-tuning the reference is a frozen copy of the backbone (sharded like it under FSDP), refreshed
in place at each task start when it follows the tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cpt.model.backbone import has_adapters, reshard
from cpt.rl.policy_loss import REFERENCES


class Reference(nn.Module):
    """A module only so that the frozen copy, when there is one, moves to the device with the policy."""

    def __init__(self, policy: nn.Module, kind: str, build_copy: Callable[[], nn.Module]):
        super().__init__()
        if kind not in REFERENCES:
            raise ValueError(f"unknown reference {kind!r}; choose one of {', '.join(REFERENCES)}")
        self.kind = kind
        self.copy: nn.Module | None = None
        self.snapshot: list[torch.Tensor] | None = None  # adapter weights at the start of the task
        if not has_adapters(policy):
            # Left in training mode like the policy (Lightning warns about modules in eval mode at fit start);
            # `model()` switches it to eval for every use.
            self.copy = build_copy().requires_grad_(False).train()

    @torch.no_grad()
    def start_task(self, policy: nn.Module) -> None:
        """Called when a task starts: the start-of-task reference becomes the current policy."""
        if self.kind != "task_start":
            return
        reshard(policy)
        if self.copy is not None:
            reshard(self.copy)
            _assign(list(self.copy.parameters()), list(policy.parameters()))
        else:
            self.snapshot = [p.detach().clone() for p in policy.parameters() if p.requires_grad]

    @contextmanager
    def model(self, policy: nn.Module) -> Iterator[nn.Module]:
        """The module to run for reference log-probabilities (under no_grad)."""
        if self.copy is not None:
            try:
                yield self.copy.eval()  # Trainer.fit puts every submodule in training mode
            finally:
                reshard(self.copy)
        elif self.snapshot is None:
            with policy.disable_adapter():
                yield policy
        else:
            reshard(policy)  # write the shards, not a gathered copy FSDP2 would discard
            trainable = [p for p in policy.parameters() if p.requires_grad]
            current = [p.detach().clone() for p in trainable]
            _assign(trainable, self.snapshot)
            try:
                yield policy
            finally:
                _assign(trainable, current)


@torch.no_grad()
def _assign(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """In-place copy, so FSDP2 shards and optimizer state keep pointing at the same parameters."""
    for param, value in zip(params, values, strict=True):
        param.copy_(value)
