"""End to end: `cpt fit` over two tasks on the quick foundation model, files read back."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cpt.commands.fit import run
from cpt.config import load_config
from tests.helpers import REPO, metric_rows

pytestmark = pytest.mark.slow  # every test here trains

EXPERIMENTS = REPO / "configs" / "experiments"


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory, quick_cfg, foundation_dir):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*quick_cfg, f"output_dir={run_dir}", "tasks=[colour,count]", "steps_per_task=3", "seed=1"])
    return run_dir, run(cfg)


def test_results_files(two_task_run):
    run_dir, summary = two_task_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["tasks"] == ["colour", "count"]
    matrix = results["accuracy_matrix"]
    assert len(matrix) == 3 and all(len(row) == 2 for row in matrix)  # base + after each task
    assert all(0 <= v <= 100 for row in matrix for v in row)
    # Accuracies are multiples of 100/8: eight eval examples per task.
    assert all(abs(v * 8 / 100 - round(v * 8 / 100)) < 1e-6 for row in matrix for v in row)
    assert results["avg_acc"] == pytest.approx(sum(matrix[2]) / 2)
    assert results["fm"] == pytest.approx(matrix[2][0] - matrix[1][0])
    assert results["bwt"] == pytest.approx(matrix[2][0] - matrix[1][0])
    assert len(results["general"]) == 3 and results["complete"]
    assert results["chance"] == [25.0, 20.0]
    assert summary == results

    rows = list(csv.reader(open(run_dir / "accuracy_matrix.csv")))
    assert rows[0] == ["after", "colour", "count", "general"]
    assert [r[0] for r in rows[1:]] == ["base", "colour", "count"]
    assert float(rows[3][1]) == pytest.approx(matrix[2][0], abs=0.01)
    assert Image.open(run_dir / "accuracy_matrix.png").size[0] > 300


def test_run_directory_contents(two_task_run):
    run_dir, _ = two_task_run
    saved = load_config(run_dir / "config.yaml")
    assert saved.steps_per_task == 3 and saved.seed == 1 and list(saved.tasks) == ["colour", "count"]
    # The logger got the resolved config and the versions as hyperparameters.
    hparams = OmegaConf.load(run_dir / "logs" / "hparams.yaml")
    assert hparams.seed == 1 and hparams.model.finetune == "lora" and hparams.versions.torch == torch.__version__
    for k, name in enumerate(["colour", "count"], 1):
        adapter = run_dir / "checkpoints" / f"{k}-{name}"
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    metrics = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    losses = [row for row in metrics if row.get("train/loss")]
    assert losses, "training loss was logged"
    evals = [row for row in metrics if row.get("eval/colour")]
    assert len(evals) == 3


def test_adapters_reload_and_differ_between_tasks(two_task_run):
    from safetensors.torch import load_file

    run_dir, _ = two_task_run
    first = load_file(run_dir / "checkpoints" / "1-colour" / "adapter_model.safetensors")
    second = load_file(run_dir / "checkpoints" / "2-count" / "adapter_model.safetensors")
    assert first.keys() == second.keys() and any("lora_B" in k for k in first)
    assert any(not (first[k] == second[k]).all() for k in first)


def test_saved_adapters_load_into_the_base(two_task_run, foundation_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    run_dir, _ = two_task_run
    adapter = run_dir / "checkpoints" / "2-count"
    model = PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration.from_pretrained(foundation_dir), adapter)
    saved = load_file(adapter / "adapter_model.safetensors")
    loaded = dict(model.named_parameters())
    key = next(k for k in saved if "lora_B" in k)
    match = [v for name, v in loaded.items() if name.replace(".default", "") == key]
    assert len(match) == 1 and torch.equal(match[0].detach(), saved[key])
    assert saved[key].abs().sum() > 0  # trained: LoRA B starts at zero


def test_same_seed_same_results(two_task_run, tmp_path, quick_cfg):
    run_dir, summary = two_task_run
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=3", "seed=1",
                       "save_checkpoints=false"])
    again = run(cfg)
    assert again["accuracy_matrix"] == summary["accuracy_matrix"]
    assert again["general"] == summary["general"]
    first_losses = [r["train/loss"] for r in metric_rows(run_dir, "train/loss")]
    second_losses = [r["train/loss"] for r in metric_rows(tmp_path, "train/loss")]
    assert first_losses == second_losses


@pytest.mark.parametrize("method", [
    ["method=sft"],
    # RFT under full fine-tuning: the frozen reference copy is sharded too and refreshed at each task start.
    ["method=rft", "model.finetune=full", "rft.kl.reference=task_start", "rft.group_size=2", "data.batch_size=2",
     "rft.max_new_tokens=6"],
    # On-policy SFT with the analysis: its Fisher, update and sparsity are summed over the shards.
    ["method=onpolicy_sft", "rft.group_size=2", "data.batch_size=2", "rft.max_new_tokens=6", "analysis.enabled=true",
     "analysis.probe_size=2"],
    # The second family: its decoder layers and vision blocks (DeepStack included) are the units.
    ["model.name_or_path=tiny-qwen3-vl", "method=rft", "rft.group_size=2", "data.batch_size=2",
     "rft.max_new_tokens=6"],
    # The hybrid family: one decoder layer class holds both kinds (linear attention, full attention).
    ["model.name_or_path=tiny-qwen3.5", "method=rft", "rft.group_size=2", "data.batch_size=2",
     "rft.max_new_tokens=6"],
], ids=["sft", "rft", "onpolicy_sft-analysis", "rft-qwen3-vl", "rft-qwen3.5"])
def test_fsdp_two_processes_really_shard(tmp_path, quick_cfg, foundation_dir, method):
    """trainer.strategy=fsdp with 2 CPU processes (gloo): every rank holds about half of each sharded weight."""
    # 5 evaluation examples: 3 on one rank, 2 and a padding repeat on the other.
    args = [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=2", "data.eval_size=5",
            "eval.general=false", "trainer.devices=2", "trainer.strategy=fsdp",
            "callbacks=[tests.helpers.shard_probe:ShardProbe]", *method]
    # One thread per rank: two ranks on two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cpt", "fit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probes = [json.loads((tmp_path / f"shards-rank{r}.json").read_text()) for r in (0, 1)]
    for probe in probes:
        assert probe["world"] == 2 and probe["dtensors"] > 50
        assert 0.45 < probe["local"] / probe["full"] < 0.55
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 3
    weights = "adapter_model.safetensors" if "model.finetune=full" not in method else "model.safetensors"
    assert (tmp_path / "checkpoints" / "2-count" / weights).is_file()
    # Every rank draws its own batches: each task is steps_per_task steps, not a pass over the dataset.
    steps = [row["train/task"] for row in metric_rows(tmp_path, "train/task")]
    assert steps == ["1.0", "1.0", "2.0", "2.0"]
    # Each example's correctness, gathered from both ranks in the examples' order, gives the row's accuracy.
    correct = json.loads((tmp_path / "correctness.json").read_text())["correct"]
    for row, accuracies in zip(correct, results["accuracy_matrix"]):
        assert [len(row[task]) for task in ("colour", "count")] == [5, 5]
        assert [100 * sum(row[task]) / 5 for task in ("colour", "count")] == pytest.approx(accuracies)
    if "analysis.enabled=true" in method:
        stages = json.loads((tmp_path / "analysis.json").read_text())["stages"]
        assert stages[1]["fisher_update"] is not None and 0 <= stages[1]["updated"]["all"] <= 1


def test_quickstart_notebook_reads_the_run(two_task_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    run_dir, _ = two_task_run
    monkeypatch.setenv("CPT_RUN_DIR", str(run_dir))
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.outputs)
    assert "AvgAcc" in printed and "colour" in printed
    assert any("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


# --- multitask and general benchmarks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmlu_pro_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmlu") / "test.jsonl"
    rows = [{"question_id": i, "question": f"What is {i} + 1?", "options": [str(i + 1), str(i + 2), "N/A"],
             "answer": "A", "answer_index": 0, "cot_content": "", "category": "math" if i % 2 else "physics",
             "src": "toy"} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_multitask_sft_with_benchmarks(tmp_path, quick_cfg, mmlu_pro_file):
    cfg = load_config(EXPERIMENTS / "sft_multitask.yaml", [
        *quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=2", "save_checkpoints=false",
        "eval.benchmarks.mmlu_pro.format=mmlu_pro", f"eval.benchmarks.mmlu_pro.path={mmlu_pro_file}"])
    summary = run(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stages"] == [["colour", "count"]] and results["schedule"] == "multitask"
    assert len(results["accuracy_matrix"]) == 2 and results["complete"]
    assert results["avg_acc"] == pytest.approx(sum(results["accuracy_matrix"][1]) / 2)
    assert results["fm"] is None and results["bwt"] is None and results["name"] == "SFT multitask"
    mmlu = results["benchmarks"]["mmlu_pro"]
    assert len(mmlu) == 2 and set(mmlu[1]["categories"]) == {"math", "physics"}
    # Three questions per category: the overall accuracy is the mean of the two categories'.
    assert mmlu[1]["accuracy"] == pytest.approx(sum(mmlu[1]["categories"].values()) / 2)
    assert all(v * 3 / 100 == pytest.approx(round(v * 3 / 100)) for v in mmlu[1]["categories"].values())
    # One stage of 2 x 2 steps, drawing from both tasks.
    steps = metric_rows(tmp_path, "train/loss")
    assert len(steps) == 4 and {r["train/task"] for r in steps} == {"1.0"}
    assert summary == results


def test_general_benchmarks_follow_their_frequency(tmp_path, quick_cfg):
    cfg = load_config(EXPERIMENTS / "sft_replay.yaml", [
        *quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count,shape]", "steps_per_task=1",
        "save_checkpoints=false", "eval.general_every=0", "replay.fraction=0.5"])
    results = run(cfg)
    assert [g is not None for g in results["general"]] == [True, False, False, True]
    assert [g is not None for g in results["benchmarks"]["general"]] == [True, False, False, True]
    assert results["name"] == "SFT with replay" and results["wall_time_s"] > 0
    assert results["kept_fraction"] is None


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_runs(path, tmp_path, quick_cfg, foundation_dir):
    """Each experiment as its file sets it up (its fine-tuning mode included), at the smallest size: two tasks, two
    steps each."""
    quick = [o for o in quick_cfg if not o.startswith("model.finetune=")]
    cfg = load_config(path, [*quick, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=2",
                             "data.batch_size=4", "data.eval_size=4", "eval.general=false", "save_checkpoints=false",
                             "rft.group_size=2", "rft.max_new_tokens=4", "rft.filter.pool_size=4",
                             "replay.buffer_per_task=4"])
    results = run(cfg)
    assert results["complete"] and results["name"] == load_config(path).name
