import pytest
import torch

from cpt.config import CHOICES, load_config
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.synthetic import SyntheticSplit
from cpt.errors import ConfigError
from cpt.model import backbone
from cpt.model.answer_loss import sft_loss
from cpt.model.backbone import attention_implementation, count_parameters, fsdp_units, load_backbone
from cpt.model.families import FAMILIES, QWEN3_5
from cpt.model.presets import resolve_checkpoint, write_shape_preset


def model_cfg(*overrides):
    return load_config(None, list(overrides)).model


def lora_params_per_layer(r, hidden=128, kv=64, inter=384):
    """r * (in + out) for each adapted projection of one tiny decoder layer."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter),
              (inter, hidden)]
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


def test_parameter_subsets_train_only_their_modules(foundation_dir):
    """model.trainable: the tiny model's four decoder layers and two vision blocks, counted by hand."""
    def trainable(subset):
        model = load_backbone(model_cfg(f"model.trainable={subset}"), foundation_dir)
        return {n for n, p in model.named_parameters() if p.requires_grad}, {n for n, _ in model.named_parameters()}

    chosen, every = trainable("attention")
    # q, k and v with weight and bias, o with its weight only: 7 per layer
    assert len(chosen) == 4 * 7 and all(".self_attn." in n and "visual" not in n for n in chosen)
    chosen, _ = trainable("mlp_gate_up")
    assert len(chosen) == 4 * 2 and all(n.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")) for n in chosen)
    assert all(".mlp." in n and "visual" not in n for n in chosen)
    chosen, _ = trainable("vision")
    assert chosen == {n for n in every if "visual" in n}
    chosen, _ = trainable("language")
    assert chosen == {n for n in every if "visual" not in n} and "lm_head.weight" in chosen
    assert all(set(family.trainable()) | {"all"} == set(CHOICES["model.trainable"]) for family in FAMILIES)
    with pytest.raises(ConfigError, match="needs model.finetune=full"):
        model_cfg("model.trainable=attention", "model.finetune=lora")
    with pytest.raises(ConfigError, match="choose one"):
        model_cfg("model.trainable=vision", "model.freeze_vision=true")


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


def test_qlora_is_prepared_as_peft_recommends(foundation_dir):
    """prepare_model_for_kbit_training: the weights kept out of 4 bits are float32 even for bfloat16, and only the
    adapters train."""
    model = load_backbone(model_cfg("model.finetune=qlora", "model.dtype=bfloat16"), foundation_dir)
    kept = {n: p.dtype for n, p in model.named_parameters() if "visual" in n or "lm_head" in n or "norm" in n}
    assert kept and set(kept.values()) == {torch.float32}
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_auto_attention_takes_flash_attention_only_in_half_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: object())
    assert attention_implementation("auto", torch.bfloat16) == "flash_attention_2"
    assert attention_implementation("auto", torch.float16) == "flash_attention_2"
    assert attention_implementation("auto", torch.float32) == "sdpa"
    assert attention_implementation("eager", torch.float32) == "eager"
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: None)
    assert attention_implementation("auto", torch.bfloat16) == "sdpa"
    with pytest.raises(ConfigError, match="flash_attention_2 runs in half precision only"):
        model_cfg("model.attn_implementation=flash_attention_2")


def test_fsdp_units_are_decoder_layers_and_vision_blocks(foundation_dir):
    model = load_backbone(model_cfg(), foundation_dir)
    names = [type(u).__name__ for u in fsdp_units(model)]
    assert names.count("Qwen2_5_VLDecoderLayer") == 4 and names.count("Qwen2_5_VLVisionBlock") == 2


def test_gradient_checkpointing_gives_the_same_gradients(foundation_dir, processor):
    dataset = EncodedDataset(SyntheticSplit("count", "train", 2, 0, 64), processor, "direct")
    batch = Collator(processor.pad_id)([dataset[0], dataset[1]])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = load_config(None, [f"model.gradient_checkpointing={checkpointing}", "model.finetune=full"]).model
        model = load_backbone(cfg, foundation_dir)
        model.train()
        assert model.is_gradient_checkpointing == checkpointing
        sft_loss(model, batch).backward()
        # The embeddings' gradient flows back through every (recomputed) decoder layer.
        grads.append(model.model.language_model.embed_tokens.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_qwen3_5(tmp_path_factory):
    """The tiny Qwen3.5 architecture, random weights: three linear-attention layers, then a full-attention one."""
    return write_shape_preset(tmp_path_factory.mktemp("tiny-qwen3.5"), QWEN3_5, QWEN3_5.tiny, seed=0, image_size=64)


def test_lora_adapts_the_linear_attention_layers_of_qwen3_5(tiny_qwen3_5):
    """A linear-attention layer has no q, k, v or o: LoRA's attention targets stand for its five projections there.
    Counted by hand at r = 4 (widths: hidden 128, linear keys 2 x 32, values 4 x 32, gated queries 2 x 4 x 64)."""
    from peft.tuners.lora import LoraLayer

    model = load_backbone(model_cfg("model.finetune=lora", "model.lora.r=4"), tiny_qwen3_5)
    adapted = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj", "q_proj", "k_proj", "v_proj",
                       "o_proj", "gate_proj", "up_proj", "down_proj"}
    linear = (128 + 256) + (128 + 128) + (128 + 4) + (128 + 4) + (128 + 128)  # qkv, z, b, a, out
    full = (128 + 512) + (128 + 128) + (128 + 128) + (256 + 128)  # q (with its gate), k, v, o
    mlp = 2 * (128 + 384) + (384 + 128)
    assert count_parameters(model)[1] == 4 * (3 * linear + full + 4 * mlp)
    model = load_backbone(model_cfg("model.finetune=lora", "model.lora.target_modules=[gate_proj]"), tiny_qwen3_5)
    assert {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, LoraLayer)} == {"gate_proj"}


def test_the_attention_subset_of_qwen3_5_holds_both_layer_kinds_projections(tiny_qwen3_5):
    model = load_backbone(model_cfg("model.trainable=attention"), tiny_qwen3_5)
    chosen = {n for n, p in model.named_parameters() if p.requires_grad}
    linear = {f"model.language_model.layers.{i}.linear_attn.{p}.weight" for i in range(3)
              for p in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")}
    full = {f"model.language_model.layers.3.self_attn.{p}_proj.weight" for p in "qkvo"}
    assert chosen == linear | full


def test_qlora_keeps_qwen3_5s_narrow_gate_projections_in_full_precision():
    """Every linear layer of the language model in 4 bits but each linear-attention layer's two gate projections
    (one output per value head), which QLoRA adapts in full precision."""
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    shipped = resolve_checkpoint(load_config(None, [f"model.name_or_path={QWEN3_5.tiny_preset}"]))
    model = load_backbone(model_cfg("model.finetune=qlora"), shipped)
    adapted = {n: m.base_layer for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    full = {n.rpartition(".")[2] for n, layer in adapted.items() if not isinstance(layer, bnb.nn.Linear4bit)}
    assert full == {"in_proj_a", "in_proj_b"}
    assert sum(isinstance(layer, bnb.nn.Linear4bit) for layer in adapted.values()) == 3 * 3 + 4 + 4 * 3
