"""Qwen2.5-VL (transformers `qwen2_5_vl`): the family of the study's checkpoints (3B, 7B, 32B, 72B).

14-pixel patches merged 2 x 2; windowed attention in the vision tower with full attention in a few blocks; M-RoPE
over (time, height, width) sections of each rotary head; a default system prompt in its chat framing.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.model.family import Family, Markers, Shape, Toy

# The chat and vision tokens of Qwen's tokenizers (Qwen2.5-VL and Qwen3-VL share them).
QWEN_MARKERS = Markers(pad="<|endoftext|>", turn_start="<|im_start|>", end_of_turn="<|im_end|>",
                       vision_start="<|vision_start|>", vision_end="<|vision_end|>", image="<|image_pad|>",
                       video="<|video_pad|>")

SYSTEM_PROMPT = "You are a helpful assistant."


def qwen_chat_template(system_prompt: str | None) -> str:
    """Qwen's chat framing, written for our tokenizers: `system_prompt` (if any) when the conversation has no
    system turn, each image as <|vision_start|><|image_pad|><|vision_end|>, and an assistant turn that ends at
    <|im_end|> with no newline after it, as our SFT target (the answer, then the end-of-turn token) does."""
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + system_prompt +
              "<|im_end|>\n{% endif %}") if system_prompt else ""
    return (
        "{% for message in messages %}" + system + "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>"
        "{% if message['role'] != 'assistant' %}{{ '\\n' }}{% endif %}"  # an expression: trim_blocks eats a bare one
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


VISION_7B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                 spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}

# The toy foundation: about 1.3M parameters, trains on two CPU cores in minutes.
TINY = Shape(text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=1024,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}),
             vision=dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=128,
                         patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=64,
                         fullatt_block_indexes=[0, 1]),
             patch_size=8)
# Its larger sibling, the study's second size: twice as wide, 6 decoder layers and 4 vision blocks (7.3M).
SMALL = TINY.scaled(width=2, layers=6, vision_depth=4)

QWEN2_5_VL = Family(
    name="qwen2.5-vl", display_name="Qwen2.5-VL", model_type="qwen2_5_vl",
    config_class=Qwen2_5_VLConfig, model_class=Qwen2_5_VLForConditionalGeneration,
    image_processor_class=Qwen2VLImageProcessorPil, processor_class=Qwen2_5_VLProcessor,
    markers=QWEN_MARKERS, chat_template=qwen_chat_template(SYSTEM_PROMPT),
    vision_tower="model.visual", language_layers="model.language_model.layers",
    final_norm="model.language_model.norm", positions_owner="model",
    fsdp_units=("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
    vision_lora_targets=r"(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj))",
    attention_projections=r"self_attn\.[qkvo]_proj", mlp_gate_up=r"mlp\.(gate|up)_proj",
    toys={"tiny": Toy(TINY, shipped="tiny_foundation"), "small": Toy(SMALL, shipped="small_foundation")},
    shapes={
        # The published config.json files (text and vision parts).
        "qwen2.5-vl-3b": Shape(
            text=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                      intermediate_size=11008, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
                      rope_parameters=ROPE),
            vision={**VISION_7B, "out_hidden_size": 2048}, tie_word_embeddings=True),
        "qwen2.5-vl-7b": Shape(
            text=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      intermediate_size=18944, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                      rope_parameters=ROPE),
            vision={**VISION_7B, "out_hidden_size": 3584}),
    },
)
