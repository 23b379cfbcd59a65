"""How close a completed similarity is to the one of the complete data."""

from __future__ import annotations

import torch


def relative_error(S: torch.Tensor, truth: torch.Tensor) -> float:
    """||S - truth||_F / ||truth||_F."""
    return float((S - truth).norm() / truth.norm())


def recall_at_k(S: torch.Tensor, truth: torch.Tensor, k: int = 10) -> float:
    """Mean over samples of the share of the true k nearest neighbours (most similar, self excluded) that are
    among the k nearest by S."""
    n = S.shape[0]
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool, device=S.device)
    ranked = torch.nan_to_num(S, nan=-torch.inf).masked_fill(eye, -torch.inf).topk(k, dim=1).indices
    true = truth.masked_fill(eye, -torch.inf).topk(k, dim=1).indices
    hits = (ranked.unsqueeze(2) == true.unsqueeze(1)).any(2).sum(1)
    return float(hits.double().mean() / k)
