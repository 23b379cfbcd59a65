"""A damaged or half-finished run is one line naming the file and a next step that works, exit code 1, never a
traceback: a truncated training state, weights file or adapter, a corrupt config.yaml, results, analysis or
filtering file, a study's run with a corrupt config. Each suggested command is run and does what it says, and a
run stopped before its first stage continues with the one resume command README gives."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cpt.cli import main
from cpt.config import load_config, save_config
from cpt.run_files import load_training_state, read_json, reason, rerun_command, run_of
from tests.helpers import REPO, metric_rows

TINY = ["tasks=[colour]", "steps_per_task=2", "data.eval_size=4", "eval.general=false"]


def cpt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cpt", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


def one_error(err: str, *parts: str) -> str:
    """The single `error:` line of a command's stderr, checked to name every part; no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert all(str(part) in lines[0] for part in parts), (lines[0], parts)
    return lines[0]


def suggested(line: str) -> list[str]:
    """The arguments of the `python -m cpt ...` command a message suggests (the last one it quotes)."""
    command = line.rsplit("`python -m cpt ", 1)[1].split("`")[0]
    return shlex.split(command)


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def fake_run(tmp_path: Path, quick_cfg: list[str], rows: int = 1, tasks: str = "[colour]") -> Path:
    """A run directory as `fit` leaves it (config, results with `rows` accuracy rows), without training; with
    tasks=[colour,count] and 2 rows, a run that finished its first stage of two."""
    run_dir = tmp_path / "run"
    save_config(load_config(None, [*quick_cfg, *TINY, f"tasks={tasks}", f"output_dir={run_dir}"]),
                run_dir / "config.yaml")
    (run_dir / "results.json").write_text(json.dumps({"tasks": ["colour"], "accuracy_matrix": [[0.5]] * rows,
                                                      "stages": [["colour"]], "complete": rows > 1}))
    return run_dir


def stage_dir(run_dir: Path, adapters: bool) -> Path:
    """A stage directory of the run: full weights (config.json, model.safetensors) or LoRA adapters."""
    stage = run_dir / "checkpoints" / "1-colour"
    stage.mkdir(parents=True)
    if adapters:
        base = run_dir.parent / "base"
        base.mkdir()
        (base / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
        (stage / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
        save_file({"lora_A.weight": torch.ones(64, 64)}, stage / "adapter_model.safetensors")
    else:
        (stage / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
        save_file({"lm_head.weight": torch.ones(64, 64)}, stage / "model.safetensors")
    return stage


# --- the readers --------------------------------------------------------------------------------------------------

def test_the_next_step_of_a_run_file_starts_the_run_again_in_place(tmp_path, quick_cfg):
    run_dir = fake_run(tmp_path, quick_cfg)
    assert run_of(run_dir / "results.json") == run_of(run_dir / "checkpoints" / "1-colour" / "x") == run_dir
    assert run_of(tmp_path / "elsewhere" / "model.safetensors") is None
    assert rerun_command(run_dir) == f"python -m cpt fit {run_dir / 'config.yaml'} overwrite=true"
    # A resumed run saved resume=true, which would win over overwrite=true.
    save_config(load_config(run_dir / "config.yaml", ["resume=true"]), run_dir / "config.yaml")
    assert rerun_command(run_dir) == f"python -m cpt fit {run_dir / 'config.yaml'} resume=false overwrite=true"
    assert reason(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory. "
                               "This is an internal miniz error.\nmore")) == (
        "PytorchStreamReader failed reading zip archive: failed finding central directory")
    (run_dir / "results.json").write_text('{"tasks": ["col')
    with pytest.raises(ValueError, match="results.json is not valid JSON .*start the run again with `python -m cpt"):
        read_json(run_dir / "results.json")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_truncated_sharded_training_state_is_named(tmp_path):
    """Two-process FSDP saves last.ckpt as a directory of shards: each is checked against its recorded size."""
    import torch.distributed.checkpoint as dcp

    state_dir = tmp_path / "last.ckpt"
    dcp.save({"weight": torch.ones(256, 256)}, checkpoint_id=str(state_dir), no_dist=True)
    torch.save({"epoch": 1}, state_dir / "meta.pt")
    assert load_training_state(state_dir) == {"epoch": 1}
    shard = next(state_dir.glob("*.distcp"))
    cut(shard)
    with pytest.raises(ValueError, match=f"{state_dir} is damaged \\({shard.name} is truncated\\)"):
        load_training_state(state_dir)


# --- each kind of damaged file, through the command that reads it --------------------------------------------------

def test_a_truncated_training_state(tmp_path, quick_cfg, capsys):
    run_dir = fake_run(tmp_path, quick_cfg, rows=2, tasks="[colour,count]")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"state_dict": {"w": torch.ones(1000)}, "epoch": 0}, last)
    cut(last)
    assert main(["fit", str(run_dir / "config.yaml"), "resume=true"]) == 1
    line = one_error(capsys.readouterr().err, f"{last} is damaged (", "the run cannot continue from it",
                     f"`{rerun_command(run_dir)}`")
    assert suggested(line) == ["fit", str(run_dir / "config.yaml"), "overwrite=true"]
    last.write_bytes(b"")
    assert main(["fit", str(run_dir / "config.yaml"), "resume=true"]) == 1
    one_error(capsys.readouterr().err, f"{last} is damaged (empty)")


@pytest.mark.parametrize("command", ["eval", "generate", "export"])
@pytest.mark.parametrize("adapters", [False, True], ids=["weights", "adapter"])
def test_a_truncated_weights_file_or_adapter(tmp_path, quick_cfg, capsys, command, adapters):
    run_dir = fake_run(tmp_path, quick_cfg, rows=2)
    stage = stage_dir(run_dir, adapters)
    weights = stage / ("adapter_model.safetensors" if adapters else "model.safetensors")
    cut(weights, 0.9)
    args = {"eval": ["eval", *quick_cfg, *TINY, f"checkpoint={stage}", f"out={tmp_path / 'eval'}"],
            "generate": ["generate", f"checkpoint={stage}", "question=what colour?"],
            "export": ["export", str(stage), str(tmp_path / "exported")]}[command]
    assert main(args) == 1
    one_error(capsys.readouterr().err, f"{weights} is not a readable safetensors file (", "it may be truncated",
              f"start the run again with `{rerun_command(run_dir)}`")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "exported").exists()


def test_a_truncated_adapter_of_an_earlier_stage(tmp_path, quick_cfg, capsys):
    """O-LoRA's stage directories hold the earlier stages' adapters in stage<k>/: each is checked too."""
    run_dir = fake_run(tmp_path, quick_cfg, rows=2)
    stage = stage_dir(run_dir, adapters=True)
    (stage / "stage2").mkdir()
    shutil.copy(stage / "adapter_config.json", stage / "stage2")
    shutil.copy(stage / "adapter_model.safetensors", stage / "stage2")
    cut(stage / "stage2" / "adapter_model.safetensors")
    assert main(["export", str(stage), str(tmp_path / "exported")]) == 1
    one_error(capsys.readouterr().err, f"{stage / 'stage2' / 'adapter_model.safetensors'} is not a readable")


@pytest.mark.parametrize("command", ["eval", "generate", "export"])
def test_one_stages_adapter_inside_a_stage_directory_is_refused(tmp_path, quick_cfg, capsys, command):
    """O-LoRA's <stage>/stage2 holds one adapter of the stack: loaded alone it would be a model no run had."""
    run_dir = fake_run(tmp_path, quick_cfg, rows=2)
    stage = stage_dir(run_dir, adapters=True)
    part = stage / "stage2"
    part.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(stage / name, part)
    args = {"eval": ["eval", *quick_cfg, *TINY, f"checkpoint={part}", f"out={tmp_path / 'eval'}"],
            "generate": ["generate", f"checkpoint={part}", "question=what colour?"],
            "export": ["export", str(part), str(tmp_path / "exported")]}[command]
    assert main(args) == 2
    one_error(capsys.readouterr().err, f"{part} is stage 2's adapter inside the stage directory {stage}",
              f"name the stage directory {stage}")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "exported").exists()


def test_a_corrupt_config_yaml(tmp_path, quick_cfg, capsys):
    run_dir = fake_run(tmp_path, quick_cfg, rows=2)
    stage = stage_dir(run_dir, adapters=False)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text()[:200] + "\n  bad: [unclosed\n")
    expected = (f"{config} is not valid YAML (", "restore it from a copy, or start the run again from the config it "
                f"was started with: `python -m cpt fit CONFIG.yaml output_dir={run_dir} overwrite=true`")
    for args in (["fit", str(config), "resume=true"],
                 ["fit", *quick_cfg, *TINY, f"output_dir={run_dir}", "resume=true"],
                 ["generate", f"checkpoint={stage}", "question=what colour?"]):
        assert main(args) == 1, args
        one_error(capsys.readouterr().err, *expected)
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "compare")]) == 1
    one_error(capsys.readouterr().err, f"{config} is not valid YAML", "leave the run out, or restore it")


@pytest.mark.parametrize("name", ["results.json", "analysis.json", "filtering.json"])
def test_a_corrupt_results_or_analysis_file(tmp_path, quick_cfg, capsys, name):
    run_dir = fake_run(tmp_path, quick_cfg, rows=2)
    path = run_dir / name
    path.write_text('{"stages": [{"name": "col')
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "compare")]) == 1
    one_error(capsys.readouterr().err, f"{path} is not valid JSON (", "Leave the run out, or start the run again "
              f"with `{rerun_command(run_dir)}`")


def test_a_corrupt_results_file_of_a_run_without_training_state(tmp_path, quick_cfg, capsys):
    """resume=true without last.ckpt reads the results to tell a run that finished a stage from one that did not."""
    run_dir = fake_run(tmp_path, quick_cfg, tasks="[colour,count]")
    (run_dir / "results.json").write_bytes(b'{"accuracy_matrix": [[0.\xff')
    assert main(["fit", str(run_dir / "config.yaml"), "resume=true"]) == 1
    one_error(capsys.readouterr().err, f"{run_dir / 'results.json'} is not valid JSON", rerun_command(run_dir))
    # Whole, with two rows and no saved state (save_checkpoints=false): nothing to continue from, rerun.
    (run_dir / "results.json").write_text(json.dumps({"accuracy_matrix": [[0.1], [0.9]]}))
    assert main(["fit", str(run_dir / "config.yaml"), "resume=true"]) == 2
    one_error(capsys.readouterr().err, "the run finished a stage without saving the training state",
              f"Start it again with `{rerun_command(run_dir)}`")


def test_a_study_run_with_a_corrupt_config_and_the_step_it_suggests(tmp_path, quick_cfg, capsys):
    out = tmp_path / "study"
    study_file = tmp_path / "study.yaml"
    study_file.write_text(json.dumps({"name": "s", "output_dir": str(out), "seeds": [0],
                                      "overrides": [*quick_cfg, *TINY],
                                      "experiments": {"sft": {"config": "configs/experiments/sft_sequential.yaml"}}}))
    run_dir = out / "sft" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: [0\n")
    (run_dir / "results.json").write_text('{"complete": false}')
    assert main(["study", str(study_file), "--dry-run"]) == 1
    one_error(capsys.readouterr().err, f"{run_dir / 'config.yaml'} is not valid YAML (",
              f"move {run_dir} away (or delete it) and the study runs it again")
    run_dir.rename(tmp_path / "moved")
    assert main(["study", str(study_file), "--dry-run"]) == 0
    assert "SFT sequential seed 0: starting" in capsys.readouterr().out
    # Whole but made with another configuration: "move those run directories away to run them again".
    run_dir.mkdir(parents=True)
    save_config(load_config(REPO / "configs/experiments/sft_sequential.yaml", [*quick_cfg, *TINY, "optim.lr=0.5"]),
                run_dir / "config.yaml")
    (run_dir / "results.json").write_text('{"complete": false}')
    assert main(["study", str(study_file), "--dry-run"]) == 2
    one_error(capsys.readouterr().err, "these runs were made with another configuration")
    shutil.rmtree(run_dir)
    assert main(["study", str(study_file), "--dry-run"]) == 0
    assert "SFT sequential seed 0: starting" in capsys.readouterr().out


# --- real runs: the suggested commands, run ------------------------------------------------------------------------

@pytest.mark.slow
def test_damaged_files_of_a_run_and_the_commands_their_messages_suggest(tmp_path, quick_cfg, foundation_dir):
    run_dir = tmp_path / "run"
    args = [*quick_cfg, *TINY, f"output_dir={run_dir}"]
    assert cpt("fit", *args).returncode == 0
    results = json.loads((run_dir / "results.json").read_text())
    stage = run_dir / "checkpoints" / "1-colour"

    # A truncated adapter and a truncated training state: both name the file and the same command.
    cut(stage / "adapter_model.safetensors")
    proc = cpt("eval", *args, f"checkpoint={stage}", f"out={tmp_path / 'eval'}")
    assert proc.returncode == 1
    line = one_error(proc.stderr, f"{stage / 'adapter_model.safetensors'} is not a readable safetensors file")
    cut(run_dir / "checkpoints" / "last.ckpt")
    proc = cpt("fit", str(run_dir / "config.yaml"), "resume=true")  # finished: nothing to resume, state not read
    assert proc.returncode == 0 and "finished all 1 stage(s); there is nothing to continue" in proc.stdout

    # The command they suggest trains the run again in place: the same results, every file whole again.
    proc = cpt(*suggested(line))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((run_dir / "results.json").read_text())
    assert {**again, "wall_time_s": 0} == {**results, "wall_time_s": 0}
    assert cpt("eval", *args, f"checkpoint={stage}", f"out={tmp_path / 'eval'}").returncode == 0
    assert load_training_state(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0

    # The other messages about these directories, and the steps they suggest. eval into a directory that holds
    # results: "name a new directory".
    proc = cpt("eval", *args, f"checkpoint={stage}", f"out={tmp_path / 'eval'}")
    assert proc.returncode == 2 and "name a new directory" in one_error(proc.stderr, "already holds results")
    assert cpt("eval", *args, f"checkpoint={stage}", f"out={tmp_path / 'eval-2'}").returncode == 0
    # QLoRA from a LoRA stage: "merge them first (python -m cpt export STAGE OUT_DIR) and QLoRA OUT_DIR".
    proc = cpt("fit", *args, f"model.name_or_path={stage}", "model.finetune=qlora", f"output_dir={tmp_path / 'q'}")
    assert proc.returncode == 2
    merge = one_error(proc.stderr, "merge them first").split("(python -m cpt ")[1].split(")")[0].split()
    assert merge == ["export", str(stage), "OUT_DIR"]
    exported = tmp_path / "merged"
    assert cpt("export", str(stage), str(exported)).returncode == 0
    from cpt.model.presets import resolve_checkpoint
    assert resolve_checkpoint(load_config(None, [*args, f"model.name_or_path={exported}",
                                                 "model.finetune=qlora"])) == exported
    # export over an existing directory: "choose another directory or add --overwrite".
    proc = cpt("export", str(stage), str(exported))
    assert proc.returncode == 2 and "add --overwrite" in one_error(proc.stderr, f"{exported} exists")
    assert cpt("export", str(stage), str(exported), "--overwrite").returncode == 0

    # A corrupt config.yaml: the run is started again from the config it was started with.
    (run_dir / "config.yaml").write_text("model: {name_or_path: [\n")
    proc = cpt("fit", str(run_dir / "config.yaml"), "resume=true")
    assert proc.returncode == 1
    command = suggested(one_error(proc.stderr, f"{run_dir / 'config.yaml'} is not valid YAML"))
    assert command == ["fit", "CONFIG.yaml", f"output_dir={run_dir}", "overwrite=true"]
    proc = cpt("fit", *args, *command[2:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((run_dir / "results.json").read_text())
    assert {**again, "wall_time_s": 0} == {**results, "wall_time_s": 0}
    assert load_config(run_dir / "config.yaml").output_dir == str(run_dir)


@pytest.mark.slow
def test_a_run_stopped_before_its_first_stage_continues_with_the_resume_command(tmp_path, quick_cfg, foundation_dir):
    """The circle closed: the run refuses a second start and suggests resume=true, which starts its first stage
    again in place (the stopped attempt's log kept beside the new one), with the results of an uninterrupted run."""
    args = [*quick_cfg, "tasks=[colour,count]", "steps_per_task=2", "data.eval_size=4", "eval.general=false"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert cpt("fit", *args, f"output_dir={whole}").returncode == 0
    crash = f"callbacks=[{{class: 'tests.helpers.poison_batch:CrashOnce', task: 1, marker: '{tmp_path / 'crashed'}'}}]"
    proc = cpt("fit", *args, f"output_dir={stopped}", crash)
    assert proc.returncode == 1 and "simulated crash at the start of task 1" in proc.stderr
    assert len(json.loads((stopped / "results.json").read_text())["accuracy_matrix"]) == 1  # the base row only
    assert not (stopped / "checkpoints" / "last.ckpt").exists()

    proc = cpt("fit", *args, f"output_dir={stopped}", crash)  # started again as it was: refused
    assert proc.returncode == 2
    resume = suggested(one_error(proc.stderr, "already holds a run", "Continue it with"))
    assert resume == ["fit", str(stopped / "config.yaml"), "resume=true"]
    proc = cpt(*resume, "steps_per_task=3")  # not the run that stopped: refused, and told the command
    assert proc.returncode == 2 and suggested(one_error(proc.stderr, "differ from")) == resume

    proc = cpt(*resume)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resume=true: {stopped} holds no finished stage; starting its first stage again" in proc.stdout
    resumed, uninterrupted = (json.loads((d / "results.json").read_text()) for d in (stopped, whole))
    assert {**resumed, "wall_time_s": 0} == {**uninterrupted, "wall_time_s": 0}
    losses = [[r["train/loss"] for r in metric_rows(d, "train/loss")] for d in (stopped, whole)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert (stopped / "logs" / "metrics.before-resume-1.csv").is_file()  # the stopped attempt's log, kept
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["1-colour", "2-count", "last.ckpt"]


def test_a_task_with_no_usable_row_names_the_data_check_that_lists_every_bad_row(tmp_path, capsys):
    """fit stops before any compute with the data check command of the run's saved config, which lists every bad
    row (not only the first three the message shows)."""
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    rows = [{"problem": f"q{i}", "answer": "a", "images": ["corrupt.png"]} for i in range(5)]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    (tmp_path / "eval.json").write_text(json.dumps([{"problem": "q", "answer": "a", "images": []}]))
    run_dir = tmp_path / "run"
    args = ["tasks=[mine]", "local_tasks.mine.format=easyr1", f"local_tasks.mine.train={tmp_path / 'train.json'}",
            f"local_tasks.mine.eval={tmp_path / 'eval.json'}", "eval.general=false",
            "trainer.enable_progress_bar=false", f"output_dir={run_dir}"]
    assert main(["fit", *args]) == 1
    suggested = one_error(capsys.readouterr().err, "task 'mine': none of its train rows can be used",
                          "lists them all").split("`")[1]
    assert suggested == f"python -m cpt data check {run_dir / 'config.yaml'}"
    assert main(shlex.split(suggested)[3:]) == 1  # the task cannot be used: the check says so too
    report = capsys.readouterr().out
    assert all(f"train row {i}" in report for i in range(5)), report
