import torch

from cpt.backbone import count_parameters, fsdp_units, load_backbone
from cpt.config import load_config
from cpt.data import Collator, EncodedDataset, SyntheticSplit
from cpt.sft import sft_loss


def model_cfg(*overrides):
    return load_config(None, list(overrides)).model


def lora_params_per_layer(r, hidden=128, kv=64, inter=384):
    """r * (in + out) for each adapted projection of one tiny decoder layer."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    return sum(r * (i + o) for i, o in shapes)


def test_lora_adapts_language_model_only(foundation_dir):
    model = load_backbone(model_cfg("model.finetune=lora", "model.lora.r=8"), foundation_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    assert not any("visual" in n and "lora_" in n for n, _ in model.named_parameters())
    assert count_parameters(model)[1] == 4 * lora_params_per_layer(8)


def test_lora_on_vision_when_asked(foundation_dir):
    from peft.tuners.lora import LoraLayer

    model = load_backbone(model_cfg("model.finetune=lora", "model.lora.vision=true"), foundation_dir)
    adapted = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and "visual" in n}
    # Every linear layer of both vision blocks, and nothing else (not the Conv3d patch embedding, not the merger).
    assert len(adapted) == 2 * 5
    assert all(isinstance(m.base_layer, torch.nn.Linear) and ".blocks." in n for n, m in adapted.items())


def test_full_finetune_with_and_without_the_vision_tower(foundation_dir):
    frozen = load_backbone(model_cfg("model.finetune=full", "model.freeze_vision=true"), foundation_dir)
    for name, param in frozen.named_parameters():
        assert param.requires_grad == ("visual" not in name), name
    thawed = load_backbone(model_cfg("model.finetune=full"), foundation_dir)
    assert all(p.requires_grad for p in thawed.parameters())


def test_qlora_quantizes_language_model_and_trains_adapters(foundation_dir, processor):
    import bitsandbytes as bnb

    model = load_backbone(model_cfg("model.finetune=qlora"), foundation_dir)
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and not any("visual" in n for n in four_bit)
    assert any("language_model" in n and "q_proj" in n for n in four_bit)
    dataset = EncodedDataset(SyntheticSplit("colour", "train", 2, 0, 64), processor, "direct")
    loss = sft_loss(model, Collator(processor.pad_id)([dataset[0], dataset[1]]))
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)


def test_fsdp_units_are_decoder_layers_and_vision_blocks(foundation_dir):
    model = load_backbone(model_cfg(), foundation_dir)
    names = [type(u).__name__ for u in fsdp_units(model)]
    assert names.count("Qwen2_5_VLDecoderLayer") == 4 and names.count("Qwen2_5_VLVisionBlock") == 2


def test_qwen25_vl_7b_published_shape_on_meta(tmp_path):
    from cpt.sizing import describe_backbone

    cfg = load_config(None, ["model.name_or_path=qwen2.5-vl-7b", f"foundation.cache_dir={tmp_path}",
                             "model.dtype=bfloat16", "model.finetune=lora"])
    d = describe_backbone(cfg)
    assert 8.2e9 < d["total_params"] < 8.4e9  # Qwen2.5-VL-7B-Instruct: 8.29B
    # LoRA r=16 on 7 projections of 28 layers: q,o 3584->3584; k,v 3584->512; gate,up 3584->18944; down back.
    per_layer = 16 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert d["trainable_params"] == 28 * per_layer
    assert d["fsdp_units"] == {"Qwen2_5_VLVisionBlock": 32, "Qwen2_5_VLDecoderLayer": 28}
    assert 6.7e8 < d["vision_params"] < 6.8e8
