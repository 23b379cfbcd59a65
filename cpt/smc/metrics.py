"""How close a completed similarity is to the one of the complete data, and how close any completion of S0 that
keeps S0's eigenvectors could get."""

from __future__ import annotations

import torch

from cpt.smc.baselines import observed_or_zero


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


def spectral_floor(S0: torch.Tensor, truth: torch.Tensor) -> float:
    """The least relative error of any matrix with S0's eigenvectors (missing entries read as 0): each eigenvalue
    is set to u^T truth u, its Frobenius-optimal value, which needs the truth. Fitting V V^T to a fully observed
    S0 under a unitarily invariant regularizer (SMCNN, SMCNmF) only reweights S0's eigenvectors, so this bounds
    what such a completion can reach on that S0 however its rank and lam are tuned. A diagnostic, O(n^3)."""
    _, U = torch.linalg.eigh(observed_or_zero(S0))
    best = ((U.T @ truth) * U.T).sum(1)  # u_i^T truth u_i, >= 0 for a PSD truth
    return relative_error((U * best) @ U.T, truth)
