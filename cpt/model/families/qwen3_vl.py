"""Qwen3-VL (transformers `qwen3_vl`), the dense checkpoints (2B, 4B, 8B, 32B).

16-pixel patches merged 2 x 2 with learned position embeddings resampled to each image; interleaved M-RoPE (the
time, height and width frequencies alternate across each rotary head instead of filling three blocks); DeepStack:
the features of a few vision blocks are added into the first language-model layers; decoder layers with norms on
queries and keys; no default system prompt in its chat framing.
"""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.model.families.qwen2_5_vl import QWEN_MARKERS, qwen_chat_template
from cpt.model.family import Family, Shape, Toy

ROPE = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
TEXT = dict(num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
            max_position_embeddings=262144, rms_norm_eps=1e-6, rope_parameters=ROPE)
VISION = dict(num_heads=16, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
              hidden_act="gelu_pytorch_tanh")

# The Qwen2.5-VL toy's size and patch (8 pixels, so the toy's 64-pixel images give the same 16 tokens), with this
# family's layout: interleaved M-RoPE (the published [24, 20, 20] scaled to heads of 32), DeepStack from both vision
# blocks into the first two decoder layers.
TINY = Shape(text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [6, 5, 5],
                                        "mrope_interleaved": True}),
             vision=dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=128,
                         patch_size=8, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                         deepstack_visual_indexes=[0, 1]),
             patch_size=8)
# Its larger sibling, as Qwen2.5-VL's; not shipped (pre-trained on first use and cached).
SMALL = TINY.scaled(width=2, layers=6, vision_depth=4)

QWEN3_VL = Family(
    name="qwen3-vl", display_name="Qwen3-VL", model_type="qwen3_vl",
    config_class=Qwen3VLConfig, model_class=Qwen3VLForConditionalGeneration,
    image_processor_class=Qwen2VLImageProcessorPil, processor_class=Qwen3VLProcessor,
    markers=QWEN_MARKERS, chat_template=qwen_chat_template(None),
    vision_tower="model.visual", language_layers="model.language_model.layers",
    final_norm="model.language_model.norm", positions_owner="model",
    fsdp_units=("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"),
    vision_lora_targets=r"(attn\.(qkv|proj)|mlp\.linear_fc[12])",
    attention_projections=r"self_attn\.[qkvo]_proj", mlp_gate_up=r"mlp\.(gate|up)_proj",
    toys={"tiny-qwen3-vl": Toy(TINY, shipped="tiny_foundation_qwen3_vl"), "small-qwen3-vl": Toy(SMALL)},
    shapes={
        # The published config.json files (text and vision parts).
        "qwen3-vl-4b": Shape(
            text={**TEXT, "hidden_size": 2560, "intermediate_size": 9728},
            vision={**VISION, "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "out_hidden_size": 2560,
                    "deepstack_visual_indexes": [5, 11, 17]},
            tie_word_embeddings=True, patch_size=16),
        "qwen3-vl-8b": Shape(
            text={**TEXT, "hidden_size": 4096, "intermediate_size": 12288},
            vision={**VISION, "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "out_hidden_size": 4096,
                    "deepstack_visual_indexes": [8, 16, 24]},
            patch_size=16),
    },
)
