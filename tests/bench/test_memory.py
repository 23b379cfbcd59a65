"""`bench memory`: the update it measures, the measuring process, and the extrapolation (no timing)."""

from __future__ import annotations

import argparse

import pytest
import torch

from cpt.bench.memory import (
    GIB,
    Spec,
    add_options,
    extrapolate,
    logits_bytes,
    measure_in_subprocess,
    random_model,
    rollout_batch,
    table_row,
    update,
)


def test_extrapolation_is_the_line_through_the_two_largest_measurements():
    assert extrapolate([(100, 250), (200, 450)], 1000) == pytest.approx(2050)  # 50 + 2 per element
    assert extrapolate([(300, 700), (10, 0), (200, 500)], 1000) == pytest.approx(2100)  # through the last two
    assert extrapolate([(100, 300)], 1000) == pytest.approx(3000)  # one point: proportional


def test_logits_size_and_table_row():
    assert logits_bytes(64, 256, 152064) == 64 * 256 * 152064 * 4  # 9.28 GiB: docs/rft.md's "10 GB"
    row = {"label": "full (chunk=None)", "rollouts": 64, "tokens": 256, "vocab": 152064,
           "peak_growth_bytes": 37.5 * GIB, "peak_bytes": None, "figure": "EXTRAPOLATED"}
    assert table_row(row).split() == ["full", "(chunk=None)", "64", "256", "9.28", "GiB", "37.50", "GiB", "-",
                                      "EXTRAPOLATED"]


def test_options_default_to_a_size_that_fits_and_the_real_vocabulary():
    parser = argparse.ArgumentParser()
    add_options(parser)
    args = parser.parse_args([])
    assert args.vocab == 152064 and args.tokens == 256 and args.target == 64
    assert max(args.rollouts) * 256 * 152064 * 4 < 1.5 * GIB  # the full path at a size that fits
    assert 64 in args.chunked_rollouts and parser.parse_args(["--rollouts", "3,5"]).rollouts == [3, 5]
    for flag, value in (("--rollouts", "4,0"), ("--chunked-rollouts", "x"), ("--hidden", "48"), ("--tokens", "0")):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, value])


def test_the_update_gives_gradients_to_the_head_at_a_tiny_vocabulary():
    spec = Spec("full", rollouts=2, tokens=5, prompt_tokens=3, vocab=512, hidden=64, layers=1)
    model = random_model(spec)
    assert model.config.text_config.vocab_size == 512
    prompts, ids, mask = rollout_batch(spec)
    assert ids.shape == (2, 5) and int(ids.max()) < 512 - 4 and mask.all()  # clear of the vision markers
    loss = update(model, prompts, ids, mask, chunk=None)
    assert loss == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.2)  # random weights: near uniform
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_a_fresh_process_measures_the_update_s_peak_growth():
    # Logits large enough (256 MiB) to dwarf what any first backward pass allocates besides them.
    common = dict(rollouts=4, tokens=256, prompt_tokens=8, vocab=65536, hidden=64, layers=1, chunk=64)
    full = measure_in_subprocess(Spec("full", **common), timeout=300)
    one_tensor = logits_bytes(4, 256, 65536)
    assert full["peak_growth_bytes"] >= one_tensor  # it holds the logits at least once
    assert full["peak_bytes"] >= full["peak_growth_bytes"] > 0 and not full["chunk_used"]
    chunked = measure_in_subprocess(Spec("chunked", **common), timeout=300)
    assert chunked["chunk_used"]
    assert chunked["peak_growth_bytes"] < full["peak_growth_bytes"] / 2
    assert chunked["loss"] == pytest.approx(full["loss"], rel=1e-5)  # the same update, by another path


def test_conclusion_labels_each_figure_measured_or_extrapolated():
    from cpt.bench.memory import conclusion

    vocab, tokens, chunk = 1000, 10, 100
    rows = [
        {"label": "full (chunk=None)", "rollouts": 2, "peak_growth_bytes": 3 * logits_bytes(2, tokens, vocab),
         "figure": "measured"},
        {"label": "full (chunk=None)", "rollouts": 64, "peak_growth_bytes": 3 * logits_bytes(64, tokens, vocab),
         "figure": "EXTRAPOLATED from 2 rollouts (linear)"},
        {"label": "chunked (chunk=100)", "rollouts": 64, "peak_growth_bytes": 5 * chunk * vocab * 4,
         "figure": "measured", "chunk_used": True},
    ]
    lines = conclusion(rows, 64, tokens, vocab, chunk)
    assert "(extrapolated)" in lines[0] and "chunked" in lines[0] and f"{3 * 64 * 10 / (5 * 100):.1f}x less" in lines[0]
    assert "about 3.0 logits-sized tensors" in lines[1] and "measured at 2 rollouts" in lines[1]
    assert "64 rollouts: 5.0" in lines[2]
