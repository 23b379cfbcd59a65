"""Turning (images, user text, answer) into Qwen2.5-VL token ids and pixel patches.

The stock `Qwen2_5_VLProcessor` is used where it loads (it needs torchvision for its video processor). Where
it does not, the PIL image processor makes the patches and we expand each `<|image_pad|>` ourselves into
one pad per merged patch, which is exactly what the stock processor does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.model.chat import QWEN_CHAT_TEMPLATE, user_turn
from cpt.model.tokenizer import IM_END, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START

log = logging.getLogger(__name__)


def images_only_stock_processor(image_processor, tokenizer: PreTrainedTokenizerBase,
                                chat_template: str | None = None) -> Qwen2_5_VLProcessor:
    """transformers' own Qwen2_5_VLProcessor without its video processor (which needs torchvision): its
    `__call__` expands the image pads and writes the token types for prompts with images, as the stock processor
    does on a machine that has torchvision."""
    from transformers.processing_utils import ProcessorMixin

    class ImagesOnly(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = IMAGE_PAD, VIDEO_PAD
            self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
            self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImagesOnly(image_processor, tokenizer, chat_template=chat_template)


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    mm_token_type_ids: list[int]  # per token: 0 text, 1 image, 2 video (the model's positions are built from them)
    pixel_values: torch.Tensor | None  # (num_patches, channels * temporal_patch * patch * patch)
    image_grid_thw: torch.Tensor | None  # (num_images, 3)


class VisionTextProcessor:
    """Encodes chat prompts with images the way Qwen2.5-VL expects, and decodes completions."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor, stock=None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.stock = stock
        self.merge_size = image_processor.merge_size
        self.image_pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_pad_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        # Placeholders the model must never write: fed back for training, they would be read as image slots.
        self.placeholder_ids = [tokenizer.convert_tokens_to_ids(t)
                                for t in (IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)]
        self.eos_id = tokenizer.convert_tokens_to_ids(IM_END)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        # The checkpoint's template (the processor's, else the tokenizer's); Qwen2.5-VL's where it has none, kept on
        # the tokenizer so that every checkpoint saved from here carries it.
        self.chat_template = getattr(stock, "chat_template", None) or tokenizer.chat_template
        if self.chat_template is None:
            log.info("the checkpoint has no chat template; prompts take Qwen2.5-VL's framing (cpt.model.chat)")
            self.chat_template = tokenizer.chat_template = QWEN_CHAT_TEMPLATE

    @classmethod
    def from_pretrained(cls, path: str | Path, min_pixels: int | None = None,
                        max_pixels: int | None = None) -> VisionTextProcessor:
        size = {}
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        try:
            stock = AutoProcessor.from_pretrained(path)
            if not hasattr(stock, "image_processor"):  # a directory without a model config gives its tokenizer
                raise ValueError(f"{path} has no multimodal processor")
        except Exception as error:  # typically: no torchvision, so no video processor
            log.info("stock processor unavailable (%s); using the PIL image processor", error)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            stock = None
        else:
            image_processor, tokenizer = stock.image_processor, stock.tokenizer
            tokenizer.padding_side = "left"
        if size:
            image_processor.size = {**dict(image_processor.size), **size}
        return cls(tokenizer, image_processor, stock)

    def prompt_text(self, user_text: str, num_images: int) -> str:
        """The user's turn through the chat template, up to where the assistant starts to speak."""
        return self.tokenizer.apply_chat_template(user_turn(user_text, num_images), chat_template=self.chat_template,
                                                  add_generation_prompt=True, tokenize=False)

    def encode_prompt(self, user_text: str, images: list[Image.Image]) -> EncodedPrompt:
        text = self.prompt_text(user_text, len(images))
        images = [image.convert("RGB") for image in images]
        if self.stock is not None:
            out = self.stock(text=[text], images=images or None, return_tensors="pt")
            ids = out["input_ids"][0].tolist()
            types = out["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in out else self.token_types(ids)
            return EncodedPrompt(ids, types, out.get("pixel_values"), out.get("image_grid_thw"))
        if not images:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return EncodedPrompt(ids, self.token_types(ids), None, None)
        vision = self.image_processor(images=images, return_tensors="pt")
        per_image = (vision["image_grid_thw"].prod(dim=-1) // self.merge_size**2).tolist()
        pieces = text.split(IMAGE_PAD)
        expanded = pieces[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(per_image, pieces[1:]))
        ids = self.tokenizer(expanded, add_special_tokens=False)["input_ids"]
        return EncodedPrompt(ids, self.token_types(ids), vision["pixel_values"], vision["image_grid_thw"])

    def token_types(self, ids: list[int]) -> list[int]:
        """Each token's type as the stock processor writes it: 1 on image pads, 2 on video pads, 0 elsewhere."""
        return [1 if i == self.image_pad_id else 2 if i == self.video_pad_id else 0 for i in ids]

    def encode_response(self, text: str) -> list[int]:
        """The assistant's answer followed by the end-of-turn token the model must learn to emit."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def save_pretrained(self, path: str | Path) -> None:
        """Tokenizer (with the chat template) and image processor, as AutoProcessor loads them back."""
        if self.stock is not None:
            self.stock.save_pretrained(path)
            return
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
