"""Similarity matrix completion: a PSD similarity matrix from data with missing values, without an SVD in the loop.

`observed_cosine` builds the observed estimate S0 (cosine on co-observed features); `complete` fits S = V V^T to it
with SMCNN (nuclear-norm regularizer) or SMCNmF (nuclear minus Frobenius); `baselines` and `metrics` are what the
bench compares them with and by.
"""

from cpt.smc.similarity import cosine, observed_cosine
from cpt.smc.solvers import Completion, complete

__all__ = ["Completion", "complete", "cosine", "observed_cosine"]
