"""How close a completed similarity is to the one of the complete data (relative error; Recall@10; Recall and
nDCG at the top 20%, the journal version's ranking metrics), and how close any completion of S0 that keeps S0's
eigenvectors could get."""

from __future__ import annotations

import math

import torch

from cpt.smc.baselines import observed_or_zero


def relative_error(S: torch.Tensor, truth: torch.Tensor) -> float:
    """||S - truth||_F / ||truth||_F."""
    return float((S - truth).norm() / truth.norm())


RANKING_BLOCK_ROWS = 1024
TOP_FRACTION = 0.2  # the journal version's "top 20%"


def top_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """k for the top `fraction` of the n - 1 other samples: fraction * (n - 1) rounded half up, at least 1
    (n = 178: 35; n = 569: 114; n = 1797: 359)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the top fraction must be in (0, 1], got {fraction}")
    return max(1, min(n - 1, math.floor(fraction * (n - 1) + 0.5)))


def ranking_scores(S: torch.Tensor, truth: torch.Tensor, k: int) -> tuple[float, float]:
    """(Recall@k, nDCG@k), each the mean over samples (rows). For sample i, with the diagonal excluded (a sample
    is not its own neighbour) and NaN in S ranked last:
    - Recall@k: |top_k(S_i) & top_k(truth_i)| / k, top_k the k most similar others (ties: torch.topk's order).
    - nDCG@k: DCG / ideal DCG, DCG = sum over the estimate's top k, at positions p = 1..k, of rel / log2(p + 1).
      Relevance is graded by true rank: the r-th most similar by the truth (r = 1..k) has rel = (k - r + 1) / k,
      samples outside the true top k have 0. The ideal DCG lists the true top k in order, so nDCG is 1 exactly
      when the estimate's top k is the true top k in the true order. Graded by rank, not by the true similarity:
      cosines can be negative, and the score does not depend on the similarity's scale.
    Computed by blocks of rows (memory: a block times n)."""
    n = S.shape[0]
    k = min(k, n - 1)
    discount = 1 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    gains = torch.arange(k, 0, -1, dtype=torch.float64) / k  # rel of the true r-th, r = 1..k
    ideal = float((gains * discount).sum())
    hits = dcg = 0.0
    for start in range(0, n, RANKING_BLOCK_ROWS):
        rows = torch.arange(start, min(start + RANKING_BLOCK_ROWS, n), device=S.device)
        estimate = torch.nan_to_num(S[rows].double(), nan=-torch.inf)
        reference = truth[rows].double().clone()
        estimate[torch.arange(len(rows)), rows] = -torch.inf
        reference[torch.arange(len(rows)), rows] = -torch.inf
        ranked = estimate.topk(k, dim=1).indices
        true = reference.topk(k, dim=1).indices
        relevance = torch.zeros(len(rows), n, dtype=torch.float64, device=S.device)
        relevance.scatter_(1, true, gains.to(S.device).expand(len(rows), k))
        found = relevance.gather(1, ranked)
        hits += float((found > 0).sum())
        dcg += float((found * discount.to(S.device)).sum())
    return hits / (n * k), dcg / (n * ideal)


def recall_at_k(S: torch.Tensor, truth: torch.Tensor, k: int = 10) -> float:
    """Mean over samples of the share of the true k nearest neighbours (most similar, self excluded) that are
    among the k nearest by S (`ranking_scores`)."""
    return ranking_scores(S, truth, k)[0]


def recall_at_fraction(S: torch.Tensor, truth: torch.Tensor, fraction: float = TOP_FRACTION) -> float:
    """Recall at the top `fraction` of the others: `recall_at_k` with k = `top_count`(n, fraction)."""
    return ranking_scores(S, truth, top_count(S.shape[0], fraction))[0]


def ndcg_at_fraction(S: torch.Tensor, truth: torch.Tensor, fraction: float = TOP_FRACTION) -> float:
    """nDCG at the top `fraction` of the others, k = `top_count`(n, fraction) (`ranking_scores`)."""
    return ranking_scores(S, truth, top_count(S.shape[0], fraction))[1]


def scores(S: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """What the bench and `smc complete --truth` print: relative error, Recall@10, Recall and nDCG at the top 20%."""
    recall_top, ndcg_top = ranking_scores(S, truth, top_count(S.shape[0]))
    return {"error": relative_error(S, truth), "recall10": recall_at_k(S, truth, 10), "recall20pct": recall_top,
            "ndcg20pct": ndcg_top}


def spectral_floor(S0: torch.Tensor, truth: torch.Tensor) -> float:
    """The least relative error of any matrix with S0's eigenvectors (missing entries read as 0): each eigenvalue
    is set to u^T truth u, its Frobenius-optimal value, which needs the truth. Fitting V V^T to a fully observed
    S0 under a unitarily invariant regularizer (SMCNN, SMCNmF) only reweights S0's eigenvectors, so this bounds
    what such a completion can reach on that S0 however its rank and lam are tuned. A diagnostic, O(n^3)."""
    _, U = torch.linalg.eigh(observed_or_zero(S0))
    best = ((U.T @ truth) * U.T).sum(1)  # u_i^T truth u_i, >= 0 for a PSD truth
    return relative_error((U * best) @ U.T, truth)
