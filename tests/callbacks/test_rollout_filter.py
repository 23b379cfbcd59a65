"""Offline instance filtering: the drop rules, and a run whose filter decisions are known in advance (the
instance-only reward of conftest.py)."""

import csv
import json

import pytest
import torch

from cpt.callbacks.rollout_filter import drop_reason
from cpt.data.tasks import build_tasks
from tests.helpers import metric_rows


@pytest.mark.parametrize("rule, rewards, right, expected", [
    ("all_wrong", [0.1, 0.1], [0, 0], "all_wrong"),
    ("all_wrong", [0.1, 1.0], [0, 1], None),
    ("all_equal", [1.0, 1.0], [1, 1], "all_right"),
    ("all_equal", [0.0, 0.0], [0, 0], "all_wrong"),
    ("all_equal", [0.5, 0.5], [1, 0], "all_equal"),
    ("all_equal", [0.0, 1.0], [0, 1], None),
    ("range", [0.0, 0.1], [0, 0], "below_low"),
    ("range", [1.0, 1.0], [1, 1], "above_high"),
    ("range", [0.0, 1.0], [0, 1], None),
])
def test_drop_reason(rule, rewards, right, expected):
    assert drop_reason(torch.tensor(rewards), torch.tensor(right, dtype=torch.bool), rule, 0.2, 0.9) == expected


@pytest.mark.slow
def test_offline_filter_keeps_exactly_the_learnable_instances(filtered_rft):
    run_dir, cfg, summary = filtered_rft
    tasks = build_tasks(cfg)
    record = json.loads((run_dir / "filtering.json").read_text())
    assert record["rule"] == "all_wrong" and [s["task"] for s in record["stages"]] == ["count", "colour"]
    for stage, task, right_answer in zip(record["stages"], tasks, ("3", "red")):
        rows = list(csv.DictReader(open(run_dir / "filtering" / f"{stage['stage']}-{task.name}.csv")))
        assert len(rows) == stage["pool"] == 24
        expected = {int(r["instance"]) for r in rows if task.train[int(r["instance"])].answer == right_answer}
        kept = {int(r["instance"]) for r in rows if r["kept"] == "1"}
        assert kept == expected and stage["kept"] == len(expected) > 0
        assert stage["dropped"] == {"all_wrong": 24 - len(expected)}
    assert summary["kept_fraction"] == pytest.approx(sum(s["kept"] for s in record["stages"]) / 48)
    assert json.loads((run_dir / "results.json").read_text())["kept_fraction"] == summary["kept_fraction"]


@pytest.mark.slow
def test_training_draws_only_kept_instances_and_online_filter_hits_its_cap(filtered_rft):
    run_dir, _, _ = filtered_rft
    # Kept instances are always right: every sampled reward is 1, every group all equal.
    rows = metric_rows(run_dir, "reward/total")
    assert len(rows) == 4 and all(float(r["reward/accuracy"]) == 1.0 for r in rows)
    # So the online filter drops every group, refills once (its cap), and fills the batch with dropped groups.
    assert all(float(r["filter/dropped_groups"]) == 1.0 for r in rows)
    assert all(float(r["filter/refill_rounds"]) == 1.0 for r in rows)
    assert all(float(r["filter/unfilled_groups"]) == 2.0 for r in rows)
    online = json.loads((run_dir / "filtering_online.json").read_text())
    assert [s["refill_rounds"] for s in online["stages"]] == [2, 2] and online["stages"][0]["unfilled"] == 4
