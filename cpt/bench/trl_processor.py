"""How TRL's trainers see our checkpoint and prompts: the family's own processor without the video processor (which
needs torchvision), with the checkpoint's chat template and the image size limits the run's
`model.min_pixels`/`max_pixels` set, and our prompts as chat messages."""

from __future__ import annotations

from pathlib import Path

from cpt.data.examples import Example
from cpt.data.prompts import render_prompt, render_response
from cpt.model.chat import user_turn
from cpt.model.families import family_of_checkpoint
from cpt.model.processor import images_only_stock_processor


def trl_processor(checkpoint: Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """transformers' processor of the checkpoint's family for TRL, resizing images as cpt's
    VisionTextProcessor.from_pretrained does with the same limits (so both sides see the same image tokens)."""
    from transformers import AutoTokenizer

    family = family_of_checkpoint(checkpoint)
    image_processor = family.image_processor_class.from_pretrained(checkpoint)
    size = {}
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if size:
        image_processor.size = {**dict(image_processor.size), **size}
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return images_only_stock_processor(family, image_processor, tokenizer,
                                       tokenizer.chat_template or family.chat_template)


def trl_prompt(template: str, example: Example) -> list[dict]:
    """The user's turn of our prompt as a chat message: the example's images, then the rendered question."""
    return user_turn(render_prompt(template, example), len(example.images))


def trl_completion(template: str, example: Example) -> list[dict]:
    """Our SFT target as the assistant's turn (the chat template closes it with the end-of-turn token)."""
    return [{"role": "assistant", "content": render_response(template, example)}]
