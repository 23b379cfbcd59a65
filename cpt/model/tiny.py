"""The tiny Qwen2.5-VL behind the `tiny` preset: its architecture, and a tokenizer and processor trained on the
text the package produces. cpt.model.foundation pre-trains it."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, Qwen2_5_VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.data.prompts import TEMPLATES, render_prompt, render_response
from cpt.data.synthetic import TASKS, make_example
from cpt.model.chat import render, user_turn
from cpt.model.processor import VisionTextProcessor
from cpt.model.tokenizer import IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START, train_tokenizer

TINY_PATCH = 8


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The vision markers' ids, as a Qwen2.5-VL config names them."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids(IMAGE_PAD), video_token_id=ids(VIDEO_PAD),
                vision_start_token_id=ids(VISION_START), vision_end_token_id=ids(VISION_END))


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """About 1.4M parameters: trains on two CPU cores in minutes."""
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=128,
                  patch_size=TINY_PATCH, spatial_merge_size=2, temporal_patch_size=2, window_size=64,
                  fullatt_block_indexes=[0, 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            **special_token_ids(tokenizer))


def tokenizer_corpus(seed: int, image_size: int, per_task: int = 200) -> list[str]:
    """Every kind of prompt and answer the package produces, so they tokenize into few pieces."""
    corpus = []
    for name in [*TASKS, "general"]:
        for index in range(per_task):
            example = make_example(name, "tokenizer", index, seed, image_size)
            for template in TEMPLATES:
                corpus.append(render_prompt(template, example) + "\n" + render_response(template, example))
    # The chat markers and the system prompt, as the tokenizer's template (cpt.model.chat) will frame them.
    scaffold = render(user_turn("", 1))
    return corpus + [scaffold] * 20


def build_tiny_processor(seed: int, image_size: int) -> VisionTextProcessor:
    tokenizer = train_tokenizer(tokenizer_corpus(seed, image_size))
    image_processor = Qwen2VLImageProcessorPil(patch_size=TINY_PATCH, merge_size=2, temporal_patch_size=2,
                                               min_pixels=(2 * TINY_PATCH) ** 2, max_pixels=128 * 128)
    return VisionTextProcessor(tokenizer, image_processor)
