"""An exported model asked through transformers alone: its tokenizer's chat template and its image processor."""

from __future__ import annotations

from pathlib import Path

from cpt.data.examples import Example
from cpt.data.prompts import render_prompt


class PlainTransformers:
    """The model at `directory` with what transformers loads beside it; `image_processor_class`: the family's."""

    def __init__(self, directory: Path, image_processor_class: type):
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.model = AutoModelForImageTextToText.from_pretrained(directory).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.images = image_processor_class.from_pretrained(directory)

    def answer(self, example: Example, max_new_tokens: int) -> str:
        """The greedy answer to `example` (one image) prompted with the `direct` template."""
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": render_prompt("direct", example)}]}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        vision = self.images(images=example.images, return_tensors="pt")
        pads = int(vision["image_grid_thw"].prod()) // self.images.merge_size ** 2
        text = text.replace("<|image_pad|>", "<|image_pad|>" * pads)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        output = self.model.generate(**inputs, **vision, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
