"""`bench gpu` run as a user runs it on a machine without a GPU: the tiny shapes of every family, LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from cpt.bench.gpu import CPU_SHAPES
from cpt.cli import main
from cpt.model.families import FAMILIES


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the command measures the published shapes")
def test_bench_gpu_on_the_cpu_measures_every_family_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "figures" / "bench-gpu.json"
    main(["bench", "gpu", "--rounds", "1", "--new-tokens", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())

    assert written["device"].startswith("CPU") and written["settings"]["shapes"] == list(CPU_SHAPES)
    assert set(CPU_SHAPES) == {family.tiny_preset for family in FAMILIES}
    assert set(written["versions"]) == {"torch", "transformers", "peft", "lightning", "bitsandbytes", "flash-attn"}
    rows = written["rows"]
    assert [(r["shape"], r["step"]) for r in rows] == [
        (shape, step) for shape in CPU_SHAPES for step in ("RFT shared prompt", "RFT repeated prompt", "SFT")]
    for row in rows:
        assert (row["finetune"], row["attention"]) == ("lora", "sdpa")
        assert len(row["step_s"]) == 1 and row["step_s_median"] > 0 and row["peak_gib"] > 0
        if row["step"] == "SFT":
            assert row["rollout_tokens"] == 0 and row["tokens_per_s"] is None
        else:
            # 2 prompts x G = 2 rollouts, each forced to its 5 new tokens (no early end-of-turn).
            assert row["rollout_tokens"] == 2 * 2 * 5
            assert row["tokens_per_s"] == pytest.approx(20 / row["rollout_s"][0])
        # The printed table has the row, with the written median.
        assert any(line.startswith(row["shape"].ljust(16)) and row["step"] in line
                   and f"{row['step_s_median']:.2f}" in line for line in printed.splitlines())
    assert "5 new tokens forced" in printed
