"""The toy foundation model: the default recipe loads the weights shipped with the package (the same base on
every machine); any other recipe, or use_shipped=false, is pre-trained here and cached."""

import json
import math
import re

import pytest
import torch
from safetensors import safe_open

from cpt import cli
from cpt.config import load_config
from cpt.model.families import FAMILIES, QWEN2_5_VL, QWEN3_VL
from cpt.model.foundation import SHIPPED_ROOT, recipe, shipped_foundation
from cpt.model.presets import resolve_checkpoint
from cpt.model.tiny import build_tiny_processor
from tests.helpers import REPO

SHIPPED = [(family, preset) for family in FAMILIES for preset, toy in family.toys.items()
           if toy.shipped and (SHIPPED_ROOT / toy.shipped / "recipe.json").is_file()]


@pytest.mark.parametrize(("family", "preset"), SHIPPED, ids=[preset for _, preset in SHIPPED])
def test_the_default_recipe_loads_the_shipped_weights(family, preset):
    cfg = load_config(None, [f"model.name_or_path={preset}"])
    shipped = SHIPPED_ROOT / family.toys[preset].shipped
    # A changed recipe (foundation.*, RECIPE_VERSION, the image size) needs its weights rebuilt and shipped:
    # python -m cpt fit model.name_or_path=<the toy> foundation.use_shipped=false, then copy the cached
    # directory to cpt/model/<the toy's shipped directory>.
    assert json.loads((shipped / "recipe.json").read_text()) == recipe(cfg.foundation, cfg.data.image_size, family,
                                                                        preset)
    assert resolve_checkpoint(cfg) == shipped
    assert resolve_checkpoint(load_config("configs/rft.yaml", [f"model.name_or_path={preset}"])) == shipped
    assert json.loads((shipped / "config.json").read_text())["model_type"] == family.model_type
    with safe_open(shipped / "model.safetensors", "pt") as weights:
        values = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    with torch.device("meta"):
        model = family.model_class(family.toy_config(build_tiny_processor(0, 64, family).tokenizer, preset))
    assert values == sum(p.numel() for p in model.parameters())  # the toy's architecture, every weight stored


def test_the_default_toys_are_shipped_and_the_small_one_is_five_times_larger():
    assert {preset for _, preset in SHIPPED} >= {"tiny", "tiny-qwen3-vl"}
    for family in FAMILIES:
        tokenizer = build_tiny_processor(0, 64, family).tokenizer
        sizes = {}
        for preset in family.toys:
            with torch.device("meta"):
                model = family.model_class(family.toy_config(tokenizer, preset))
            sizes[preset] = sum(p.numel() for p in model.parameters())
        tiny, small = sizes.values()
        assert 4 < small / tiny < 8, sizes  # 5.5 and 5.0


def test_a_toy_scaled_by_hand():
    small = QWEN2_5_VL.toys["small"].shape
    assert (small.text["hidden_size"], small.text["intermediate_size"], small.text["num_hidden_layers"],
            small.text["num_attention_heads"], small.text["num_key_value_heads"]) == (256, 768, 6, 8, 4)
    assert small.text["rope_parameters"]["mrope_section"] == [4, 6, 6]  # heads of 32 still: the sections fit
    assert (small.vision["depth"], small.vision["hidden_size"], small.vision["num_heads"],
            small.vision["out_hidden_size"], small.vision["fullatt_block_indexes"]) == (4, 192, 8, 256, [1, 3])
    assert QWEN3_VL.toys["small-qwen3-vl"].shape.vision["deepstack_visual_indexes"] == [1, 3]
    assert QWEN2_5_VL.tiny_preset == "tiny" and QWEN3_VL.tiny_preset == "tiny-qwen3-vl"
    # the architecture is part of the recipe: a toy's cached weights never stand in for another's
    cfg = load_config(None, [])
    assert recipe(cfg.foundation, 64, QWEN2_5_VL, "small") != recipe(cfg.foundation, 64, QWEN2_5_VL)


def test_a_small_toy_without_weights_sizes_as_its_architecture(tmp_path):
    cfg = load_config(None, ["model.name_or_path=small-qwen3-vl", f"foundation.cache_dir={tmp_path}"])
    directory = resolve_checkpoint(cfg, build_weights=False)
    config = json.loads((directory / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 256 and config["vision_config"]["depth"] == 4


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
@pytest.mark.parametrize(("preset", "words"), [("tiny-qwen3-vl", "than the Qwen2.5-VL one: its base row is"),
                                               ("tiny-qwen3.5", "The tiny Qwen3.5's base row is")])
def test_the_other_families_base_rows_are_what_their_shipped_models_score(preset, words, tmp_path):
    """The base row docs/study.md states for the tiny Qwen3-VL and Qwen3.5 is the shipped model's evaluation here."""
    page = " ".join((REPO / "docs" / "study.md").read_text().split())
    stated = re.search(re.escape(words) + r" (.*?) \(mean [\d.]+\) and general (\d+\.\d)", page)
    assert cli.main(["eval", f"model.name_or_path={preset}", f"out={tmp_path / 'eval'}",
                     "trainer.enable_progress_bar=false"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    row = ", ".join(f"{task} {value:.1f}" for task, value in zip(results["tasks"], results["accuracy_matrix"][0]))
    assert stated.group(1) == row and stated.group(2) == f"{results['general'][0]:.1f}"


@pytest.mark.slow
def test_the_small_toys_base_row_in_the_docs_is_what_its_shipped_model_scores(tmp_path):
    """The base row docs/study.md states for the second size is its shipped model's evaluation here."""
    page = " ".join((REPO / "docs" / "study.md").read_text().split())
    stated = re.search(r"the small base scores lower than the tiny one on one evaluation each: its base row is (.*?) "
                       r"\(mean [\d.]+\) and general ([\d.]+)", page)
    assert cli.main(["eval", "model.name_or_path=small", f"out={tmp_path / 'eval'}",
                     "trainer.enable_progress_bar=false"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    row = ", ".join(f"{task} {value:.1f}" for task, value in zip(results["tasks"], results["accuracy_matrix"][0]))
    assert stated.group(1) == row and stated.group(2) == f"{results['general'][0]:.1f}"
