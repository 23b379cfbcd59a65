"""What SMCNN and SMCNmF are compared with: S0 itself, its projection onto the PSD cone (DMC), and imputing the
data first (column mean, k nearest neighbours, singular value thresholding) then taking the cosine."""

from __future__ import annotations

import torch

from cpt.smc.similarity import check_data, cosine


def observed_or_zero(S0: torch.Tensor) -> torch.Tensor:
    """S0 with its missing entries (no co-observed feature) read as 0, the cosine of unrelated samples."""
    return torch.nan_to_num(S0, nan=0.0)


def dmc(S0: torch.Tensor) -> torch.Tensor:
    """The nearest PSD matrix to S0 in Frobenius norm: a full eigendecomposition, negative eigenvalues set to 0.
    O(n^3): the cost SMCNN and SMCNmF avoid."""
    w, U = torch.linalg.eigh(observed_or_zero(S0))
    return (U * w.clamp_min(0)) @ U.T


def impute_mean(X: torch.Tensor) -> torch.Tensor:
    check_data(X)
    means = torch.nanmean(X, dim=0).nan_to_num(0.0)
    return torch.where(torch.isnan(X), means.expand_as(X), X)


def impute_knn(X: torch.Tensor, neighbours: int = 5) -> torch.Tensor:
    """scikit-learn's KNNImputer: each missing value the mean of the k nearest samples that observe it."""
    from sklearn.impute import KNNImputer

    check_data(X)
    filled = KNNImputer(n_neighbors=neighbours, keep_empty_features=True).fit_transform(X.cpu().double().numpy())
    return torch.as_tensor(filled, dtype=X.dtype, device=X.device)


def impute_svt(X: torch.Tensor, shrink: float = 0.1, iterations: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Soft-impute: fill the missing values from a low-rank fit, refit, repeat. Each fit keeps the singular
    values of the filled data minus `shrink` times the largest (an SVD of the n x d data per iteration)."""
    missing = torch.isnan(X)
    filled = impute_mean(X)
    threshold = shrink * torch.linalg.matrix_norm(filled, ord=2)
    for _ in range(iterations):
        U, s, Vh = torch.linalg.svd(filled, full_matrices=False)
        low_rank = (U * (s - threshold).clamp_min(0)) @ Vh
        update = torch.where(missing, low_rank, filled)
        change = (update - filled).norm() / filled.norm().clamp_min(1e-12)
        filled = update
        if change < tol:
            break
    return filled


def imputed_cosine(X: torch.Tensor, how: str) -> torch.Tensor:
    return cosine({"mean": impute_mean, "knn": impute_knn, "svt": impute_svt}[how](X))
