import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cpt.cli import main
from cpt.config import (
    RECIPES,
    ROLLOUT_METHODS,
    RUN_TIME_ENV,
    config_with_recipe_from_args,
    differing_keys,
    field_docs,
    load_config,
    load_config_with_recipe,
    recipe_note,
)
from cpt.errors import ConfigError
from cpt.model.families import FAMILIES
from cpt.plugins import load_object
from cpt.rl.rewards import task_reward
from cpt.study import load_study, plan
from tests.helpers import REPO


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
        ("steps_per_task=0", "must be a whole number > 0, got 0"),
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
    scalar.write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base must name one config file"):
        load_config(scalar)
    scalar.write_text("just a string\n")  # which OmegaConf alone would read as a key without a value
    with pytest.raises(ConfigError, match="scalar.yaml' must hold a mapping of keys, not a str"):
        load_config(scalar)


@pytest.mark.slow
def test_cli_typo_exits_2_naming_the_key():
    proc = subprocess.run([sys.executable, "-m", "cpt", "fit", "stpes_per_task=3"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 2
    assert "stpes_per_task" in proc.stderr and "steps_per_task" in proc.stderr


def test_cli_help_lists_fields(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "steps_per_task" in out and "model.finetune" in out and "Training steps spent on each task" in out
    # Every continual-learning baseline's section, with its switch.
    for key in ("replay.fraction", "der.weight", "lwf.weight", "regularizer.kind", "olora.enabled",
                "moe_lora.enabled", "interpolation.weight", "model.trainable"):
        assert f"\n  {key} [" in out
    assert "none | ewc (weighted by a diagonal Fisher; method=sft) | mas" in out
    assert main(["nonsense"]) == 2


# --- experiment configs: each states only what differs from its base ---------------------------------------

EXPERIMENTS = REPO / "configs" / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_configs_state_only_what_differs(path):
    text = path.read_text()
    assert "base: " in text  # a top-level config or a sibling experiment
    cfg = load_config(path)
    base = load_config(EXPERIMENTS / text.split("base: ")[1].split()[0])
    assert cfg.name and cfg.name != base.name
    assert cfg.steps_per_task == base.steps_per_task and cfg.optim.lr == base.optim.lr  # the same budget


def test_base_configs_chain_and_cycles_fail(tmp_path):
    (tmp_path / "a.yaml").write_text("base: ../configs_b/b.yaml\nseed: 3\n")
    (tmp_path.parent / "configs_b").mkdir(exist_ok=True)
    (tmp_path.parent / "configs_b" / "b.yaml").write_text(f"base: {REPO}/configs/rft.yaml\nsteps_per_task: 7\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.method, cfg.steps_per_task, cfg.seed, cfg.rft.group_size) == ("rft", 7, 3, 8)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["method=sft", "rft.filter.rule=all_wrong"], "needs method=rft"),
    (["method=rft", "rft.kl.schedule=per_task", "rft.kl.per_task=[0.1]", "tasks=[count,colour]"], "one beta per stage"),
    (["method=rft", "rft.kl.per_task=[0.1,-1]", "rft.kl.schedule=per_task", "tasks=[count,colour]"],
     r"'rft.kl.per_task\[1\]': must be a number >= 0, got -1.0"),
    (["method=rft", "rft.filter.online=true", "rft.advantage=remax"], "remax"),
    (["method=rft", "rft.filter.rule=range", "rft.filter.low=0.8", "rft.filter.high=0.2"],
     "low must not exceed high, got 0.8, 0.2"),
    (["replay.fraction=1.5"], "replay.fraction"),
    (["replay.fraction=0.01"], "replay.fraction=0.01 of a batch of 16 is no row; raise replay.fraction"),
    (["method=rft", "regularizer.kind=ewc"], "prompt batches do not carry; use regularizer.kind=mas or l2"),
    (["schedule=interleaved"], "sequential, multitask"),
])
def test_experiment_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").rglob("*.yaml") if "studies" not in p.parts),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.method in ("sft", *ROLLOUT_METHODS) and cfg.tasks
    if cfg.method in ROLLOUT_METHODS:  # the reward function a config names can be imported
        assert load_object(cfg.rft.reward.function, "reward function") is task_reward


# --- method=rft brings the RFT recipe wherever the user leaves its keys unset --------------------------------

RFT_RECIPE = {"optim.lr": 5e-5, "data.batch_size": 8, "rft.group_size": 8, "rft.max_new_tokens": 16}


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_file_plans_its_runs(path):
    """Each shipped study file loads, and every run it plans resolves to a valid config."""
    study = load_study(path)
    runs = plan(study)
    assert len(runs) == sum(len(e.seeds) for e in study.experiments) >= 4 and len(study.seeds) >= 3
    assert all(set(study.seeds) <= set(e.seeds) for e in study.experiments)  # every experiment on every seed
    assert all(run.config["seed"] == run.seed and run.config["output_dir"] == str(run.directory) for run in runs)


def recipe_values(cfg) -> tuple:
    return cfg.optim.lr, cfg.data.batch_size, cfg.rft.group_size, cfg.rft.max_new_tokens


def test_method_rft_on_the_default_config_takes_the_rft_recipe():
    cfg, applied = config_with_recipe_from_args(["method=rft"])
    assert RECIPES["rft"] == RFT_RECIPE and applied == RFT_RECIPE
    assert recipe_values(cfg) == (5e-5, 8, 8, 16)
    assert (cfg.optim.warmup_ratio, cfg.rft.top_p, cfg.rft.kl.coef, cfg.steps_per_task) == (0.1, 0.99, 0.01, 100)
    assert recipe_note(cfg.method, applied) == ("method=rft: RFT recipe defaults optim.lr=5e-05 data.batch_size=8 "
                                                "rft.group_size=8 rft.max_new_tokens=16 (set any of them to override)")


def test_method_rft_without_configs_dir_takes_the_recipe(monkeypatch, tmp_path):
    """A non-editable install has no configs/: the recipe comes from the package itself."""
    monkeypatch.setattr("cpt.config.DEFAULT_CONFIG", tmp_path / "missing.yaml")
    cfg, applied = config_with_recipe_from_args(["method=rft"])
    assert recipe_values(cfg) == (5e-5, 8, 8, 16) and applied == RFT_RECIPE
    assert load_config_with_recipe(None, ["method=rft"])[1] == RFT_RECIPE


def test_override_beats_the_recipe():
    cfg, applied = config_with_recipe_from_args(["method=rft", "optim.lr=1e-4", "rft.max_new_tokens=24"])
    assert recipe_values(cfg) == (1e-4, 8, 8, 24)
    assert applied == {"data.batch_size": 8, "rft.group_size": 8}
    assert recipe_note("rft", applied) == ("method=rft: RFT recipe defaults data.batch_size=8 rft.group_size=8 "
                                           "(set any of them to override)")


def test_user_yaml_with_method_rft_keeps_its_values_and_gets_the_rest(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("method: rft\noptim:\n  lr: 2.0e-5\nrft:\n  group_size: 4\n")
    cfg, applied = config_with_recipe_from_args([str(path)])
    assert recipe_values(cfg) == (2e-5, 8, 4, 16)
    assert applied == {"data.batch_size": 8, "rft.max_new_tokens": 16}
    cfg, applied = config_with_recipe_from_args([str(path), "data.batch_size=2"])
    assert recipe_values(cfg) == (2e-5, 2, 4, 16) and applied == {"rft.max_new_tokens": 16}


def test_default_yaml_values_are_defaults_not_settings(tmp_path):
    """configs/default.yaml's SFT lr and batch give way to the recipe, named directly or as a base."""
    assert load_config_with_recipe(REPO / "configs" / "default.yaml", ["method=rft"])[1] == RFT_RECIPE
    path = tmp_path / "mine.yaml"
    path.write_text(f"base: {REPO}/configs/default.yaml\nmethod: rft\nsteps_per_task: 7\n")
    cfg, applied = load_config_with_recipe(path)
    assert recipe_values(cfg) == (5e-5, 8, 8, 16) and applied == RFT_RECIPE and cfg.steps_per_task == 7


def test_method_sft_is_unchanged():
    for args in ([], ["method=sft"]):
        cfg, applied = config_with_recipe_from_args(args)
        assert applied == {} and recipe_note(cfg.method, applied) == ""
        assert (cfg.method, *recipe_values(cfg)) == ("sft", 5e-4, 8, 8, 32)
    assert load_config_with_recipe(None, [])[1] == {}


def test_rft_yaml_is_the_recipe(monkeypatch):
    """configs/rft.yaml states every recipe value itself (so it takes none), and `method=rft` on the default config
    is the same run: equal resolved configs, but for the reward weights rft.yaml spells out (null = the same)."""
    monkeypatch.setenv(RUN_TIME_ENV, "2025-01-01T12:00:00")
    text = OmegaConf.load(REPO / "configs" / "rft.yaml")
    assert {key: OmegaConf.select(text, key) for key in RECIPES["rft"]} == RECIPES["rft"]
    rft, applied = load_config_with_recipe(REPO / "configs" / "rft.yaml")
    assert applied == {}
    default, applied = config_with_recipe_from_args(["method=rft", "rft.reward.weights={accuracy: 0.9, format: 0.1}"])
    assert applied == RFT_RECIPE
    assert OmegaConf.to_container(default) == OmegaConf.to_container(rft)


def test_fit_says_which_recipe_defaults_it_used(monkeypatch, capsys):
    from cpt.commands import fit  # the training stack: imported only here

    monkeypatch.setattr(fit, "run", lambda cfg: {})
    assert fit.main(["method=rft", "optim.lr=1e-4"]) == 0
    assert capsys.readouterr().out == ("method=rft: RFT recipe defaults data.batch_size=8 rft.group_size=8 "
                                       "rft.max_new_tokens=16 (set any of them to override)\n")
    assert fit.main(["method=sft"]) == 0 and fit.main([str(REPO / "configs" / "rft.yaml")]) == 0
    assert capsys.readouterr().out == ""
    assert main(["fit", "--help"]) == 0
    assert ("method=rft brings the RFT recipe: optim.lr=5e-05 data.batch_size=8 rft.group_size=8 "
            "rft.max_new_tokens=16\n") in capsys.readouterr().out


@pytest.mark.slow
def test_an_installed_package_carries_the_configs(tmp_path):
    """A non-editable install finds configs/rft.yaml by that name from any directory, and its default config; it
    carries the study files and the toy foundation model's weights, byte for byte."""
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                              "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "cpt" / "configs" / "experiments" / "paper" / "sft_lora.yaml").is_file()
    assert (target / "cpt" / "configs" / "studies" / "toy.yaml").is_file()
    shipped_toys = [toy.shipped for family in FAMILIES for toy in family.toys.values() if toy.shipped]
    assert len(shipped_toys) >= len(FAMILIES)  # each family's tiny one at least
    for folder in shipped_toys:
        for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.json"):
            shipped = REPO / "cpt" / "model" / folder / name
            assert (target / "cpt" / "model" / folder / name).read_bytes() == shipped.read_bytes()
    probe = ("from cpt.config import DEFAULT_CONFIG, config_path, load_config; "
             "print(DEFAULT_CONFIG.is_file(), config_path('configs/rft.yaml'), "
             "load_config(config_path('configs/rft.yaml')).method)")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", str(target / "cpt" / "configs" / "rft.yaml"), "rft"]


def test_print_config_prints_the_resolved_config_and_exits(tmp_path, capsys):
    assert main(["fit", "method=rft", f"output_dir={tmp_path / 'run'}", "seed=7", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# method=rft: RFT recipe defaults optim.lr=5e-05")
    printed = OmegaConf.create(out)
    assert printed.seed == 7 and printed.optim.lr == 5e-5 and printed.output_dir == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_key_added_after_a_run_was_saved_counts_as_its_default():
    """A run saved before `lwf` existed trained as lwf.weight=0 does: no difference; at another value, one."""
    current = load_config(None, [])
    saved = OmegaConf.to_container(current)
    del saved["lwf"]
    assert differing_keys(saved, current) == []
    assert differing_keys(saved, load_config(None, ["lwf.weight=1"])) == ["lwf.weight"]
    assert differing_keys(current, load_config(None, ["optim.lr=1e-3"])) == ["optim.lr"]


def test_trainer_devices_in_every_form_lightning_takes():
    for value in ("auto", "2", "-1", "0,1", "[0,1]", "'3'"):
        load_config(None, [f"trainer.devices={value}"])
    for value in ("0", "-3", "[]", "[0,-1]", "gpu"):
        with pytest.raises(ConfigError, match="bad value for 'trainer.devices'"):
            load_config(None, [f"trainer.devices={value}"])
