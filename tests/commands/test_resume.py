"""A run that stops (here: a NaN loss) keeps what it finished, and `resume=true` continues it after its last
finished stage as if it had not stopped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpt.cli import main
from cpt.config import load_config, save_config
from tests.helpers import REPO, metric_rows


def fit(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    return subprocess.run([sys.executable, "-m", "cpt", "fit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


def losses(run_dir: Path, log: str = "metrics.csv") -> list[str]:
    return [r["train/loss"] for r in metric_rows(run_dir, "train/loss", log)]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_nonfinite_loss_stops_every_process_and_the_run_resumes(tmp_path, quick_cfg, foundation_dir, devices):
    args = [*quick_cfg, "tasks=[colour,count]", "steps_per_task=2", "data.eval_size=4", "eval.general=false"]
    if devices == 2:
        args += ["trainer.devices=2", "trainer.strategy=fsdp"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert fit([*args, f"output_dir={whole}"]).returncode == 0

    # From task 2 on, the last process's loss is NaN (tests/helpers/poison_batch.py). Every process stops with the
    # message, none left waiting in a collective, and task 1's results and training state stay on disk.
    proc = fit([*args, f"output_dir={stopped}", "callbacks=[tests.helpers.poison_batch:PoisonBatch]"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    value = "not finite on 1 of 2 processes (this one: nan)" if devices == 2 else "nan"
    assert f"error: SFT loss is {value} at step 2 (task 2); lower optim.lr" in proc.stderr
    results = json.loads((stopped / "results.json").read_text())
    assert results["complete"] is False and len(results["accuracy_matrix"]) == 2  # base, after task 1
    assert (stopped / "checkpoints" / "last.ckpt").exists() and (stopped / "checkpoints" / "1-colour").is_dir()

    # Resumed with the run's own config (the poisoning callback removed): task 2 trains exactly as in the
    # uninterrupted run, and the results are the same.
    proc = fit([str(stopped / "config.yaml"), "resume=true", "callbacks=[]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(stopped, "metrics.before-resume-1.csv") == losses(whole)[:2]  # the stopped run's log, kept
    assert losses(stopped) == losses(whole)[2:]
    resumed, uninterrupted = (json.loads((d / "results.json").read_text()) for d in (stopped, whole))
    assert resumed["complete"] and len(resumed["accuracy_matrix"]) == 3
    assert {**resumed, "wall_time_s": 0} == {**uninterrupted, "wall_time_s": 0}
    assert resumed["wall_time_s"] > 0


ANALYSED = ("updated", "fisher_update", "kl_new_task", "forgetting", "general_change", "examples")
# Rollouts whose rewards vary within a group, so that both methods with rollouts move the weights in two steps.
VARIED = ["rft.reward.function=tests.helpers.plugins:odd_length_reward", "rft.reward.weights={accuracy: 1.0}"]


def crash_and_resume(tmp_path: Path, args: list[str], last: int) -> tuple[Path, Path, list[dict]]:
    """The run uninterrupted and the same run crashed at the start of task `last` and resumed; the last task's
    logged figures (the timings left out), checked equal in both."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert fit([*args, f"output_dir={whole}"]).returncode == 0
    crash = f"callbacks=[{{class: 'tests.helpers.poison_batch:CrashAtTask', task: {last}}}]"
    proc = fit([*args, f"output_dir={stopped}", crash])
    assert proc.returncode == 1 and f"simulated crash at the start of task {last}" in proc.stderr
    assert fit([str(stopped / "config.yaml"), "resume=true", "callbacks=[]"]).returncode == 0

    def last_task(run_dir: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in metric_rows(run_dir, "train/task")
                if r["train/task"] == f"{last}.0"]

    expected = last_task(whole)
    assert len(expected) == 2 and last_task(stopped) == expected
    resumed, uninterrupted = (json.loads((d / "results.json").read_text()) for d in (stopped, whole))
    assert {**resumed, "wall_time_s": 0} == {**uninterrupted, "wall_time_s": 0}
    return whole, stopped, expected


@pytest.mark.slow
@pytest.mark.parametrize("case, term", [
    # What each continual-learning baseline keeps across stages comes back from the checkpoint: LwF's teacher (the
    # stage's starting weights), MAS's importance and anchor, O-LoRA's frozen adapters, DER's buffer.
    (["lwf.weight=1"], "loss/lwf"),
    (["regularizer.kind=mas", "regularizer.strength=1000"], "loss/mas"),
    (["model.finetune=lora", "olora.enabled=true"], "loss/olora"),
    (["der.weight=0.5", "der.label_weight=0.5", "der.buffer_size=6"], "loss/der"),
    # RFT's adaptive entropy coefficient (it rises by 0.01 per step below the target): restarted at 0 instead of
    # restored, the resumed run's bonus would differ.
    (["method=rft", "rft.group_size=2", "data.batch_size=2", "rft.max_new_tokens=6", "rft.entropy.adaptive=true",
      "rft.entropy.target=100", "rft.entropy.step=0.01"], "policy/entropy_coef"),
], ids=["teacher-lwf", "importance-mas", "adapters-olora", "buffer-der", "entropy-control-rft"])
def test_baselines_resume_after_a_crash_as_if_uninterrupted(tmp_path, quick_cfg, foundation_dir, case, term):
    args = [*quick_cfg, "steps_per_task=2", "data.eval_size=4", "eval.general=false", "data.batch_size=4",
            "tasks=[colour,count,shape]", *case]
    _, _, expected = crash_and_resume(tmp_path, args, 3)
    assert all(float(r[term]) > 0 for r in expected[1:])


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    # The generators are restored with the stage: the resumed run samples the rollouts the uninterrupted one did.
    ["method=rft", "rft.group_size=2", "data.batch_size=2", "rft.max_new_tokens=6", *VARIED,
     "analysis.enabled=true", "tasks=[colour,count]"],
    ["method=onpolicy_sft", "rft.group_size=2", "data.batch_size=2", "rft.max_new_tokens=6", *VARIED,
     "analysis.enabled=true", "tasks=[colour,count]"],
    # MagMaX's base, merge and unmerged weights come back: the next stage trains from the unmerged ones.
    ["model.finetune=full", "magmax.enabled=true", "analysis.enabled=true", "tasks=[colour,count,shape]"],
    # EWC's Fisher and anchor, and the analysis probes, come back: the same penalty, the same analysis.json.
    ["regularizer.kind=ewc", "regularizer.strength=1000", "analysis.enabled=true", "tasks=[colour,count,shape]"],
    # The second family resumes as the first does.
    ["model.name_or_path=tiny-qwen3-vl", "method=rft", "rft.group_size=2", "data.batch_size=2",
     "rft.max_new_tokens=6", *VARIED, "analysis.enabled=true", "tasks=[colour,count]"],
], ids=["rft", "onpolicy_sft", "magmax", "ewc-analysis", "rft-qwen3-vl"])
def test_resumes_after_a_crash_as_if_uninterrupted(tmp_path, quick_cfg, foundation_dir, case):
    args = [*quick_cfg, "steps_per_task=2", "data.eval_size=4", "eval.general=true", *case]
    last = len(case[-1].split(","))
    whole, stopped, expected = crash_and_resume(tmp_path, args, last)
    if "method=rft" in case:
        assert all(r["policy/entropy"] and r["rollout/completion_length"] for r in expected)
    elif "method=onpolicy_sft" in case:
        assert all(r["onpolicy/right"] and r["train/loss"] for r in expected)
    elif "regularizer.kind=ewc" in case:
        assert float(expected[-1]["loss/ewc"]) > 0
    # Every method writes the explanations' quantities, and the resumed run writes the same ones.
    analysis = json.loads((whole / "analysis.json").read_text())
    assert json.loads((stopped / "analysis.json").read_text()) == analysis
    first, *later = analysis["stages"]
    assert all(key in stage for stage in analysis["stages"] for key in ANALYSED)
    assert first["fisher_update"] is None and first["forgetting"] is None
    assert all(stage["fisher_update"] > 0 and stage["forgetting"] is not None for stage in later)
    assert all(stage["kl_new_task"] == stage["kl_to_base"][stage["name"]] for stage in analysis["stages"])
    assert all(0 < stage["updated"]["all"] <= 1 for stage in analysis["stages"])
    correctness = json.loads((whole / "correctness.json").read_text())
    assert json.loads((stopped / "correctness.json").read_text()) == correctness
    assert len(correctness["correct"]) == last + 1 and len(correctness["correct"][0]["colour"]) == 4


def test_resume_errors_are_named(tmp_path, quick_cfg, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", *quick_cfg, f"output_dir={run_dir}", "resume=true"]) == 2
    assert f"{run_dir / 'checkpoints' / 'last.ckpt'} does not exist" in capsys.readouterr().err
    # A run that finished a stage, resumed with a different step budget: not the run that stopped.
    save_config(load_config(None, [*quick_cfg, f"output_dir={run_dir}"]), run_dir / "config.yaml")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert main(["fit", str(run_dir / "config.yaml"), "resume=true", "steps_per_task=5", "logger=none"]) == 2
    err = capsys.readouterr().err
    saved = run_dir / "config.yaml"
    assert f"differ from {saved}: steps_per_task." in err and f"python -m cpt fit {saved} resume=true" in err


def test_resuming_a_finished_run_says_so_and_a_damaged_results_file_is_named(tmp_path, quick_cfg, capsys):
    run_dir = tmp_path / "run"
    saved = run_dir / "config.yaml"
    save_config(load_config(None, [*quick_cfg, f"output_dir={run_dir}", "tasks=[colour,count]"]), saved)
    results = run_dir / "results.json"
    results.write_text(json.dumps({"tasks": ["colour", "count"], "accuracy_matrix": [[0.5, 0.5]] * 3}))
    assert main(["fit", str(saved), "resume=true"]) == 0
    out = capsys.readouterr().out
    assert f"the run in {run_dir} finished all 2 stage(s); there is nothing to continue" in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "results.json"]  # nothing touched
    results.write_text('{"tasks": ["colour", "count"], "accuracy_matrix": [[0.5, 0.5]')
    assert main(["fit", str(saved), "resume=true"]) == 1
    err = capsys.readouterr().err
    assert f"{results} is not valid JSON" in err and "start the run again with `python -m cpt fit" in err
