"""Log-probabilities of completion tokens under a model: what the policy loss, the KL term and the forgetting
analysis are computed from."""

from __future__ import annotations

import torch
from torch import nn

from cpt.data.batches import Batch


def token_log_probs(model: nn.Module, inputs: Batch, completion_ids: torch.Tensor, temperature: float,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token | prefix) of every completion token under the sampling temperature, and the entropy of
    the next-token distribution (a health metric, without gradient). `inputs` are the prompts followed by the
    completions (Rollouts.sequences)."""
    n = completion_ids.shape[1]
    # The logits at position i predict token i + 1: the last n + 1 positions cover the n completion tokens.
    logits = model(**inputs.model_inputs(), logits_to_keep=n + 1).logits[:, :-1].float() / temperature
    log_probs = logits.log_softmax(-1)
    chosen = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    return chosen, entropy
