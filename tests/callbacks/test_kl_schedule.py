"""The KL schedule: beta per step of each stage, and a run where it is off for the first task."""


import pytest

from cpt.callbacks.kl_schedule import KLSchedule
from tests.helpers import metric_rows


@pytest.mark.slow
def test_kl_schedule_is_applied_per_task(filtered_rft):
    run_dir, _, _ = filtered_rft
    rows = metric_rows(run_dir, "reward/total")
    coefs = [float(r["policy/kl_coef"]) for r in metric_rows(run_dir, "policy/kl_coef")]
    assert coefs == pytest.approx([0.0, 0.0, 0.05, 0.05])
    # No KL is computed while beta is 0; it is once beta is on.
    assert [bool(r.get("policy/kl")) for r in rows] == [False, False, True, True]
    assert KLSchedule("linear", 0.1, final_coef=0.0, steps_per_stage=5).coef_at(0, 4) == 0.0
    assert KLSchedule("linear", 0.1, final_coef=0.0, steps_per_stage=5).coef_at(3, 2) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="must be >= 0"):
        KLSchedule("per_task", per_task=[0.1, -0.1])
