"""`cpt inspect`: the published 7B shape sized on the meta device, without memory or a download."""

from cpt.cli import main
from cpt.commands.inspect import describe_backbone
from cpt.config import load_config


def test_qwen25_vl_7b_published_shape_on_meta(tmp_path):
    cfg = load_config(None, ["model.name_or_path=qwen2.5-vl-7b", f"foundation.cache_dir={tmp_path}",
                             "model.dtype=bfloat16", "model.finetune=lora"])
    d = describe_backbone(cfg)
    assert 8.2e9 < d["total_params"] < 8.4e9  # Qwen2.5-VL-7B-Instruct: 8.29B
    # LoRA r=16 on 7 projections of 28 layers: q,o 3584->3584; k,v 3584->512; gate,up 3584->18944; down back.
    per_layer = 16 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert d["trainable_params"] == 28 * per_layer
    assert d["fsdp_units"] == {"Qwen2_5_VLVisionBlock": 32, "Qwen2_5_VLDecoderLayer": 28}
    assert 6.7e8 < d["vision_params"] < 6.8e8
    # MoELoRA adds a router per adapted layer, in_features x experts, trained with the adapters: counted too
    moe = describe_backbone(load_config(None, ["model.name_or_path=qwen2.5-vl-7b", f"foundation.cache_dir={tmp_path}",
                                               "model.dtype=bfloat16", "model.finetune=lora", "moe_lora.enabled=true",
                                               "moe_lora.experts=2"]))
    routers = 2 * (6 * 3584 + 18944)  # q, k, v, o, gate, up read 3584 features; down reads 18944
    assert moe["trainable_params"] == 28 * (per_layer + routers)


def test_inspect_prints_the_sizes(tmp_path, capsys):
    assert main(["inspect", "model.name_or_path=qwen2.5-vl-7b", f"foundation.cache_dir={tmp_path}",
                 "model.finetune=lora"]) == 0
    printed = capsys.readouterr().out
    assert "backbone            qwen2.5-vl-7b" in printed and "Qwen2_5_VLDecoderLayer" in printed
    assert "32 x Qwen2_5_VLVisionBlock" in printed


def test_lora_targets_that_name_no_layer_are_a_config_error(capsys):
    assert main(["inspect", "model.finetune=lora", "model.lora.target_modules=[nosuch_proj]"]) == 2
    err = capsys.readouterr().err
    assert "model.lora.target_modules=['nosuch_proj'] names no linear layer" in err
    assert len(err.strip().splitlines()) == 1
