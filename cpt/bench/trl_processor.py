"""How TRL's trainers see our checkpoint and prompts: Qwen2.5-VL's processor without the video processor (which
needs torchvision), with our chat template (cpt.model.chat) and the image size limits the run's
`model.min_pixels`/`max_pixels` set, and our prompts as chat messages."""

from __future__ import annotations

from pathlib import Path

from cpt.data.examples import Example
from cpt.data.prompts import render_prompt, render_response
from cpt.model.chat import QWEN_CHAT_TEMPLATE, user_turn
from cpt.model.processor import images_only_stock_processor


def trl_processor(checkpoint: Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """A Qwen2_5_VLProcessor for TRL, resizing images as cpt's VisionTextProcessor.from_pretrained does with the
    same limits (so both sides see the same image tokens)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
    size = {}
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if size:
        image_processor.size = {**dict(image_processor.size), **size}
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return images_only_stock_processor(image_processor, tokenizer, QWEN_CHAT_TEMPLATE)


def trl_prompt(template: str, example: Example) -> list[dict]:
    """The user's turn of our prompt as a chat message: the example's images, then the rendered question."""
    return user_turn(render_prompt(template, example), len(example.images))


def trl_completion(template: str, example: Example) -> list[dict]:
    """Our SFT target as the assistant's turn (the chat template closes it with the end-of-turn token)."""
    return [{"role": "assistant", "content": render_response(template, example)}]
