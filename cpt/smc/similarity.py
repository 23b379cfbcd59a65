"""Cosine similarity of samples (rows) from complete data, and the observed estimate S0 from data with NaNs.

S0[i, j] is the cosine of rows i and j over the features both observe. It is computed by row blocks from three
matrix products, on and above the diagonal only (the rest mirrored, so S0 is exactly symmetric), so memory is S0
itself plus one block. A pair with no co-observed feature (or zero norm on those features) has no estimate: NaN,
which `complete` treats as a missing entry.
"""

from __future__ import annotations

import torch

BLOCK_ROWS = 2048


class SimilarityInputError(ValueError):
    """Input a similarity cannot be built from or completed; the message says what and where."""


def check_data(X: torch.Tensor) -> None:
    if X.dim() != 2:
        raise SimilarityInputError(f"the data must be a matrix (samples x features), got {X.dim()} dimensions")
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise SimilarityInputError(f"the data needs at least 2 samples and 1 feature, got shape {tuple(X.shape)}")
    observed = ~torch.isnan(X)
    if not observed.any():
        raise SimilarityInputError("every value of the data is missing (NaN)")
    if torch.isinf(X).any():
        raise SimilarityInputError("the data holds infinite values; only NaN marks a missing value")
    empty = (~observed.any(1)).nonzero().flatten()
    if len(empty):
        raise SimilarityInputError(f"{len(empty)} sample(s) have no observed value, e.g. row {int(empty[0])}; "
                                   "drop them: nothing can be said about their similarity")


def cosine(X: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of complete data."""
    unit = X / X.norm(dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
    return unit @ unit.T


def observed_cosine(X: torch.Tensor, block_rows: int = BLOCK_ROWS) -> torch.Tensor:
    """S0: cosine of each pair of rows over their co-observed features; NaN where there is none. Diagonal 1."""
    check_data(X)
    observed = (~torch.isnan(X)).to(X.dtype)
    values = torch.nan_to_num(X, nan=0.0)
    squares = values * values
    n = X.shape[0]
    S = torch.empty(n, n, dtype=X.dtype, device=X.device)
    # Only the blocks on and above the diagonal are computed; the ones below are their transposes, so S is exactly
    # symmetric whatever order the matrix products summed in (and half of them are saved).
    for start in range(0, n, block_rows):
        end = min(start + block_rows, n)
        rows, later = slice(start, end), slice(start, n)
        dot = values[rows] @ values[later].T
        # |x_i|^2 over the features j also observes, and |x_j|^2 over those i observes
        norm_i = squares[rows] @ observed[later].T
        norm_j = observed[rows] @ squares[later].T
        denominator = (norm_i * norm_j).sqrt_()
        block = torch.where(denominator > 0, dot / denominator.clamp_min(torch.finfo(X.dtype).tiny),
                            torch.full_like(dot, float("nan")))
        own = block[:, :end - start]
        block[:, :end - start] = own.triu() + own.triu(1).T  # the diagonal block: its upper triangle, mirrored
        S[rows, later] = block
        S[later, rows] = block.T
    S.fill_diagonal_(1.0)
    return S
