"""MoELoRA: one layer's output worked by hand (router, experts' blocks, scale), one expert equal to peft's own LoRA,
and a run whose stage directory is evaluated back to the run's row and refused for export with a reason."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from cpt.commands.evaluate import evaluate_checkpoint
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.errors import ConfigError
from cpt.model.backbone import load_model
from cpt.model.moe_lora import moe_lora_config
from tests.helpers import REPO, OneLinear


def adapted(experts: int | None, r: int = 2, alpha: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], init_lora_weights=False)  # B random too
    if experts is not None:
        config = moe_lora_config(config, experts)
    torch.manual_seed(seed)
    return get_peft_model(OneLinear(), config)


def test_one_layer_by_hand():
    """W0 = I; rank 2 in two experts: A = [[1, 0], [0, 1]] (expert 1 reads x1, expert 2 x2), B = [[1, 0], [0, 3]];
    router rows [ln 3, 0] and [0, 0]: at x = [1, 1] the gate is softmax([ln 3, 0]) = [3/4, 1/4]. Scale 4 / 2 = 2:
    h = x + 2 * (3/4 * [1, 0] * 1 + 1/4 * [0, 3] * 1) = [1 + 1.5, 1 + 1.5]."""
    model = adapted(experts=2)
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.eye(2))
        layer.lora_A["default"].weight.copy_(torch.eye(2))
        layer.lora_B["default"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        layer.lora_router["default"].weight.copy_(torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(model(torch.tensor([[1.0, 1.0]])), torch.tensor([[2.5, 2.5]]))
    # The router and both matrices train; the base does not.
    assert {n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad} == {
        "lora_A", "lora_B", "lora_router"}
    with model.disable_adapter():
        torch.testing.assert_close(model(torch.tensor([[1.0, 1.0]])), torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()


def test_one_expert_is_peft_lora():
    x = torch.randn(3, 2)
    lora, moe = adapted(experts=None), adapted(experts=1)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            dict(moe.named_parameters())[name].copy_(param)
    torch.testing.assert_close(moe(x), lora(x), rtol=0, atol=0)


def test_bad_settings():
    with pytest.raises(ValueError, match="rank 3 is not a multiple of 2 experts"):
        adapted(experts=2, r=3)
    with pytest.raises(ConfigError, match="needs model.finetune=lora, not full"):
        load_config(None, ["moe_lora.enabled=true"])
    with pytest.raises(ConfigError, match="model.lora.r=16 is not a multiple of moe_lora.experts=3"):
        load_config(None, ["moe_lora.enabled=true", "model.finetune=lora", "moe_lora.experts=3"])
    with pytest.raises(ConfigError, match="enable one of them"):
        load_config(None, ["moe_lora.enabled=true", "model.finetune=lora", "olora.enabled=true"])


@pytest.mark.slow
def test_a_run_evaluates_back_and_refuses_export(tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(REPO / "configs" / "experiments" / "sft_moe_lora.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=3",
                       "eval.general=false", "data.eval_size=4", "data.batch_size=2"])
    results = run(cfg)
    stage = tmp_path / "checkpoints" / "2-count"
    assert (stage / "moe_lora.json").read_text() == '{"experts": 2}\n'
    row = evaluate_checkpoint(load_config(tmp_path / "config.yaml", [f"model.name_or_path={stage}"]), progress=False)
    assert row["accuracy_matrix"][0] == results["accuracy_matrix"][-1]
    with pytest.raises(ValueError, match="MoELoRA stage: its router weighs the experts per token"):
        load_model(stage, torch.float32, "sdpa")
