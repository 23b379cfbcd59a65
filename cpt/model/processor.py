"""Turning (images, user text, answer) into a backbone's token ids and pixel patches.

The family's stock processor is used where it loads (it needs torchvision for its video processor). Where it does
not, the PIL image processor makes the patches and we expand each image pad (`<|image_pad|>`) ourselves into one
pad per merged patch, which is exactly what the stock processor does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase

from cpt.model.chat import user_turn
from cpt.model.families import family_of_checkpoint
from cpt.model.family import Family

log = logging.getLogger(__name__)


def images_only_stock_processor(family: Family, image_processor, tokenizer: PreTrainedTokenizerBase,
                                chat_template: str | None = None):
    """transformers' own processor of `family` without its video processor (which needs torchvision): its
    `__call__` expands the image pads and writes the token types for prompts with images, as the stock processor
    does on a machine that has torchvision."""
    from transformers.processing_utils import ProcessorMixin

    markers = family.markers

    class ImagesOnly(family.processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            ids = tokenizer.convert_tokens_to_ids
            self.image_token, self.video_token = markers.image, markers.video
            self.image_token_id, self.video_token_id = ids(markers.image), ids(markers.video)
            self.vision_start_token, self.vision_end_token = markers.vision_start, markers.vision_end
            self.vision_start_token_id, self.vision_end_token_id = ids(markers.vision_start), ids(markers.vision_end)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImagesOnly(image_processor, tokenizer, chat_template=chat_template)


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    mm_token_type_ids: list[int]  # per token: 0 text, 1 image, 2 video (the model's positions are built from them)
    pixel_values: torch.Tensor | None  # (num_patches, channels * temporal_patch * patch * patch)
    image_grid_thw: torch.Tensor | None  # (num_images, 3)


class VisionTextProcessor:
    """Encodes chat prompts with images the way the family's model expects, and decodes completions."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor, family: Family, stock=None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.family = family
        self.stock = stock
        self.merge_size = image_processor.merge_size
        markers = family.markers
        self.image_pad = markers.image
        self.image_pad_id = tokenizer.convert_tokens_to_ids(markers.image)
        self.video_pad_id = tokenizer.convert_tokens_to_ids(markers.video)
        # Placeholders the model must never write: fed back for training, they would be read as image slots.
        self.placeholder_ids = [tokenizer.convert_tokens_to_ids(t)
                                for t in (markers.image, markers.video, markers.vision_start, markers.vision_end)]
        self.end_of_turn = markers.end_of_turn
        self.eos_id = tokenizer.convert_tokens_to_ids(markers.end_of_turn)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        # The checkpoint's template (the processor's, else the tokenizer's); the family's where it has none, kept on
        # the tokenizer so that every checkpoint saved from here carries it.
        self.chat_template = getattr(stock, "chat_template", None) or tokenizer.chat_template
        if self.chat_template is None:
            log.info("the checkpoint has no chat template; prompts take %s's framing (cpt.model.families)",
                     family.display_name)
            self.chat_template = tokenizer.chat_template = family.chat_template

    @classmethod
    def from_pretrained(cls, path: str | Path, min_pixels: int | None = None,
                        max_pixels: int | None = None) -> VisionTextProcessor:
        """The processor of checkpoint `path`, of the family its config (or its adapters' base) names."""
        family = family_of_checkpoint(path)
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
            image_processor = family.image_processor_class.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            stock = None
        else:
            image_processor, tokenizer = stock.image_processor, stock.tokenizer
            tokenizer.padding_side = "left"
        if size:
            image_processor.size = {**dict(image_processor.size), **size}
        return cls(tokenizer, image_processor, family, stock)

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
        pieces = text.split(self.image_pad)
        expanded = pieces[0] + "".join(self.image_pad * n + rest for n, rest in zip(per_image, pieces[1:]))
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
