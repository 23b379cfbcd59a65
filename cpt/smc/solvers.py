"""SMCNN and SMCNmF: a positive semi-definite, low-rank similarity matrix S = V V^T fitted to an estimate S0.

    SMCNN:   min_V  ||P(V V^T - S0)||_F^2 + lam * ||V||_F^2
    SMCNmF:  min_V  ||P(V V^T - S0)||_F^2 + lam * (||V||_F^2 - alpha * ||V V^T||_F)

and S = V V^T, or with `plus_diagonal`, S = V V^T + Psi: Psi diagonal, Psi_i = max(S0_ii - ||v_i||^2, 0), the part
of each sample's self-similarity that the shrunk low-rank part leaves out (a cosine's diagonal is exact, so S0's
diagonal is not noise). Without Psi the unit-diagonal finishing step divides the shrunk off-diagonal entries by
the shrunk diagonal and so undoes the shrinkage; with it, the diagonal is already S0's and the shrinkage stays.

P keeps the observed entries of S0 (all of them when S0 has no NaN). S = V V^T is PSD by construction, and
||V||_F^2 = tr(S) is S's nuclear norm, so the first regularizer is the nuclear norm without an SVD. The second
subtracts the Frobenius norm (||V V^T||_F = ||V^T V||_F, a k x k product): nuclear minus Frobenius is a tighter,
nonconvex surrogate of the rank that shrinks the large eigenvalues less. For a fully observed S0 the SMCNN optimum
is S0's eigenvalues shrunk by lam / 2 and clipped at 0, so lam / 2 is a noise threshold: by default it is the
magnitude of S0's most negative eigenvalue, which a PSD truth plus noise owes to the noise alone (a Lanczos
estimate of one eigenvalue, before the iterations).

Every iteration costs matrix products only, O(n^2 k): without a mask the loss and gradient come from S0 V and
k x k products (n^2 k); with one, from the n x n residual on the observed entries. V starts from a Nystrom
sketch of S0 and L-BFGS (torch.optim.LBFGS, strong Wolfe line search) minimises the objective until its relative
change falls below `tol`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from cpt.smc.finishing import check_finish, diagonal_scale
from cpt.smc.similarity import SimilarityInputError

METHODS = ("smcnn", "smcnmf")
DEFAULT_MAX_RANK = 128
SPARSE_MISSING = 0.02  # share of missing entries up to which the unmasked path with a sparse correction is used


@dataclass
class Completion:
    S: torch.Tensor  # the completed similarity, n x n, symmetric PSD
    V: torch.Tensor  # its low-rank factor: S = V V^T, plus diag(diagonal) with plus_diagonal
    lam: float
    rank: int  # columns of V
    effective_rank: int  # eigenvalues of V^T V above 1e-6 of the largest
    iterations: int
    converged: bool
    seconds: float
    objective: list[float] = field(default_factory=list)  # per evaluation, relative to ||P(S0)||_F^2
    diagonal: torch.Tensor | None = None  # Psi with plus_diagonal (S = V V^T + diag(Psi)), else None


def check_similarity(S0: torch.Tensor, block_rows: int = 2048) -> torch.Tensor:
    """The mask of observed entries; SimilarityInputError for what cannot be completed. The symmetry checks go by
    blocks of rows, so they hold no n x n temporary beyond the mask."""
    if S0.dim() != 2 or S0.shape[0] != S0.shape[1]:
        raise SimilarityInputError(f"a similarity matrix is square, got shape {tuple(S0.shape)}")
    if S0.shape[0] < 2:
        raise SimilarityInputError("a similarity matrix needs at least 2 samples")
    if not S0.is_floating_point():
        raise SimilarityInputError(f"a similarity matrix holds floating-point values, got {S0.dtype}")
    observed = ~torch.isnan(S0)
    if not observed.any():
        raise SimilarityInputError("every entry of the similarity matrix is missing (NaN)")
    n = S0.shape[0]
    for start in range(0, n, block_rows):
        rows = slice(start, min(start + block_rows, n))
        if torch.isinf(S0[rows]).any():
            raise SimilarityInputError("the similarity matrix holds infinite values; only NaN marks a missing entry")
        if not torch.equal(observed[rows], observed[:, rows].T):
            raise SimilarityInputError("the pattern of missing entries is not symmetric: S[i, j] and S[j, i] must be "
                                       "both observed or both missing")
        if not torch.allclose(S0[rows].nan_to_num(), S0[:, rows].T.nan_to_num(), atol=1e-5, rtol=1e-4):
            raise SimilarityInputError("the similarity matrix is not symmetric (S[i, j] != S[j, i])")
    empty = (~observed.any(1)).nonzero().flatten()
    if len(empty):
        raise SimilarityInputError(f"{len(empty)} row(s) have no observed entry, e.g. row {int(empty[0])}: "
                                   "nothing ties that sample to the others")
    return observed


def most_negative_eigenvalue(S: torch.Tensor, seed: int = 0) -> float:
    """The smallest eigenvalue of a symmetric matrix, by Lanczos iterations (matrix-vector products only)."""
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    n = S.shape[0]
    operator = LinearOperator((n, n), dtype=np.float64,
                              matvec=lambda x: (S @ torch.as_tensor(x, dtype=S.dtype, device=S.device)
                                                .reshape(n, -1)).double().cpu().numpy())
    start = np.random.default_rng(seed).standard_normal(n)
    try:
        value = eigsh(operator, k=1, which="SA", tol=1e-3, v0=start, maxiter=max(300, n // 10),
                      return_eigenvectors=False)[0]
    except ArpackNoConvergence as partial:
        value = partial.eigenvalues[0] if len(partial.eigenvalues) else 0.0
    return float(value)


def nystrom_factor(S0: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """V with V V^T = Y C^+ Y^T, Y = S0 G, C = G^T Y (G Gaussian, n x rank): a one-pass sketch of S0's leading
    PSD part. The k x k C is decomposed, not S0."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    G = torch.randn(S0.shape[0], rank, generator=generator, dtype=S0.dtype).to(S0.device)
    Y = S0 @ G
    C = G.T @ Y
    w, U = torch.linalg.eigh((C + C.T) / 2)
    keep = w > w.abs().max() * 1e-8
    return (Y @ U[:, keep]) / w[keep].sqrt()


def complete(S0: torch.Tensor, method: str = "smcnn", rank: int | None = None, lam: float | None = None,
             alpha: float = 1.0, finish: str = "unit-diagonal", plus_diagonal: bool = False, max_iter: int = 500,
             tol: float = 1e-7, seed: int = 0) -> Completion:
    """The completed similarity of S0 (NaN = missing entry). rank = columns of V (default min(n, 128); the
    regularizer leaves unused ones near zero); lam = regularizer weight (default twice the magnitude of S0's
    most negative eigenvalue); alpha = SMCNmF's Frobenius weight, in (0, 1]. finish = the finishing step every
    method gets (`cpt.smc.finishing`): "unit-diagonal" rescales the result to S_ij / sqrt(S_ii S_jj), as a cosine
    similarity is (still PSD); "none" leaves the result's diagonal as it is. plus_diagonal: S = V V^T + Psi,
    Psi_i = max(S0_ii - ||v_i||^2, 0) (S0_ii missing: 0), before the finishing step (lower error, neighbours ranked
    by v_i . v_j rather than by the angle; see docs/smc.md); by default S = V V^T. S0's dtype is kept throughout
    (float32 in: V, S and every n x n temporary are float32). When few entries are missing (the sparse path),
    they are set to 0 in S0 itself during the fit and put back as NaN after it, to avoid an n x n copy: S0 must
    not be read by another thread meanwhile."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1] (the regularizer stays >= 0), got {alpha}")
    check_finish(finish)
    observed = check_similarity(S0)
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be a positive number of columns, got {rank}")
    started = time.perf_counter()
    n = S0.shape[0]
    missing = (~observed).nonzero(as_tuple=True)
    # Few missing entries: the full residual's loss and gradient, less those entries' terms (a sparse correction).
    # Many: the residual on the observed entries, an n x n product per evaluation.
    dense_mask = len(missing[0]) > SPARSE_MISSING * n * n
    weight = observed.to(S0.dtype) if dense_mask else None
    # The fit reads S0 with its missing entries as 0. With none missing that is S0 itself; with few, S0's NaNs are
    # set to 0 in place for the fit and put back after it: no n x n copy either way (float32 in, float32 throughout).
    in_place = bool(len(missing[0])) and not dense_mask and S0.is_contiguous() and not S0.requires_grad
    if in_place:
        S0[missing] = 0
        target = S0
    elif len(missing[0]):
        target = torch.where(observed, S0, torch.zeros((), dtype=S0.dtype, device=S0.device))
    else:
        target = S0
    del observed
    try:
        return fit(target, weight, missing, dense_mask, method, min(n, rank or DEFAULT_MAX_RANK), lam, alpha,
                   finish, plus_diagonal, max_iter, tol, seed, started)
    finally:
        if in_place:
            S0[missing] = float("nan")


def fit(target: torch.Tensor, weight: torch.Tensor | None, missing: tuple[torch.Tensor, torch.Tensor],
        dense_mask: bool, method: str, rank: int, lam: float | None, alpha: float, finish: str,
        plus_diagonal: bool, max_iter: int, tol: float, seed: int, started: float) -> Completion:
    """`complete`'s iterations on target (S0, missing entries 0), after its checks."""
    n = target.shape[0]
    if lam is None:
        lam = 2 * max(-most_negative_eigenvalue(target, seed), 0.0)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    # the objective is reported relative to ||P(S0)||^2, accumulated in float64 by blocks of rows (no n x n copy)
    scale = sum(float(target[start:start + 256].square().sum(dtype=torch.float64)) for start in range(0, n, 256))
    if scale == 0:
        raise SimilarityInputError("every observed entry of the similarity matrix is 0: there is nothing to complete")

    V = nystrom_factor(target, rank, seed)
    if V.shape[1] < rank:  # a sketch of lower rank: pad with small random columns so every column can grow
        generator = torch.Generator(device="cpu").manual_seed(seed + 1)
        pad = 1e-3 * torch.randn(n, rank - V.shape[1], generator=generator, dtype=target.dtype).to(target.device)
        V = torch.cat([V, pad], 1)
    V = V.clone().requires_grad_(True)
    history: list[float] = []

    def closure() -> torch.Tensor:
        with torch.no_grad():
            gram = V.T @ V
            if dense_mask:
                residual = weight * (V @ V.T - target)
                loss = (residual * residual).sum()
                grad = 4 * (residual @ V)
            else:  # ||V V^T - S0||^2 = ||V^T V||^2 - 2 tr(V^T S0 V) + ||S0||^2, no n x n residual
                product = target @ V  # the three terms summed in float64: they nearly cancel at the optimum
                loss = gram.double().square().sum() - 2 * (V.double() * product.double()).sum() + scale
                grad = 4 * (V @ gram - product)
                if len(missing[0]):  # the missing entries (target 0 there) leave the fit: - sum (v_i . v_j)^2
                    rows, cols = missing
                    dots = (V[rows] * V[cols]).sum(1)
                    loss = loss - (dots * dots).sum()
                    grad = grad.index_add(0, rows, dots[:, None] * V[cols], alpha=-4)
            loss = loss + lam * (V * V).sum()
            grad = grad + 2 * lam * V
            if method == "smcnmf":
                frobenius = gram.norm()
                if frobenius > 0:
                    loss = loss - lam * alpha * frobenius
                    grad = grad - 2 * lam * alpha * (V @ gram) / frobenius
            V.grad = grad / scale
            history.append(float(loss) / scale)
            return loss / scale

    optimizer = torch.optim.LBFGS([V], lr=1, max_iter=max_iter, max_eval=max_iter * 2, tolerance_grad=1e-10,
                                  tolerance_change=tol, history_size=20, line_search_fn="strong_wolfe")
    optimizer.step(closure)
    iterations = optimizer.state[V]["n_iter"]
    converged = iterations < max_iter and optimizer.state[V]["func_evals"] < max_iter * 2
    V = V.detach()
    norms = (V * V).sum(1)
    psi = (target.diagonal() - norms).clamp_min(0) if plus_diagonal else None  # a missing S0_ii is 0 in target
    scale = diagonal_scale(norms if psi is None else norms + psi, finish)  # the finishing step, on V (and Psi)
    if scale is not None:
        V = V * scale[:, None]
        psi = None if psi is None else psi * scale * scale
    S = V @ V.T
    if psi is not None:
        S.diagonal().add_(psi)
    spectrum = torch.linalg.eigvalsh(V.T @ V)  # k x k, after the iterations: only to report the rank reached
    effective = int((spectrum > spectrum.max() * 1e-6).sum()) if spectrum.max() > 0 else 0
    return Completion(S, V, lam, rank, effective, iterations, converged, time.perf_counter() - started,
                      history, psi)
