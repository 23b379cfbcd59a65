import subprocess
import sys
from pathlib import Path

import pytest

from cpt.cli import main
from cpt.config import ConfigError, field_docs, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(REPO / "configs" / "default.yaml", [f"output_dir={tmp_path}", "steps_per_task=7", "seed=3",
                                                           "model.lora.r=4", "tasks=[colour,count]"])
    assert (cfg.steps_per_task, cfg.seed, cfg.model.lora.r) == (7, 3, 4)
    assert list(cfg.tasks) == ["colour", "count"]
    assert cfg.output_dir == str(tmp_path)


def test_contract_keys_exist():
    keys = {key for key, _, _ in field_docs()}
    for key in ["method", "output_dir", "seed", "model.name_or_path", "model.finetune", "tasks", "steps_per_task",
                "trainer.devices", "trainer.accelerator", "trainer.precision", "trainer.strategy"]:
        assert key in keys


def test_yaml_file_merges_under_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps_per_task: 5\nmodel:\n  finetune: full\n")
    cfg = load_config(path, ["steps_per_task=6"])
    assert cfg.steps_per_task == 6 and cfg.model.finetune == "full"


@pytest.mark.parametrize(
    "override, message",
    [
        ("stpes_per_task=3", "unknown key 'stpes_per_task'; did you mean: steps_per_task"),
        ("model.finetun=lora", "unknown key 'model.finetun'; did you mean: model.finetune"),
        ("steps_per_task=many", "bad value for 'steps_per_task'"),
        ("model.finetune=lorra", "bad value for 'model.finetune': 'lorra'; choose one of lora, qlora, full"),
        ("steps_per_task=0", "must be positive"),
        ("tasks=[colr]", "unknown task 'colr' in `tasks`; did you mean: colour"),
        ("seed", "is not key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps_per_task: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="scalar.yaml' is not valid YAML"):
        load_config(scalar)


def test_cli_typo_exits_2_naming_the_key():
    proc = subprocess.run([sys.executable, "-m", "cpt", "fit", "stpes_per_task=3"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 2
    assert "stpes_per_task" in proc.stderr and "steps_per_task" in proc.stderr


def test_cli_help_lists_fields(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "steps_per_task" in out and "model.finetune" in out and "Training steps spent on each task" in out
    assert main(["nonsense"]) == 2
