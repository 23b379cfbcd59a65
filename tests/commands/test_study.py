"""`cpt study`: a two-experiment, two-seed study of two short tasks runs every pair, skips a finished run,
resumes a stopped one, and writes the grouped comparison with intervals; bad study files are messages."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from scipy.stats import t as student_t

from cpt import cli
from cpt.commands.study import run_environment
from cpt.study import load_study, plan, state
from tests.helpers import REPO

SHORT = ["tasks=[colour,count]", "steps_per_task=2", "logger=none", "save_checkpoints=true",
         "trainer.enable_progress_bar=true"]


def write_study(path, quick_cfg, out, **changes) -> None:
    study = {"name": "two by two", "output_dir": str(out), "seeds": [0, 1], "overrides": [*quick_cfg, *SHORT],
             "experiments": {"sft": {"config": "configs/experiments/sft_sequential.yaml"},
                             "sft_fast": {"config": "configs/experiments/sft_sequential.yaml", "name": "SFT lr 1e-3",
                                          "overrides": ["optim.lr=1e-3"]}},
             "compare": {"margins": {"fm": 3}, "primary": [["SFT lr 1e-3", "SFT sequential"]],
                         "diff": [["SFT lr 1e-3", "SFT sequential"]]}, **changes}
    path.write_text(yaml.safe_dump(study))


def fit(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpt", "fit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_study_skips_finished_runs_resumes_stopped_ones_and_compares(tmp_path, quick_cfg, foundation_dir, capsys):
    study_file, out = tmp_path / "study.yaml", tmp_path / "study"
    write_study(study_file, quick_cfg, out)
    runs = plan(load_study(study_file))
    assert [(run.label, run.directory.relative_to(out).as_posix()) for run in runs] == [
        ("SFT sequential seed 0", "sft/seed0"), ("SFT lr 1e-3 seed 0", "sft_fast/seed0"),
        ("SFT sequential seed 1", "sft/seed1"), ("SFT lr 1e-3 seed 1", "sft_fast/seed1")]
    # Stopped part-way: one run finished, one crashed as its second task began (its first stage saved).
    finished, stopped = runs[1], runs[2]
    assert fit(list(finished.args)).returncode == 0
    before = (finished.directory / "results.json").read_bytes()
    crash = "callbacks=[{class: 'tests.helpers.poison_batch:CrashAtTask', task: 2}]"
    assert fit([*stopped.args, crash]).returncode == 1
    assert [state(run) for run in runs] == ["new", "done", "stopped", "new"]
    first_stage = stopped.directory / "checkpoints" / "1-colour" / "README.md"
    saved_at = first_stage.stat().st_mtime_ns

    proc = subprocess.run([sys.executable, "-m", "cpt", "study", str(study_file)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[2/4] SFT lr 1e-3 seed 0: finished, skipped" in proc.stdout
    assert "[3/4] SFT sequential seed 1: resuming after its last saved stage" in proc.stdout
    assert "SFT sequential seed 1 · Task 2/2 count" in proc.stdout  # the progress bar names experiment and seed
    assert (finished.directory / "results.json").read_bytes() == before  # not run again
    assert first_stage.stat().st_mtime_ns == saved_at  # resumed after stage 1, not started again
    assert [state(run) for run in runs] == ["done"] * 4

    # The grouped comparison: each experiment's mean and 95% interval over its two seeds, by hand.
    results = {run.label: json.loads((run.directory / "results.json").read_text()) for run in runs}
    rows = {row["experiment"]: row for row in csv.DictReader(open(out / "compare" / "experiments.csv"))}
    assert set(rows) == {"SFT sequential", "SFT lr 1e-3"}
    t_1 = student_t.ppf(0.975, 1)  # 12.706
    for name, row in rows.items():
        assert row["n"] == "2" and row["seeds"] == "0 1"
        for key, csv_key in (("wall_time_s", "wall_time_s"), ("avg_acc", "avg_acc"), ("general", "general_final")):
            a, b = (results[f"{name} seed {seed}"][key] for seed in (0, 1))
            a, b = (v[-1] if isinstance(v, list) else v for v in (a, b))
            assert float(row[f"{csv_key}_mean"]) == pytest.approx((a + b) / 2)
            # s = |a - b| / sqrt(2), so t s / sqrt(2) = t |a - b| / 2
            assert float(row[f"{csv_key}_half_width"]) == pytest.approx(t_1 * abs(a - b) / 2)
    assert "SFT sequential | 2 |" in (out / "compare" / "comparison.md").read_text()
    assert {d["metric"] for d in csv.DictReader(open(out / "compare" / "differences.csv"))} >= {"avg_acc", "fm"}
    # The primary comparison: FM paired over the two seeds, against the margin of 3, by hand.
    [primary] = list(csv.DictReader(open(out / "compare" / "primary.csv")))
    per_seed = [results[f"SFT lr 1e-3 seed {s}"]["fm"] - results[f"SFT sequential seed {s}"]["fm"] for s in (0, 1)]
    assert (primary["metric"], primary["test"], primary["n"], primary["margin"]) == ("fm", "paired", "2", "3.0")
    assert float(primary["difference"]) == pytest.approx(sum(per_seed) / 2)
    assert float(primary["high_95"]) - float(primary["difference"]) == pytest.approx(
        t_1 * abs(per_seed[0] - per_seed[1]) / 2)
    assert "Primary comparisons" in proc.stdout and primary["verdict"] in proc.stdout
    summary = json.loads((out / "study.json").read_text())
    assert summary["finished"] == 4 and summary["wall_time_s"] == pytest.approx(
        sum(r["wall_time_s"] for r in results.values()))

    # Again: nothing left to run, the comparison is rewritten.
    assert cli.main(["study", str(study_file)]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 4
    # Two runs at once, a core each, their output in logs/: the same results as one at a time on both cores.
    for run in runs[2:]:
        shutil.rmtree(run.directory)
    proc = subprocess.run([sys.executable, "-m", "cpt", "study", str(study_file), "--jobs", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[4/4] SFT lr 1e-3 seed 1: finished in" in proc.stdout
    for run in runs[2:]:
        again = json.loads((run.directory / "results.json").read_text())
        assert {**again, "wall_time_s": 0} == {**results[run.label], "wall_time_s": 0}
        log = (out / "logs" / f"{run.experiment.key}-seed1.log").read_text()
        assert "AvgAcc" in log and "Task 2/2" not in log  # the table at the end; no progress bar
    # A changed study file does not mix with the runs made before it.
    write_study(study_file, quick_cfg, out, overrides=[*quick_cfg, *SHORT, "optim.warmup_ratio=0.5"])
    assert cli.main(["study", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "these runs were made with another configuration" in err and "optim.warmup_ratio" in err


def test_study_files_are_checked_before_anything_runs(tmp_path, quick_cfg, capsys):
    study_file, out = tmp_path / "study.yaml", tmp_path / "out"
    write_study(study_file, quick_cfg, out)
    assert cli.main(["study", str(study_file), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 experiments x 2 seeds = 4 runs" in printed and "[4/4] SFT lr 1e-3 seed 1: starting" in printed
    assert "'name=SFT lr 1e-3' seed=1" in printed and not out.exists()
    for changes, message in [
        ({"trials": 3}, "unknown key(s) trials"),
        ({"experiments": {"x": {"config": "configs/default.yaml", "seeds": [1, -1]}}},
         "x.seeds must be a list of distinct non-negative integers"),
        ({"seeds": [0, 0]}, "'seeds' must be a list of distinct non-negative integers"),
        ({"experiments": {"x": {"config": "configs/experiments/nothing.yaml"}}}, "names config"),
        ({"experiments": {"x": {"config": "configs/default.yaml", "overrides": ["optim.lrr=1"]}}},
         "experiment 'x': unknown key 'optim.lrr'"),
        ({"experiments": {"x": {"configs": "configs/default.yaml"}}}, "must be a mapping with 'config'"),
        ({"compare": {"primary": [["SFT lr 1e-3", "SFT sequential"]]}}, "compare.primary needs compare.margins"),
        ({"compare": {"margins": {"fm": -1}}}, "compare.margins must map a metric to a number > 0"),
        ({"compare": {"diff": [["SFT lr 1e-3", "SFT sequentiel"]]}}, "compare names 'SFT sequentiel', which no"),
        ({"compare": {"primaries": []}}, "compare must be a mapping with diff, margins, primary"),
        ({"compare": {"diff": [["SFT lr 1e-3", "SFT lr 1e-3"]]}}, "compares an experiment with itself"),
        ({"compare": {"margins": {"nosuch": 3}, "primary": [["SFT lr 1e-3", "SFT sequential"]]}},
         "a margin names 'nosuch', which no experiment reports"),
        ({"experiments": {"a": {"config": "configs/experiments/sft_sequential.yaml"},
                          "b": {"config": "configs/experiments/sft_sequential.yaml"}}, "compare": {}},
         "experiments 'a' and 'b' are the same runs (one config, one name)"),
    ]:
        write_study(study_file, quick_cfg, out, **changes)
        assert cli.main(["study", str(study_file)]) == 2, changes
        assert message in capsys.readouterr().err
    assert cli.main(["study", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist (examples: configs/studies/)" in capsys.readouterr().err
    write_study(study_file, quick_cfg, out)
    assert cli.main(["study", str(study_file), "--jobs", "0"]) == 2
    assert "argument --jobs: must be a whole number >= 1, got '0'" in capsys.readouterr().err
    # a key given twice, and a comparison naming no experiment, fail at load, --dry-run included
    text = study_file.read_text()
    study_file.write_text(text.replace("experiments:\n", "experiments:\n  sft:\n    config: configs/default.yaml\n", 1))
    assert cli.main(["study", str(study_file), "--dry-run"]) == 2
    assert "found duplicate key sft" in capsys.readouterr().err
    write_study(study_file, quick_cfg, out, compare={"diff": [["SFT lr 1e-3", "SFT sequentiel"]]})
    assert cli.main(["study", str(study_file), "--dry-run"]) == 2
    assert "compare names 'SFT sequentiel', which no experiment is called" in capsys.readouterr().err
    assert not out.exists()
    out.write_text("a file")
    write_study(study_file, quick_cfg, out)
    assert cli.main(["study", str(study_file), "--dry-run"]) == 2
    assert f"output_dir {str(out)!r} is a file; name a directory" in capsys.readouterr().err


def test_an_experiment_may_take_more_seeds(tmp_path, quick_cfg, capsys):
    """An experiment's own seeds replace the study's for it; the seeds all experiments share come first."""
    study_file, out = tmp_path / "study.yaml", tmp_path / "out"
    write_study(study_file, quick_cfg, out)
    study = yaml.safe_load(study_file.read_text())
    study["experiments"]["sft_fast"]["seeds"] = [0, 1, 2, 3]
    study_file.write_text(yaml.safe_dump(study))
    runs = plan(load_study(study_file))
    assert [run.label for run in runs] == [
        "SFT sequential seed 0", "SFT lr 1e-3 seed 0", "SFT sequential seed 1", "SFT lr 1e-3 seed 1",
        "SFT lr 1e-3 seed 2", "SFT lr 1e-3 seed 3"]
    assert runs[-1].directory == out / "sft_fast" / "seed3" and "seed=3" in runs[-1].args
    assert cli.main(["study", str(study_file), "--dry-run"]) == 0
    assert "2 experiments x 2 seeds (seeds of their own for 1 of them) = 6 runs" in capsys.readouterr().out


def test_runs_going_at_once_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert run_environment(0, 1) == dict(os.environ)  # one run: the environment as it is
    assert run_environment(1, 4)["OMP_NUM_THREADS"] == "2"
    assert run_environment(0, 16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the caller's own setting stays
    assert run_environment(0, 4)["OMP_NUM_THREADS"] == "3"
    # On a machine with GPUs each slot gets one, round the GPUs.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [run_environment(slot, 3)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["0", "1", "0"]


@pytest.mark.slow
def test_sigterm_stops_the_study_and_its_runs(tmp_path, quick_cfg, foundation_dir):
    study_file, out = tmp_path / "study.yaml", tmp_path / "study"
    write_study(study_file, quick_cfg, out, overrides=[*quick_cfg, *SHORT, "steps_per_task=500"], seeds=[0])
    study = subprocess.Popen([sys.executable, "-m", "cpt", "study", str(study_file), "--jobs", "2"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "sft" / "seed0" / "config.yaml").exists():  # the first run has started
        assert time.monotonic() < deadline and study.poll() is None
        time.sleep(0.5)

    def fits() -> list[str]:  # the command lines of this study's cpt fit processes still alive
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if " fit " in text and str(out) in text:
                found.append(text)
        return found

    assert fits()
    study.send_signal(signal.SIGTERM)
    _, err = study.communicate(timeout=120)
    assert study.returncode == 130 and "Study stopped. Finished runs are kept" in err
    assert not fits()  # its runs were stopped with it, not left behind


def test_a_run_left_out_of_the_comparison_is_named_and_fails_the_study(tmp_path, quick_cfg, capsys, monkeypatch):
    """A run whose results file is damaged (or that did not finish) is never dropped from compare/ silently."""
    from cpt.commands import study as study_command
    from cpt.config import config_from_args, save_config

    study_file, out = tmp_path / "study.yaml", tmp_path / "out"
    write_study(study_file, quick_cfg, out)
    runs = plan(load_study(study_file))
    damaged = runs[0]
    save_config(config_from_args(list(damaged.args)), damaged.directory / "config.yaml")
    (damaged.directory / "results.json").write_text('[{"complete": true}')  # cut short: not JSON, and a list
    assert state(damaged) == "started"
    monkeypatch.setattr(study_command, "run_all", lambda study, runs, jobs: [])  # the runs themselves: not here
    assert cli.main(["study", str(study_file)]) == 1
    err = capsys.readouterr().err
    assert "the comparison leaves out these runs, which have no complete results" in err
    assert f"{damaged.label} ({damaged.directory / 'results.json'})" in err
    assert f"`python -m cpt study {study_file}` runs them again" in err
    (damaged.directory / "results.json").write_text('["complete"]')  # valid JSON, not a results mapping
    assert state(damaged) == "started"
