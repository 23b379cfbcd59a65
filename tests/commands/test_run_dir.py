"""Run directories keep what they hold, files appear whole, runs record their versions, bad values are messages."""

import json
import shutil

import pytest
import torch

from cpt.atomic import previous_path, replacing, staging_path, swap_in, write_json
from cpt.cli import main
from cpt.commands.resume import resume_checkpoint
from cpt.commands.run_dir import held_run, versions
from cpt.config import load_config, save_config


@pytest.mark.slow
def test_fit_refuses_a_used_output_dir_and_overwrite_replaces_it(tmp_path, quick_cfg, foundation_dir, capsys):
    run_dir = tmp_path / "run"
    args = ["fit", *quick_cfg, "tasks=[colour]", "steps_per_task=1", "data.eval_size=2", "eval.general=false",
            "logger=none", f"output_dir={run_dir}"]
    assert main(args) == 0
    results = (run_dir / "results.json").read_bytes()
    recorded = json.loads((run_dir / "versions.json").read_text())
    assert recorded["torch"] and recorded["transformers"] and recorded["lightning"] and recorded["peft"]
    assert "git_commit" in recorded
    capsys.readouterr()

    assert main([*args, "seed=5"]) == 2
    err = capsys.readouterr().err
    assert f"output_dir={str(run_dir)!r} already holds a run" in err
    assert f"python -m cpt fit {run_dir / 'config.yaml'} resume=true" in err and "overwrite=true" in err
    assert (run_dir / "results.json").read_bytes() == results  # untouched, byte for byte
    assert load_config(run_dir / "config.yaml").seed == 0

    (run_dir / "notes.txt").write_text("mine")
    assert main([*args, "seed=5", "overwrite=true"]) == 0
    out = capsys.readouterr().out
    assert f"overwrite=true: replacing the run in {run_dir} (deleting config.yaml, versions.json, results.json" in out
    assert load_config(run_dir / "config.yaml").seed == 5
    assert (run_dir / "notes.txt").read_text() == "mine"  # only what a run writes is replaced


def test_overwrite_deletes_only_what_a_run_wrote_and_never_a_directory_no_run_wrote(tmp_path, capsys):
    from cpt.commands.run_dir import delete_run_entries

    # a folder of the user's with logs/ and checkpoints/ but no config.yaml: refused, even with overwrite=true
    user = tmp_path / "user"
    (user / "logs").mkdir(parents=True)
    (user / "checkpoints").mkdir()
    (user / "logs" / "mine.txt").write_text("x")
    (user / "checkpoints" / "model.bin").write_text("x")
    assert main(["fit", f"output_dir={user}", "overwrite=true", "tasks=[colour]"]) == 2
    assert "no config.yaml, so no cpt run wrote them" in capsys.readouterr().err
    assert (user / "logs" / "mine.txt").is_file() and (user / "checkpoints" / "model.bin").is_file()
    # in a run's checkpoints/, only the stages and the training state go
    run = tmp_path / "run"
    for name in ("1-colour", "2-shape.saving", "last.ckpt"):
        (run / "checkpoints" / name).mkdir(parents=True)
    (run / "checkpoints" / "notes.md").write_text("mine")
    (run / "results.json").write_text("{}")
    delete_run_entries(run, ["results.json", "checkpoints"])
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "notes.md"]
    (run / "checkpoints" / "notes.md").unlink()
    (run / "checkpoints" / "1-colour").mkdir()
    delete_run_entries(run, ["checkpoints"])
    assert not (run / "checkpoints").exists()  # emptied: removed


def test_what_lightning_cannot_run_is_named_before_the_run_directory_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "trainer.strategy=nosuch", "tasks=[colour]", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "trainer.accelerator=" in err and "strategy=nosuch" in err and "invalid strategy name" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_sft_under_mixed_precision_clips_its_gradients(tmp_path, quick_cfg, foundation_dir):
    # Lightning clips under a mixed precision and refuses an optimizer that unscales inside its step (a fused one)
    assert main(["fit", *quick_cfg, "tasks=[colour]", "steps_per_task=2", "data.eval_size=2", "eval.general=false",
                 "trainer.precision=bf16-mixed", "logger=none", f"output_dir={tmp_path / 'run'}"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["complete"]


def test_held_run_and_versions(tmp_path):
    assert held_run(tmp_path) == [] and held_run(tmp_path / "new") == []
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "config.yaml").write_text("seed: 0")
    assert held_run(tmp_path) == []  # no run has computed anything here yet
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    assert held_run(tmp_path) == ["config.yaml", "results.json", "logs"]
    found = versions()
    assert found["python"].count(".") == 2 and isinstance(found["torch"], str)
    assert set(found) >= {"cpt", "transformers", "lightning", "peft", "flash-attn", "git_commit", "git_dirty"}


def test_replacing_leaves_the_old_version_on_an_error_and_swaps_directories(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"rows": 1})
    with pytest.raises(RuntimeError), replacing(target) as staging:
        staging.write_text('{"rows": ')  # half written when the run stops
        raise RuntimeError("stopped")
    assert json.loads(target.read_text()) == {"rows": 1} and not staging_path(target).exists()

    folder = tmp_path / "1-colour"
    folder.mkdir()
    (folder / "old.bin").write_text("old")
    new = staging_path(folder)
    new.mkdir()
    (new / "new.bin").write_text("new")
    swap_in(new, folder)
    assert [p.name for p in folder.iterdir()] == ["new.bin"] and not new.exists()
    assert not previous_path(folder).exists()


def test_resume_takes_the_previous_checkpoint_when_a_save_stopped_between_its_renames(tmp_path, quick_cfg):
    cfg = load_config(None, [*quick_cfg, f"output_dir={tmp_path}", "resume=true"])
    save_config(cfg, tmp_path / "config.yaml")
    kept = previous_path(tmp_path / "checkpoints" / "last.ckpt")
    kept.parent.mkdir()
    torch.save({"state": 1}, kept)
    assert resume_checkpoint(cfg) == kept


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.precision=bogus", "bad value for 'trainer.precision': 'bogus'; choose one of 32-true"),
    ("optim.lr=-1", "bad value for 'optim.lr': must be a number > 0, got -1.0"),
    ("optim.warmup_ratio=2", "bad value for 'optim.warmup_ratio': must be a number in [0, 1], got 2.0"),
    ("seed=-1", "bad value for 'seed': must be a whole number in [0, 4294967295], got -1"),
    # a list, a mapping or a single value where the schema holds another of the three
    ("tasks={a: 1}", "bad value for 'tasks': give a list (e.g. tasks=[a,b]), not a mapping"),
    ("tasks=colour", "bad value for 'tasks': give a list (e.g. tasks=[a,b]), not a single value"),
    ("rft.reward.weights=[1,2]", "bad value for 'rft.reward.weights': give a mapping"),
    ("model=tiny", "bad value for 'model': give a mapping (e.g. model.<name>=...), not a single value"),
    ("local_tasks.mine=/data", "bad value for 'local_tasks.mine': give a mapping"),
    ("tasks=[colour", "cannot parse the overrides 'tasks=[colour'"),
    ("trainer.devices=0", "bad value for 'trainer.devices': give a number of devices >= 1, -1 (all), auto"),
    ("trainer.devices=[0,-1]", "bad value for 'trainer.devices'"),
])
def test_bad_values_are_messages_with_exit_code_2(override, message, capsys):
    assert main(["fit", override]) == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_and_a_corrupt_model_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["fit", f"output_dir={tmp_path / 'file'}"]) == 2
    assert "is a file; name a directory" in capsys.readouterr().err
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl",')
    assert main(["fit", f"model.name_or_path={model}", f"output_dir={tmp_path / 'run'}"]) == 1
    assert f"error: {model / 'config.json'} is not valid JSON" in capsys.readouterr().err
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert main(["fit", f"model.name_or_path={model}", f"output_dir={tmp_path / 'run'}"]) == 1
    assert f"error: {model / 'model.safetensors'} is not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # a config.json without model_type, and one without the rest of the checkpoint beside it, are named
    (model / "model.safetensors").unlink()
    (model / "config.json").write_text('{"architectures": ["Qwen2_5_VLForConditionalGeneration"]}')
    for command in (["fit", f"output_dir={tmp_path / 'run'}"], ["eval", f"out={tmp_path / 'eval'}"]):
        assert main([*command, f"model.name_or_path={model}"]) == 2
        assert f"error: {model / 'config.json'} names no model_type" in capsys.readouterr().err
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    assert main(["fit", f"model.name_or_path={model}", f"output_dir={tmp_path / 'run'}"]) == 2
    assert (f"error: {model} holds a config.json but lacks weights (*.safetensors), a tokenizer "
            "(tokenizer_config.json) and an image processor (preprocessor_config.json)") in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


class RefusesToBuild:  # a user callback whose constructor raises (loaded as tests.commands.test_run_dir:...)
    def __init__(self):
        raise RuntimeError("no GPU telemetry here")


def test_a_callback_that_cannot_be_built_and_an_unknown_flag_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "callbacks=[tests.commands.test_run_dir:RefusesToBuild]", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "failed while being built with {}: RuntimeError: no GPU telemetry here" in err and not out.exists()
    assert main(["fit", "--print-confg"]) == 2
    assert "unknown flag '--print-confg'" in capsys.readouterr().err
    assert main(["fit", str(tmp_path)]) == 2
    assert "is a directory; give a config file" in capsys.readouterr().err


def test_a_benchmark_whose_rows_lack_its_columns_is_named_before_the_run_directory(tmp_path, capsys):
    rows = tmp_path / "bench.jsonl"
    rows.write_text('{"question": "q", "answer": "A"}\n')
    out = tmp_path / "run"
    assert main(["fit", "eval.benchmarks.mine.format=mmmu", f"eval.benchmarks.mine.path={rows}",
                 "tasks=[colour]", f"output_dir={out}"]) == 1
    err = capsys.readouterr().err
    assert "row 0: row lacks id, options, question_type; MMMU rows have" in err and "Traceback" not in err
    assert not out.exists()


def test_a_copied_runs_config_never_resumes_or_replaces_the_run_it_was_copied_from(tmp_path, capsys):
    original, copy = tmp_path / "original", tmp_path / "copy"
    save_config(load_config(None, ["tasks=[colour]", f"output_dir={original}"]), original / "config.yaml")
    (original / "results.json").write_text('{"accuracy_matrix": [[1.0]]}')
    shutil.copytree(original, copy)
    for flag, action in (("overwrite=true", "overwrite=true would replace"), ("resume=true", "resume=true would")):
        assert main(["fit", str(copy / "config.yaml"), flag]) == 2
        err = capsys.readouterr().err
        assert f"is the config of the run in {str(copy)!r}, but its output_dir {str(original)!r}" in err
        assert action in err and (original / "results.json").read_text() == '{"accuracy_matrix": [[1.0]]}'
