import pytest

from cpt.eval.metrics import avg_acc, backward_transfer, forgetting

# Rows: base, after task 1, after task 2, after task 3. Columns: tasks 1..3.
P = [
    [10.0, 20.0, 30.0],
    [80.0, 25.0, 30.0],
    [60.0, 90.0, 35.0],
    [50.0, 70.0, 95.0],
]


def test_avg_acc_is_mean_of_last_row():
    assert avg_acc(P) == pytest.approx((50 + 70 + 95) / 3)
    # After task 2 only tasks 1 and 2 count.
    assert avg_acc(P, after=2) == pytest.approx((60 + 90) / 2)


def test_forgetting_against_best_earlier_accuracy():
    # Task 1: best after learning it = max(80, 60) = 80, final 50 -> -30.
    # Task 2: best = 90, final 70 -> -20.  FM = -25.
    assert forgetting(P) == pytest.approx(-25.0)
    assert forgetting(P, after=2) == pytest.approx(60 - 80)
    assert forgetting(P, after=1) == 0.0


def test_backward_transfer_against_just_learned_accuracy():
    # Task 1: 50 - 80 = -30; task 2: 70 - 90 = -20.
    assert backward_transfer(P) == pytest.approx(-25.0)


def test_forgetting_differs_from_bwt_when_a_task_improves_later():
    Q = [[0, 0], [40, 0], [70, 90]]  # task 1 improved after task 2: positive BWT, no forgetting
    assert backward_transfer(Q) == pytest.approx(30.0)
    assert forgetting(Q) == pytest.approx(30.0)  # 70 - max(40) over rows 1..1
    R = [[0, 0, 0], [40, 0, 0], [70, 90, 0], [50, 90, 60]]
    assert forgetting(R) == pytest.approx(((50 - 70) + (90 - 90)) / 2)
    assert backward_transfer(R) == pytest.approx(((50 - 40) + (90 - 90)) / 2)


def test_ragged_matrix_is_rejected():
    with pytest.raises(ValueError, match="one entry per task"):
        forgetting([[1, 2], [1]])
    assert avg_acc([[0.0], [100.0]]) == 100.0
    assert avg_acc(P, after=0) == pytest.approx(20.0)  # the base row: its mean over all tasks
    assert forgetting(P[:1]) == 0.0 and backward_transfer(P[:1]) == 0.0
