"""The toy foundation model: the default recipe loads the weights shipped with the package (the same base on
every machine); any other recipe, or use_shipped=false, is pre-trained here and cached."""

import json
import math
import re

import pytest
from safetensors import safe_open

from cpt import cli
from cpt.config import load_config
from cpt.model.families import FAMILIES, QWEN2_5_VL, QWEN3_VL
from cpt.model.foundation import SHIPPED_ROOT, recipe, shipped_foundation
from cpt.model.presets import resolve_checkpoint
from tests.helpers import REPO


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_default_recipe_loads_the_shipped_weights(family):
    cfg = load_config(None, [f"model.name_or_path={family.tiny_preset}"])
    shipped = SHIPPED_ROOT / family.shipped_foundation
    # A changed recipe (foundation.*, RECIPE_VERSION, the image size) needs its weights rebuilt and shipped:
    # python -m cpt fit model.name_or_path=<tiny preset> foundation.use_shipped=false, then copy the cached
    # directory to cpt/model/<the family's shipped_foundation>.
    assert json.loads((shipped / "recipe.json").read_text()) == recipe(cfg.foundation, cfg.data.image_size, family)
    assert resolve_checkpoint(cfg) == shipped
    assert resolve_checkpoint(load_config("configs/rft.yaml", [f"model.name_or_path={family.tiny_preset}"])) == shipped
    assert json.loads((shipped / "config.json").read_text())["model_type"] == family.model_type
    with safe_open(shipped / "model.safetensors", "pt") as weights:
        values = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    assert 1_000_000 < values < 2_000_000  # the 1.3M to 1.7M-parameter tiny models, in float32 (5 to 7 MB)


def test_other_recipes_and_use_shipped_false_are_pre_trained():
    for overrides in (["foundation.use_shipped=false"], ["foundation.steps=12"], ["foundation.seed=1"],
                      ["data.image_size=32"]):
        cfg = load_config(None, overrides)
        assert shipped_foundation(cfg.foundation, cfg.data.image_size, QWEN2_5_VL) is None, overrides
    # Each family's recipe is its own: Qwen2.5-VL's weights never stand in for Qwen3-VL's.
    cfg = load_config(None, [])
    assert recipe(cfg.foundation, 64, QWEN3_VL) != recipe(cfg.foundation, 64, QWEN2_5_VL)


@pytest.mark.slow
def test_readmes_base_row_is_what_the_shipped_model_scores(tmp_path, capsys):
    """The base row README shows for `python -m cpt fit` (seed 0) is the shipped model's evaluation here."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## What the default run shows"):]
    table = section[section.index("```") + 3:]
    header, base = (next(line for line in table.splitlines() if line.startswith(start)) for start in ("after", "base"))
    assert cli.main(["eval", f"out={tmp_path / 'eval'}", "trainer.enable_progress_bar=false"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    row = [*results["accuracy_matrix"][0], results["general"][0]]
    assert header.split()[1:9] == [*results["tasks"], "general"]
    assert base.split()[1:9] == [f"{value:.1f}" for value in row]


@pytest.mark.slow
def test_readmes_qwen3_vl_base_row_is_what_its_shipped_model_scores(tmp_path):
    """The base row docs/study.md states for the tiny Qwen3-VL is its shipped model's evaluation here."""
    page = " ".join((REPO / "docs" / "study.md").read_text().split())
    stated = re.search(r"its base row is (.*?) \(mean [\d.]+\) and general ([\d.]+)", page)
    assert cli.main(["eval", "model.name_or_path=tiny-qwen3-vl", f"out={tmp_path / 'eval'}",
                     "trainer.enable_progress_bar=false"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    row = ", ".join(f"{task} {value:.1f}" for task, value in zip(results["tasks"], results["accuracy_matrix"][0]))
    assert stated.group(1) == row and stated.group(2) == f"{results['general'][0]:.1f}"
