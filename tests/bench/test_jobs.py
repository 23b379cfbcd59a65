"""`cpt bench jobs`: the throughput of N runs at once against one at a time, from timings made up by hand (the
real runs take minutes; `cpt study --jobs` itself is tested in tests/commands/test_study.py)."""

import pytest

from cpt.bench import jobs


def test_throughput_is_one_runs_time_over_the_time_per_run_at_once(monkeypatch, capsys):
    # One run alone: 30 s, then 33 s; two at once: 40 s, then 44 s (20 and 22 s a run): 1.5x in both rounds.
    times = {1: iter([30.0, 33.0]), 2: iter([40.0, 44.0])}
    threads = []

    def fake(args, count, threads_each, out):
        threads.append((count, threads_each))
        return next(times[count]), [[50.0, 60.0]]

    monkeypatch.setattr(jobs, "timed_fits", fake)
    result = jobs.bench_jobs(["steps_per_task=5"], jobs=2, rounds=2, cores=4)
    assert result["throughput"].per_round == pytest.approx([1.5, 1.5])
    # The sides take turns: round 1 one run first, round 2 the pair first; the cores are shared out.
    assert threads == [(1, 4), (2, 2), (2, 2), (1, 4)]
    printed = capsys.readouterr().out
    assert "steps_per_task=5" in printed and "s/run" in printed
    assert printed.count("seed 0's matrix: the same") == 2
    assert "2 at once / one at a time: 1.50x, median of 2 rounds (range 1.50x to 1.50x)" in printed
    with pytest.raises(SystemExit, match="--jobs 1"):
        jobs.bench_jobs([], jobs=1)
