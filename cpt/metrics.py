"""Continual-learning metrics over an accuracy matrix.

P has T+1 rows and T columns: row 0 is the base model, row t the model after training task t, column j task j
(all percent). Tasks are numbered from 1 in the formulas below and from 0 in the code.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _check(P: Matrix) -> int:
    T = len(P[0])
    if len(P) < 2:
        raise ValueError("need the base row and at least one row after a task")
    if any(len(row) != T for row in P):
        raise ValueError("every row of the accuracy matrix needs one entry per task")
    return T


def avg_acc(P: Matrix, after: int | None = None) -> float:
    """Mean accuracy over the tasks learned so far, after task `after` (default: the last row)."""
    t = len(P) - 1 if after is None else after
    return sum(P[t][:t]) / t


def forgetting(P: Matrix, after: int | None = None) -> float:
    """FM = mean over j < t of (P[t][j] - max_{j <= s < t} P[s][j]): 0 means nothing forgotten, negative is worse."""
    _check(P)
    t = len(P) - 1 if after is None else after
    if t < 2:
        return 0.0
    drops = [P[t][j - 1] - max(P[s][j - 1] for s in range(j, t)) for j in range(1, t)]
    return sum(drops) / len(drops)


def backward_transfer(P: Matrix, after: int | None = None) -> float:
    """BWT = mean over j < t of (P[t][j] - P[j][j]): how training later tasks changed earlier ones."""
    _check(P)
    t = len(P) - 1 if after is None else after
    if t < 2:
        return 0.0
    return sum(P[t][j - 1] - P[j][j - 1] for j in range(1, t)) / (t - 1)
