"""What SMCNN and SMCNmF are compared with: S0 itself, its projection onto the PSD cone (DMC), the authors' earlier
calibrations (one-step SMC, SVC), and imputing the data first (column mean, k nearest neighbours, singular value
thresholding) then taking the cosine.

One-step SMC and SVC are re-implemented from the authors' description and public MATLAB code (Yu et al., UAI 2023;
Ma, Yu, Zhang, WWW 2024; no code copied): DMC on an offline block, then a similarity vector mapped through the
factor of the matrix calibrated so far and shrunk until its norm fits the self-similarity (`calibrate_columns`).
One-step SMC does this sample by sample, each against every sample before it; SVC does it for all online samples
at once against the offline block. `one_step_smc_block` is a faster block form of one-step SMC that is not the
authors' procedure (kept for comparison, under its own name).
"""

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


def split(n: int, offline: int | torch.Tensor | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offline indices, online indices). offline: a count m (the first m samples), the indices themselves, or
    None: a random half (floor(n / 2) samples drawn with `seed`; the bench uses this, as datasets such as wine are
    sorted by class and their first half is not a sample of the whole)."""
    if offline is None:
        offline = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n // 2].sort().values
    elif isinstance(offline, int):
        if not 1 <= offline < n:
            raise ValueError(f"the offline block needs between 1 and {n - 1} of the {n} samples, got {offline}")
        offline = torch.arange(offline)
    offline = torch.as_tensor(offline, dtype=torch.long)
    rest = torch.ones(n, dtype=torch.bool)
    rest[offline] = False
    if len(offline) == 0 or not rest.any() or len(offline.unique()) != len(offline):
        raise ValueError("the offline samples must be distinct and leave at least one online sample")
    return offline, rest.nonzero().flatten()


def psd_factor(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, s) with DMC(S) = U diag(s) U^T, s >= 0: S's nearest PSD matrix and its eigen/singular values (equal for
    a PSD matrix), from a fresh eigendecomposition. The factor is C = U diag(sqrt s)."""
    w, U = torch.linalg.eigh(observed_or_zero(S))
    return U, w.clamp_min(0)


def calibrate_columns(U: torch.Tensor, s: torch.Tensor, V0: torch.Tensor, c: float = 1.0, iterations: int = 50,
                      tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrate similarity vectors (the columns of V0, m x p) against a PSD matrix S = U diag(s) U^T
    = C C^T, C = U diag(sqrt s). Returns (Y, lam): the calibrated coordinates (m x p, one column per vector) and the
    shrinkage of each; the calibrated vectors are C Y.

    y0 = C^+ v0 (the pseudo-inverse: coordinates of singular values at most m * eps * max(s) are 0). If
    ||y0||^2 <= c, y = y0; else y = s / (s + lam) * y0 (elementwise) with lam > 0 found by bisection so that
    ||y||^2 = c: this y is the least-squares fit min ||C y - v0|| subject to ||y||^2 <= c (its Lagrange
    condition). The bisection halves [0, max(s) ||y0|| / sqrt c] (||y||^2 <= c at its upper end) at most
    `iterations` times, stopping when ||y||^2 is within tol * c of c; it returns the upper end, so ||y||^2 <= c
    always. c is the self-similarity: 1 for a cosine.

    Guaranteed: with C's range holding C y, the bordered matrix [[S, C y], [(C y)^T, c]] is PSD for each column
    (its Schur complement c - y^T P y >= c - ||y||^2 >= 0, P the projection onto C's row space)."""
    if c <= 0:
        raise ValueError(f"the self-similarity c must be > 0, got {c}")
    keep = s > s.shape[0] * torch.finfo(s.dtype).eps * s.max().clamp_min(torch.finfo(s.dtype).tiny)
    root = s.sqrt()
    inverse_root = torch.where(keep, 1 / root.where(keep, torch.ones_like(root)), torch.zeros_like(root))
    Y0 = inverse_root[:, None] * (U.T @ observed_or_zero(V0))
    norms = (Y0 * Y0).sum(0)
    low = torch.zeros_like(norms)
    high = torch.where(norms > c, s.max() * norms.sqrt() / c ** 0.5, torch.zeros_like(norms))
    shrink = norms > c
    for _ in range(iterations if bool(shrink.any()) else 0):
        middle = (low + high) / 2
        fitted = ((s[:, None] / (s[:, None] + middle) * Y0) ** 2).sum(0)
        low = torch.where(shrink & (fitted > c), middle, low)
        high = torch.where(shrink & (fitted <= c), middle, high)
        at_high = ((s[:, None] / (s[:, None] + high) * Y0) ** 2).sum(0)
        if bool(((c - at_high)[shrink] <= tol * c).all()):
            break
    lam = torch.where(shrink, high, torch.zeros_like(high))
    Y = torch.where(shrink, s[:, None] / (s[:, None] + lam) * Y0, Y0)
    return Y, lam


def calibrated_blocks(S0: torch.Tensor, offline: int | torch.Tensor | None, c: float | None, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What SVC and the block form of one-step SMC share: (S, online indices, Y) with S's offline block
    DMC(S0's) = C C^T and its offline-online blocks the calibrated vectors C Y, every online sample calibrated
    against the offline block alone with one c (None: the calibrated offline block's last diagonal entry, as the
    authors' SVC code takes it); the online-online block is left for the caller to fill."""
    n = S0.shape[0]
    off, on = split(n, offline, seed)
    U, s = psd_factor(S0[off][:, off])
    C = U * s.sqrt()
    calibrated = (C * s.sqrt()) @ U.T
    if c is None:
        c = float(calibrated[-1, -1])
    Y, _ = calibrate_columns(U, s, S0[off][:, on], c)
    S = torch.empty(n, n, dtype=S0.dtype, device=S0.device)
    S[off[:, None], off] = calibrated
    S[off[:, None], on] = C @ Y
    S[on[:, None], off] = (C @ Y).T
    return S, on, Y


def self_similarity(S0: torch.Tensor, i: int, c: float | None) -> float:
    """c for sample i: the given value, else S0[i, i] (1 for a cosine), which must be observed and positive."""
    if c is None:
        c = float(S0[i, i])
        if not c > 0:  # NaN fails this too
            raise ValueError(f"sample {i}'s self-similarity S0[{i}, {i}] is {c}; calibration needs it positive "
                             "(give c explicitly)")
    return c


def one_step_smc(S0: torch.Tensor, offline: int | torch.Tensor | None = None, c: float | None = None,
                 seed: int = 0) -> torch.Tensor:
    """One-step SMC as its authors run it (Yu et al., UAI 2023; their `correct_onmc_s.m`): DMC on the offline
    block, then the online samples one at a time, in index order. Each sample's raw similarities to every sample
    before it (offline and earlier online) are calibrated against a fresh factor of the matrix calibrated so far
    (`calibrate_columns`), and the matrix grows by that row and column, with the sample's own self-similarity c on
    the diagonal (None: S0[i, i], 1 for a cosine). Missing entries of S0 (NaN) are read as 0.

    Guaranteed: every grown matrix is PSD, so the whole n x n result is (each step borders a PSD matrix with
    C y and c >= ||y||^2: its Schur complement is c - y^T P y >= 0). Not guaranteed: a unit diagonal on the
    offline block (DMC moves it). Cost: an eigendecomposition of the grown matrix per online sample, O(n^4)
    in all for a half split, where the block form pays one of the offline block."""
    n = S0.shape[0]
    off, on = split(n, offline, seed)
    order = torch.cat([off, on])
    raw = observed_or_zero(S0)[order][:, order]
    m = len(off)
    grown = torch.zeros(n, n, dtype=S0.dtype, device=S0.device)
    grown[:m, :m] = dmc(raw[:m, :m])
    for k in range(m, n):
        c_k = self_similarity(S0, int(order[k]), c)
        U, s = psd_factor(grown[:k, :k])
        y, _ = calibrate_columns(U, s, raw[:k, k:k + 1], c_k)
        v = (U * s.sqrt()) @ y[:, 0]
        grown[:k, k] = v
        grown[k, :k] = v
        grown[k, k] = c_k
    S = torch.empty_like(grown)
    S[order[:, None], order] = grown
    return S


def one_step_smc_block(S0: torch.Tensor, offline: int | torch.Tensor | None = None, c: float = 1.0,
                       seed: int = 0) -> torch.Tensor:
    """A block form of one-step SMC, faster and not the authors' procedure: every online sample calibrated against
    the offline block only (one factorization), and the online-online block taken as the calibrated coordinates'
    inner products y_i^T y_j with c on the diagonal; S0's online-online entries are not used. Missing entries of S0
    (NaN) are read as 0.

    Guaranteed: the whole n x n result is PSD. It is W W^T with W = [C; Y^T] (rank <= m) plus the diagonal
    c - ||y_j||^2 >= 0 on the online samples."""
    S, on, Y = calibrated_blocks(S0, offline, c, seed)
    online = Y.T @ Y
    online.diagonal().fill_(c)
    S[on[:, None], on] = online
    return S


def svc(S0: torch.Tensor, offline: int | torch.Tensor | None = None, c: float | None = None,
        seed: int = 0) -> torch.Tensor:
    """SVC (Ma, Yu, Zhang, WWW 2024, as its authors' `calibrate_svc.m` runs it): DMC on both diagonal blocks
    (offline and online samples), and every column of the off-diagonal block (an online sample's similarities to
    the offline ones) calibrated in parallel against the offline block's factor with the same shrinkage as one-step
    SMC (`calibrate_columns`), with one c for all: the calibrated offline block's last diagonal entry (None), or the
    value given. Missing entries of S0 (NaN) are read as 0.

    Guaranteed: both diagonal blocks are PSD, and so is the offline block bordered by any one calibrated column
    (||y||^2 <= c); when the online block's diagonal stays at c or above, each offline-plus-one-online principal
    submatrix is then PSD as well. Not guaranteed: the whole n x n matrix is PSD (the online block's DMC does not
    see the calibrated columns; the bench reports its smallest eigenvalue)."""
    S, on, _ = calibrated_blocks(S0, offline, c, seed)
    S[on[:, None], on] = dmc(S0[on][:, on])
    return S


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
