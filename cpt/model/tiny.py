"""The tiny models behind the `tiny` presets: a tokenizer and processor trained on the text the package produces,
for a family's tiny architecture (cpt.model.family). cpt.model.foundation pre-trains them."""

from __future__ import annotations

from cpt.data.prompts import TEMPLATES, render_prompt, render_response
from cpt.data.synthetic import TASKS, make_example
from cpt.model.chat import render, user_turn
from cpt.model.families import DEFAULT
from cpt.model.family import Family
from cpt.model.processor import VisionTextProcessor
from cpt.model.tokenizer import train_tokenizer


def tokenizer_corpus(seed: int, image_size: int, chat_template: str, per_task: int = 200) -> list[str]:
    """Every kind of prompt and answer the package produces, so they tokenize into few pieces."""
    corpus = []
    for name in [*TASKS, "general"]:
        for index in range(per_task):
            example = make_example(name, "tokenizer", index, seed, image_size)
            for template in TEMPLATES:
                corpus.append(render_prompt(template, example) + "\n" + render_response(template, example))
    # The chat markers (and the system prompt, where the family's template has one), as the template frames them.
    scaffold = render(user_turn("", 1), chat_template)
    return corpus + [scaffold] * 20


def build_tiny_processor(seed: int, image_size: int, family: Family = DEFAULT) -> VisionTextProcessor:
    tokenizer = train_tokenizer(tokenizer_corpus(seed, image_size, family.chat_template), family.markers,
                                family.chat_template)
    patch = family.tiny.patch_size
    image_processor = family.image_processor(patch, min_pixels=(2 * patch) ** 2, max_pixels=128 * 128)
    return VisionTextProcessor(tokenizer, image_processor, family)
