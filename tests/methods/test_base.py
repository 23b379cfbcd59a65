"""The shared base module: the learning-rate schedule restarts with every task."""

import math

import pytest

from cpt.methods.base import per_task_schedule


def test_schedule_warms_up_and_decays_within_every_task():
    f = per_task_schedule(steps_per_task=10, warmup_ratio=0.2, min_lr_ratio=0.1)
    # warmup = 2 steps: 1/2, 2/2; then cosine from 1 to 0.1 over the remaining 8 steps.
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert [f(10 + s) for s in range(10)] == [f(s) for s in range(10)]  # the next task starts over
