"""How TRL's trainers see our checkpoint and prompts: Qwen2.5-VL's processor without the video processor (which
needs torchvision), with our chat template and the image size limits the run's `model.min_pixels`/`max_pixels`
set, and our prompts as chat messages."""

from __future__ import annotations

from pathlib import Path

from cpt.data.examples import Example
from cpt.data.prompts import render_prompt, render_response
from cpt.model.processor import SYSTEM_PROMPT

# Our prompts (cpt.model.processor.chat_prompt): the system prompt, then the user's turn with its images before
# the text, then the assistant's. An assistant turn ends at <|im_end|> with no newline after it, as our SFT target
# (the answer, then the end-of-turn token) does, so that TRL's SFTTrainer trains on exactly our target tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT +
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>"
    "{% if message['role'] != 'assistant' %}{{ '\\n' }}{% endif %}"  # an expression: trim_blocks eats a bare one
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def trl_processor(checkpoint: Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """A Qwen2_5_VLProcessor for TRL, resizing images as cpt's VisionTextProcessor.from_pretrained does with the
    same limits (so both sides see the same image tokens)."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    image_processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
    size = {}
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if size:
        image_processor.size = {**dict(image_processor.size), **size}
    return ImageOnlyProcessor(image_processor, AutoTokenizer.from_pretrained(checkpoint), chat_template=CHAT_TEMPLATE)


def trl_prompt(template: str, example: Example) -> list[dict]:
    """The user's turn of our prompt as a chat message: the example's images, then the rendered question."""
    return [{"role": "user", "content": [*({"type": "image"} for _ in example.images),
                                         {"type": "text", "text": render_prompt(template, example)}]}]


def trl_completion(template: str, example: Example) -> list[dict]:
    """Our SFT target as the assistant's turn (the chat template closes it with the end-of-turn token)."""
    return [{"role": "assistant", "content": render_response(template, example)}]
