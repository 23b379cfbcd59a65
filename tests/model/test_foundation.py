"""The toy foundation model: the default recipe loads the weights shipped with the package (the same base on
every machine); any other recipe, or use_shipped=false, is pre-trained here and cached."""

import json
import math

import pytest
from safetensors import safe_open

from cpt import cli
from cpt.config import load_config
from cpt.model.foundation import SHIPPED, recipe, shipped_foundation
from cpt.model.presets import resolve_checkpoint
from tests.helpers import REPO


def test_the_default_recipe_loads_the_shipped_weights():
    cfg = load_config(None, [])
    # A changed recipe (foundation.*, RECIPE_VERSION, the image size) needs its weights rebuilt and shipped:
    # python -m cpt fit foundation.use_shipped=false, then copy the cached directory to cpt/model/tiny_foundation.
    assert json.loads((SHIPPED / "recipe.json").read_text()) == recipe(cfg.foundation, cfg.data.image_size)
    assert resolve_checkpoint(cfg) == SHIPPED
    assert resolve_checkpoint(load_config("configs/rft.yaml", [])) == SHIPPED
    with safe_open(SHIPPED / "model.safetensors", "pt") as weights:
        values = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    assert 1_000_000 < values < 2_000_000  # the 1.3M-parameter tiny Qwen2.5-VL, in float32 (5 MB)


def test_other_recipes_and_use_shipped_false_are_pre_trained():
    for overrides in (["foundation.use_shipped=false"], ["foundation.steps=12"], ["foundation.seed=1"],
                      ["data.image_size=32"]):
        cfg = load_config(None, overrides)
        assert shipped_foundation(cfg.foundation, cfg.data.image_size) is None, overrides


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
