"""The reference cpt's forwards are checked against: a random Qwen2.5-VL at the published layout, and the inputs
transformers' own processor gives it for the same prompts.

Layout: Qwen2.5-VL-7B's wherever positions depend on it (14-pixel patches merged 2 x 2, 112-pixel attention windows
with full attention in vision blocks 7, 15, 23 and 31, M-RoPE sections [16, 24, 24] over heads of 128, rope theta
1e6); narrow and, in the language model, shallow everywhere else, so a forward takes milliseconds. It is written as a
weightless checkpoint directory and built by cpt's own loader (random weights from the seed), as a shape preset is.

The batch: three rows, left-padded to one width: one image (168 x 224: 48 image tokens over several attention
windows), two images of other sizes (56 x 84 and 112 x 112), and text only.

The stock `Qwen2_5_VLProcessor` cannot be built on a machine without torchvision (its video processor needs it),
so the reference inputs come from that same class built without its video part
(`cpt.model.processor.images_only_stock_processor`): its own `__call__` expands every image pad from the image
grid and writes `mm_token_type_ids`, the code path a GPU machine with torchvision runs for images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.config import load_config
from cpt.data.batches import Batch, Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.prompts import render_prompt, render_response
from cpt.model.backbone import load_backbone
from cpt.model.processor import VisionTextProcessor, images_only_stock_processor
from cpt.model.tiny import special_token_ids
from cpt.model.tokenizer import IM_END

TEMPLATE = "direct"
# (height, width) of each row's images.
ROW_IMAGES = [[(168, 224)], [(56, 84), (112, 112)], []]
QUESTIONS = ["What colour is the large shape?", "Which image holds more dots, the first or the second?",
             "What is seven plus five?"]
ANSWERS = ["red", "second", "12"]


def published_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    pad = tokenizer.pad_token_id
    text = dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=320, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                bos_token_id=pad, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), pad_token_id=pad)
    vision = dict(depth=32, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=256, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            **special_token_ids(tokenizer))


def picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def examples() -> list[Example]:
    images = [[picture(h, w, 10 * row + i) for i, (h, w) in enumerate(sizes)] for row, sizes in enumerate(ROW_IMAGES)]
    return [Example(question, answer, row_images) for question, answer, row_images in zip(QUESTIONS, ANSWERS, images)]


@dataclass
class Reference:
    checkpoint: Path
    processor: VisionTextProcessor  # cpt's, as a run on this machine builds it (no stock processor)
    stock: object  # transformers' Qwen2_5_VLProcessor (images only)
    examples: list[Example]

    def model(self, finetune: str = "full", seed: int = 0) -> torch.nn.Module:
        """cpt's backbone of the checkpoint, float32, eval mode. LoRA adapters get random B matrices (at their
        initial B = 0 they would change nothing and hide their path)."""
        model_cfg = load_config(None, [f"model.finetune={finetune}", "model.dtype=float32",
                                       "model.attn_implementation=sdpa"]).model
        model = load_backbone(model_cfg, self.checkpoint, seed=seed)
        if finetune == "lora":
            generator = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        return model.eval()

    def batch(self, with_response: bool) -> Batch:
        """cpt's batch of the three rows: prompts, or prompts with their SFT answers."""
        dataset = EncodedDataset(self.examples, self.processor, TEMPLATE, with_response=with_response)
        return Collator(self.processor.pad_id)([dataset[i] for i in range(len(dataset))])

    def texts(self, with_response: bool) -> list[str]:
        texts = [self.processor.prompt_text(render_prompt(TEMPLATE, e), len(e.images)) for e in self.examples]
        if with_response:
            texts = [text + render_response(TEMPLATE, e) + IM_END for text, e in zip(texts, self.examples)]
        return texts

    def stock_inputs(self, with_response: bool, repeats: int = 1) -> dict[str, torch.Tensor]:
        """What the stock processor gives for the same rows, each `repeats` times in a row (left padding, as
        generation needs)."""
        texts = [text for text in self.texts(with_response) for _ in range(repeats)]
        images = [image for e in self.examples for _ in range(repeats) for image in e.images]
        return dict(self.stock(text=texts, images=images, padding=True, return_tensors="pt"))


def write_checkpoint(tokenizer: PreTrainedTokenizerBase, directory: Path) -> Path:
    published_config(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                             max_pixels=448 * 448).save_pretrained(directory)
    return directory


def load_reference(directory: Path) -> Reference:
    """The checkpoint `write_checkpoint` wrote, with cpt's processor as this machine builds it (no torchvision: the
    PIL image processor, image pads expanded by cpt) and the stock one."""
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    images = Qwen2VLImageProcessorPil.from_pretrained(directory)
    processor = VisionTextProcessor(tokenizer, images)
    return Reference(directory, processor, images_only_stock_processor(images, tokenizer, processor.chat_template),
                     examples())


def build_reference(tokenizer: PreTrainedTokenizerBase, directory: Path) -> Reference:
    return load_reference(write_checkpoint(tokenizer, directory))
