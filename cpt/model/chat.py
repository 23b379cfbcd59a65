"""The chat framing of a prompt: the user's turn (its images, then the text) as the checkpoint's chat template
renders it, so that a checkpoint with another template gets its own framing.

`QWEN_CHAT_TEMPLATE` is Qwen2.5-VL's framing, written for the tiny model's tokenizer (which carries it) and used for
a checkpoint that has no template: a default system prompt, each image as <|vision_start|><|image_pad|>
<|vision_end|>, and an assistant turn that ends at <|im_end|> with no newline after it, as our SFT target (the
answer, then the end-of-turn token) does.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT +
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>"
    "{% if message['role'] != 'assistant' %}{{ '\\n' }}{% endif %}"  # an expression: trim_blocks eats a bare one
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def user_turn(text: str, num_images: int) -> list[dict]:
    """One user message: its images first, then the text (the layout of the study's prompts)."""
    return [{"role": "user", "content": [*({"type": "image"} for _ in range(num_images)),
                                         {"type": "text", "text": text}]}]


def render(messages: list[dict], template: str = QWEN_CHAT_TEMPLATE) -> str:
    """`messages` up to where the assistant starts to speak, rendered as transformers renders a chat template
    (for text framed before any tokenizer exists: the tiny tokenizer's training corpus)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    return render_jinja_template([messages], chat_template=template, add_generation_prompt=True)[0][0]
