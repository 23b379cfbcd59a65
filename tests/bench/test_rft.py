"""`bench rft`'s cases and sides, without timing anything: the configs, and the prompts each case measures."""

from __future__ import annotations

import pytest

from cpt.bench.cli import RFT_CASES, build_parser
from cpt.bench.rft import CASES, SIDES, case_config, prompt_examples, prompt_length
from cpt.config import RUN_TIME_ENV
from cpt.model.families import FAMILIES


@pytest.fixture(scope="module")
def overrides(quick_cfg):
    """The quick foundation model's keys (the one `foundation_dir` holds), nothing else."""
    return [key for key in quick_cfg if key.startswith("foundation.")]


def test_the_command_offers_every_case():
    assert RFT_CASES == tuple(CASES)
    args, rest = build_parser().parse_known_args(["rft", "--case", "long", "--rounds", "2", "rft.group_size=4"])
    assert (args.case, args.rounds, rest) == ("long", 2, ["rft.group_size=4"])


def test_sides_differ_in_the_shared_prefix_switch_only(overrides, foundation_dir, monkeypatch):
    monkeypatch.setenv(RUN_TIME_ENV, "2025-01-01T12:00:00")  # both default run directories name the same second
    shared, repeated = (case_config("long", [*overrides, switch], foundation_dir, steps=3, warmup=2)
                        for switch in SIDES.values())
    assert shared.rft.shared_prefix is True and repeated.rft.shared_prefix is False
    repeated.rft.shared_prefix = True
    assert shared == repeated
    # steps + warmup + 1 steps (the first is never timed), each on its own prompts; the checkpoint pre-trained on
    # the default images, not a new one per image size.
    assert (shared.steps_per_task, shared.data.train_size) == (6, 6 * shared.data.batch_size)
    assert shared.model.name_or_path == str(foundation_dir)
    assert (shared.data.image_size, shared.model.max_pixels) == (224, 224 * 224)


@pytest.mark.parametrize("preset", [family.tiny_preset for family in FAMILIES])
def test_every_familys_toy_keeps_its_checkpoint_in_the_long_case(preset, tmp_path):
    cfg = case_config("long", [f"model.name_or_path={preset}"], tmp_path, steps=1, warmup=0)
    assert cfg.model.name_or_path == str(tmp_path)  # not a toy pre-trained anew on 224-pixel images


def test_the_long_case_prompt_is_several_times_the_completion(overrides, foundation_dir):
    lengths = {}
    for case in CASES:
        cfg = case_config(case, overrides, foundation_dir, steps=1, warmup=0)
        lengths[case] = prompt_length(cfg, foundation_dir, prompt_examples(cfg)[:4], with_trl=False)
    longest_completion = cfg.rft.max_new_tokens
    long, current = lengths["long"], lengths["current"]
    assert long.image_size == (224, 224)
    assert long.image_tokens == (224 // 16) ** 2  # 8-pixel patches merged 2 x 2: the processor did not scale down
    assert long.tokens >= 10 * longest_completion
    assert current.image_tokens == (64 // 16) ** 2 and current.tokens < long.tokens / 4


@pytest.mark.parametrize("case", list(CASES))
def test_trl_encodes_the_same_prompt_tokens_as_we_do(case, overrides, foundation_dir):
    from cpt.bench.trl_processor import trl_processor, trl_prompt
    from cpt.data.prompts import render_prompt
    from cpt.model.processor import VisionTextProcessor

    cfg = case_config(case, overrides, foundation_dir, steps=1, warmup=0)
    example = prompt_examples(cfg)[0]
    ours = VisionTextProcessor.from_pretrained(foundation_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    theirs = trl_processor(foundation_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    text = theirs.apply_chat_template(trl_prompt(cfg.data.template, example), add_generation_prompt=True,
                                      tokenize=False)
    encoded = theirs(text=[text], images=[example.images], return_tensors="pt")
    mine = ours.encode_prompt(render_prompt(cfg.data.template, example), example.images)
    assert encoded["input_ids"][0].tolist() == mine.input_ids
    assert encoded["image_grid_thw"].tolist() == mine.image_grid_thw.tolist()
