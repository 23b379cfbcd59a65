"""The reference cpt's forwards are checked against: a random model of each family at its published layout, and
the inputs transformers' own processor gives it for the same prompts.

Layout, wherever positions or the flow of features depend on it:
  - Qwen2.5-VL-7B's: 14-pixel patches merged 2 x 2, 112-pixel attention windows with full attention in vision blocks
    7, 15, 23 and 31, M-RoPE sections [16, 24, 24] over heads of 128, rope theta 1e6;
  - Qwen3-VL-8B's: 16-pixel patches merged 2 x 2 with learned position embeddings (a 48 x 48 grid, resampled),
    interleaved M-RoPE sections [24, 20, 20] over heads of 128, rope theta 5e6, DeepStack features of vision blocks
    8, 16 and 24 added into the first three decoder layers, norms on queries and keys;
narrow and, in the language model, shallow everywhere else, so a forward takes milliseconds. It is written as a
weightless checkpoint directory and built by cpt's own loader (random weights from the seed), as a shape preset is.

The batch: three rows, left-padded to one width: one image (168 x 224: 48 image tokens over several attention
windows), two images of other sizes (56 x 84 and 112 x 112), and text only.

The stock processors (`Qwen2_5_VLProcessor`, `Qwen3VLProcessor`) cannot be built on a machine without torchvision
(their video processor needs it), so the reference inputs come from the same class built without its video part
(`cpt.model.processor.images_only_stock_processor`): its own `__call__` expands every image pad from the image
grid and writes `mm_token_type_ids`, the code path a GPU machine with torchvision runs for images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from cpt.config import load_config
from cpt.data.batches import Batch, Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.prompts import render_prompt, render_response
from cpt.model.backbone import load_backbone
from cpt.model.families import QWEN2_5_VL, QWEN3_5, QWEN3_VL, family_of_checkpoint
from cpt.model.family import Family
from cpt.model.processor import VisionTextProcessor, images_only_stock_processor

TEMPLATE = "direct"
# (height, width) of each row's images.
ROW_IMAGES = [[(168, 224)], [(56, 84), (112, 112)], []]
QUESTIONS = ["What colour is the large shape?", "Which image holds more dots, the first or the second?",
             "What is seven plus five?"]
ANSWERS = ["red", "second", "12"]


# Per family: the published layout (text, vision) and the image processor's patch size.
LAYOUTS = {
    QWEN2_5_VL.name: (
        dict(hidden_size=256, intermediate_size=320, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             max_position_embeddings=4096, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        dict(depth=32, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=256, patch_size=14,
             spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        14),
    QWEN3_VL.name: (
        dict(hidden_size=256, intermediate_size=320, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
             head_dim=128, max_position_embeddings=4096, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                              "mrope_interleaved": True}),
        dict(depth=27, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=256, patch_size=16,
             spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
             deepstack_visual_indexes=[8, 16, 24]),
        16),
    QWEN3_5.name: (
        dict(hidden_size=256, intermediate_size=320, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
             head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
             linear_num_key_heads=1, linear_num_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                              "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
        dict(depth=27, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=256, patch_size=16,
             spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304),
        16),
}


def published_config(family: Family, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    text, vision, _ = LAYOUTS[family.name]
    return family.config({**text, "vocab_size": len(tokenizer)}, vision, tokenizer)


def picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def examples() -> list[Example]:
    images = [[picture(h, w, 10 * row + i) for i, (h, w) in enumerate(sizes)] for row, sizes in enumerate(ROW_IMAGES)]
    return [Example(question, answer, row_images) for question, answer, row_images in zip(QUESTIONS, ANSWERS, images)]


@dataclass
class Reference:
    checkpoint: Path
    family: Family
    processor: VisionTextProcessor  # cpt's, as a run on this machine builds it (no stock processor)
    stock: object  # transformers' processor of the family (images only)
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
            end = self.processor.end_of_turn
            texts = [text + render_response(TEMPLATE, e) + end for text, e in zip(texts, self.examples)]
        return texts

    def stock_inputs(self, with_response: bool, repeats: int = 1) -> dict[str, torch.Tensor]:
        """What the stock processor gives for the same rows, each `repeats` times in a row (left padding, as
        generation needs)."""
        texts = [text for text in self.texts(with_response) for _ in range(repeats)]
        images = [image for e in self.examples for _ in range(repeats) for image in e.images]
        return dict(self.stock(text=texts, images=images, padding=True, return_tensors="pt"))


def write_checkpoint(family: Family, tokenizer: PreTrainedTokenizerBase, directory: Path) -> Path:
    """`tokenizer` (the tiny one) with the family's chat template, the published layout, the published patches."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = family.chat_template
    published_config(family, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    patch = LAYOUTS[family.name][2]
    family.image_processor(patch, min_pixels=(4 * patch) ** 2, max_pixels=448 * 448).save_pretrained(directory)
    return directory


def load_reference(directory: Path) -> Reference:
    """The checkpoint `write_checkpoint` wrote, with cpt's processor as this machine builds it (no torchvision: the
    PIL image processor, image pads expanded by cpt) and the stock one."""
    family = family_of_checkpoint(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    images = family.image_processor_class.from_pretrained(directory)
    processor = VisionTextProcessor(tokenizer, images, family)
    stock = images_only_stock_processor(family, images, tokenizer, processor.chat_template)
    return Reference(directory, family, processor, stock, examples())


def build_reference(family: Family, tokenizer: PreTrainedTokenizerBase, directory: Path) -> Reference:
    return load_reference(write_checkpoint(family, tokenizer, directory))
