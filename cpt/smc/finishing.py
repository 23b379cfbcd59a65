"""The one finishing step a completed similarity gets before it is used or scored, whichever method produced it.

A cosine similarity has a unit diagonal; most completions do not (SMCNN's and SMCNmF's shrinkage lowers it, DMC
moves it, a calibration sets it to c). `unit-diagonal` rescales S to D^-1/2 S D^-1/2 (D = diag(S)), which keeps a
PSD matrix PSD (it can reorder a sample's neighbours: S_ij is divided by sqrt(S_jj) too); `none` leaves S as the
method returned it. `complete` (on its factor), `python -m cpt smc complete --truth` and `python -m cpt smc bench`
all finish through `diagonal_scale`, so that two methods are compared on the same post-processing.
"""

from __future__ import annotations

import torch

FINISHES = ("unit-diagonal", "none")


def check_finish(how: str) -> str:
    if how not in FINISHES:
        raise ValueError(f"unknown finishing step {how!r}; choose one of {', '.join(FINISHES)}")
    return how


def diagonal_scale(diagonal: torch.Tensor, how: str) -> torch.Tensor | None:
    """The per-sample factor of the finishing step (S_ij times scale_i scale_j), None for `none`. A diagonal entry
    that is not positive (a zero row of a PSD matrix, or a method that does not keep S PSD) is left unscaled."""
    if check_finish(how) == "none":
        return None
    positive = diagonal > 0
    return torch.where(positive, diagonal.where(positive, torch.ones_like(diagonal)).rsqrt(),
                       torch.ones_like(diagonal))


def finish(S: torch.Tensor, how: str = "unit-diagonal") -> torch.Tensor:
    """S after the finishing step `how` (a new tensor for `unit-diagonal`, S itself for `none`)."""
    scale = diagonal_scale(S.diagonal(), how)
    return S if scale is None else S * scale[:, None] * scale[None, :]
