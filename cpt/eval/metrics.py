"""Continual-learning metrics over an accuracy matrix.

P has T+1 rows and T columns: row 0 is the base model, row t the model after training task t, column j task j
(all percent). Tasks are numbered from 1 in the formulas below and from 0 in the code.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _check(P: Matrix) -> None:
    if not P or not P[0]:
        raise ValueError("the accuracy matrix needs at least the base row, with one entry per task")
    if any(len(row) != len(P[0]) for row in P):
        raise ValueError("every row of the accuracy matrix needs one entry per task")


def avg_acc(P: Matrix, after: int | None = None, learned: int | None = None) -> float:
    """Mean accuracy over the tasks learned so far in row `after` (default: the last row): the first `learned`
    tasks (default `after`, one task per row; a multitask row has learned them all). For row 0, the base model,
    there are none yet: its mean over all tasks."""
    _check(P)
    t = len(P) - 1 if after is None else after
    n = t if learned is None else learned
    return sum(P[t][:n]) / n if t and n else sum(P[0]) / len(P[0])


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


def learning_gain(P: Matrix, after: int | None = None) -> float:
    """Plasticity: mean over t of (P[t][t] - P[t-1][t]), what training task t added to it over the row before."""
    _check(P)
    t = len(P) - 1 if after is None else after
    if t < 1:
        return 0.0
    return sum(P[s][s - 1] - P[s - 1][s - 1] for s in range(1, t + 1)) / t


# Plasticity three ways, and where each task stood when its turn came. learning_gain is `diagonal` less
# `before_turn`: a method that first destroys a task and then relearns it gains much over the row before but
# ends no higher on the diagonal, and gains no more over the base.

def before_turn(P: Matrix) -> list[float]:
    """Per task t, its accuracy just before its turn: P[t-1][t] (the row before it is trained)."""
    _check(P)
    return [P[s - 1][s - 1] for s in range(1, len(P))]


def diagonal(P: Matrix) -> float:
    """Mean over t of P[t][t]: each task's accuracy just after it was trained."""
    _check(P)
    t = len(P) - 1
    return sum(P[s][s - 1] for s in range(1, t + 1)) / t if t else 0.0


def gain_over_base(P: Matrix) -> float:
    """Mean over t of P[t][t] - P[0][t]: what each task gained over the base model by its turn's end."""
    _check(P)
    t = len(P) - 1
    return sum(P[s][s - 1] - P[0][s - 1] for s in range(1, t + 1)) / t if t else 0.0


def task_forgetting(P: Matrix) -> list[float | None]:
    """Per task j, what FM averages: P[T][j] - max_{j <= t < T} P[t][j] (None for the last task, never followed)."""
    _check(P)
    T = len(P) - 1
    return [P[T][j] - max(P[t][j] for t in range(j + 1, T)) if j + 1 < T else None for j in range(len(P[0]))]
