"""The summary of an alternating benchmark, from given timings: per-round medians, ratios, their median and range."""

from __future__ import annotations

import pytest

from cpt.bench.clock import timed_steps
from cpt.bench.report import RoundsTable
from cpt.bench.rounds import SideRun, alternate, mean_completion_tokens, median_over_rounds, ratio, round_order

# Three rounds of two sides; the round medians are a: 2.0, 1.0, 2.0 and b: 3.0, 1.2, 5.0.
ROUNDS = [
    {"a": SideRun([1.0, 2.0, 3.0], [5.0, 7.0]), "b": SideRun([2.0, 4.0])},
    {"a": SideRun([1.0]), "b": SideRun([1.2, 1.2, 100.0])},
    {"a": SideRun([2.0, 2.0], [6.0]), "b": SideRun([5.0])},
]


def test_ratio_is_taken_per_round_then_summarised_by_median_and_range():
    r = ratio(ROUNDS, "b", "a")
    assert r.per_round == pytest.approx([1.5, 1.2, 2.5])
    assert (r.median, r.low, r.high) == pytest.approx((1.5, 1.2, 2.5))
    assert median_over_rounds(ROUNDS, "a") == 2.0
    assert median_over_rounds(ROUNDS, "b") == 3.0


def test_completion_tokens_average_every_timed_step_of_a_side():
    assert mean_completion_tokens(ROUNDS, "a") == pytest.approx(6.0)
    assert mean_completion_tokens(ROUNDS, "b") is None


def test_table_prints_round_medians_ratios_and_their_summary():
    table = RoundsTable([("a", "ours"), ("b", "peer")], [("peer/ours", "b", "a")])
    text = table.table(ROUNDS)
    lines = text.splitlines()
    assert lines[0].split() == ["round", "ours", "peer", "peer/ours"]
    assert lines[1].split() == ["s/step", "s/step", "ratio"]
    assert lines[2].split() == ["1", "2.000", "3.000", "1.50x"]
    assert lines[3].split() == ["2", "1.000", "1.200", "1.20x"]
    assert lines[4].split() == ["3", "2.000", "5.000", "2.50x"]
    assert lines[5].split() == ["median", "of", "3", "2.000", "3.000", "1.50x"]
    assert lines[6].split() == ["range", "(min-max)", "1.20-2.50x"]
    assert lines[7].split() == ["completion", "tokens", "6.0", "-"]
    assert table.conclusion(ROUNDS) == ["peer / ours: 1.50x, median of 3 rounds (range 1.20x to 2.50x)"]


def test_sides_alternate_in_a_rotated_order_and_keep_their_results():
    calls = []

    def side(name, seconds):
        def run():
            calls.append(name)
            return SideRun([seconds])
        return run

    seen = []
    rounds = alternate({"x": side("x", 1.0), "y": side("y", 2.0), "z": side("z", 4.0)}, 3,
                       on_round=lambda i, r: seen.append(i))
    assert calls == ["x", "y", "z", "y", "z", "x", "z", "x", "y"]
    assert seen == [0, 1, 2]
    assert all(list(r) == ["x", "y", "z"] and r["z"].median_s == 4.0 for r in rounds)
    assert round_order(["x", "y"], 3) == ["y", "x"]
    with pytest.raises(ValueError):
        alternate({"x": side("x", 1.0)}, 0)


def test_timed_steps_drop_the_untimed_first_step_and_the_warmup():
    run = timed_steps([0.0, 1.0, 3.0, 6.0, 10.0], [None, 5.0, 6.0, 7.0, 8.0], warmup=1)
    assert run.step_s == [2.0, 3.0, 4.0]
    assert run.completion_tokens == [6.0, 7.0, 8.0]
    assert run.median_s == 3.0
    with pytest.raises(ValueError, match="steps"):
        _ = timed_steps([0.0, 1.0], [None, None], warmup=1).median_s
