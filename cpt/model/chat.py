"""The chat framing of a prompt: the user's turn (its images, then the text) as the checkpoint's chat template
renders it, so that a checkpoint with another template gets its own framing. A checkpoint without a template takes
its family's (cpt.model.family.Family.chat_template)."""

from __future__ import annotations


def user_turn(text: str, num_images: int) -> list[dict]:
    """One user message: its images first, then the text (the layout of the study's prompts)."""
    return [{"role": "user", "content": [*({"type": "image"} for _ in range(num_images)),
                                         {"type": "text", "text": text}]}]


def render(messages: list[dict], template: str) -> str:
    """`messages` up to where the assistant starts to speak, rendered as transformers renders a chat template
    (for text framed before any tokenizer exists: the tiny tokenizer's training corpus)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    return render_jinja_template([messages], chat_template=template, add_generation_prompt=True)[0][0]
