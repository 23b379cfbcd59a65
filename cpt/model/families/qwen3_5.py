"""Qwen3.5 (transformers `qwen3_5`), the dense checkpoints: the hybrid linear-attention generation.

Natively multimodal: Qwen3-VL's vision tower (16-pixel patches merged 2 x 2, learned position embeddings resampled
to each image) without its DeepStack; interleaved M-RoPE from the token types as in Qwen3-VL, over a quarter of each
head (`partial_rotary_factor` 0.25). Three of every four decoder layers are Gated DeltaNet (linear attention: a
causal convolution, then a gated delta-rule recurrence) and the fourth is full attention with a gated output. A
linear-attention layer carries a convolution and a recurrent state from token to token instead of keys and values,
so its cache holds those, and completions cannot be packed behind one shared prompt (cpt.model.family.Family).
"""

from __future__ import annotations

from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.model.families.qwen2_5_vl import QWEN_MARKERS, qwen_chat_template
from cpt.model.family import Family, Shape, Toy

# The published text and vision parts every dense size shares.
ROPE = {"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10], "mrope_interleaved": True,
        "partial_rotary_factor": 0.25}
TEXT = dict(head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
            linear_num_key_heads=16, vocab_size=248320, max_position_embeddings=262144, rms_norm_eps=1e-6,
            rope_parameters=ROPE)
VISION = dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
              hidden_act="gelu_pytorch_tanh")


def dense(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, value_heads: int,
          vision: tuple[int, int, int, int], tie: bool) -> Shape:
    """A published dense size: its text widths and depth, and its vision tower's (depth, width, MLP width, heads)."""
    depth, width, mlp, vision_heads = vision
    return Shape(text={**TEXT, "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
                       "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                       "linear_num_value_heads": value_heads},
                 vision={**VISION, "depth": depth, "hidden_size": width, "intermediate_size": mlp,
                         "num_heads": vision_heads, "out_hidden_size": hidden},
                 tie_word_embeddings=tie, patch_size=16)


# Qwen3-VL's toy, with this family's layers: three linear-attention layers, then one full-attention layer; rotary
# frequencies over a quarter of each 64-wide head (the published [11, 11, 10] of 32 scaled to 8).
TINY = Shape(text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, linear_conv_kernel_dim=4, linear_key_head_dim=32,
                       linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                       max_position_embeddings=1024,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2],
                                        "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
             vision=dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=128,
                         patch_size=8, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256),
             patch_size=8)
# Its larger sibling, as the other families': twice as wide, two groups of the 3:1 layers, 4 vision blocks; not
# shipped (pre-trained on first use and cached).
SMALL = TINY.scaled(width=2, layers=8, vision_depth=4)

QWEN3_5 = Family(
    name="qwen3.5", display_name="Qwen3.5", model_type="qwen3_5",
    config_class=Qwen3_5Config, model_class=Qwen3_5ForConditionalGeneration,
    image_processor_class=Qwen2VLImageProcessorPil, processor_class=Qwen3VLProcessor,
    markers=QWEN_MARKERS, chat_template=qwen_chat_template(None),
    vision_tower="model.visual", language_layers="model.language_model.layers",
    final_norm="model.language_model.norm", positions_owner="model",
    fsdp_units=("Qwen3_5DecoderLayer", "Qwen3_5VisionBlock"),  # one class for both layer kinds
    vision_lora_targets=r"(attn\.(qkv|proj)|mlp\.linear_fc[12])",
    attention_projections=r"self_attn\.[qkvo]_proj", mlp_gate_up=r"mlp\.(gate|up)_proj",
    token_mixers=("self_attn", "linear_attn"),
    linear_attention_projections=("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"),
    # Each linear-attention layer's gate projections have one output per value head (16 to 48): too narrow to gain
    # from 4-bit blocks, and bitsandbytes' CPU kernel refuses widths its block does not divide.
    unquantized=("in_proj_a", "in_proj_b"),
    cached_state=("keys and values (full attention)", "convolution and recurrent states (linear attention)"),
    packable=False,
    toys={"tiny-qwen3.5": Toy(TINY, shipped="tiny_foundation_qwen3_5"), "small-qwen3.5": Toy(SMALL)},
    shapes={
        # The published config.json files (text and vision parts; linear_num_key_heads is 16 in every size), as
        # copies of them give them (the 2B's vision part and tied embeddings from one copy only).
        "qwen3.5-0.8b": dense(hidden=1024, intermediate=3584, layers=24, heads=8, kv_heads=2, value_heads=16,
                              vision=(12, 768, 3072, 12), tie=True),
        "qwen3.5-2b": dense(hidden=2048, intermediate=6144, layers=24, heads=8, kv_heads=2, value_heads=16,
                            vision=(24, 1024, 4096, 16), tie=True),
        "qwen3.5-4b": dense(hidden=2560, intermediate=9216, layers=32, heads=16, kv_heads=4, value_heads=32,
                            vision=(24, 1024, 4096, 16), tie=True),
        "qwen3.5-9b": dense(hidden=4096, intermediate=12288, layers=32, heads=16, kv_heads=4, value_heads=32,
                            vision=(27, 1152, 4304, 16), tie=False),
        "qwen3.5-27b": dense(hidden=5120, intermediate=17408, layers=64, heads=24, kv_heads=4, value_heads=48,
                             vision=(27, 1152, 4304, 16), tie=False),
    },
)
