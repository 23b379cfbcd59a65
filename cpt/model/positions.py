"""The model's own token positions (M-RoPE) in every forward cpt makes.

Qwen-VL models place a text token at one position in all three rotary sections (time, height, width), and an image's
tokens on its merged (t, h, w) grid offset by where the image starts; text after an image continues at the largest
position so far + 1. So a 448 x 448 image (256 tokens on a 16 x 16 grid) advances the text by 16, not 256.

transformers computes these positions in the model's forward and in `generate` only when it is given
`mm_token_type_ids` (0 text, 1 image, 2 video), and otherwise falls back to 1D positions without a word. Every
`Batch` carries the token types (cpt.data.batches), and `require_token_types` makes a forward with images but
without them an error. Where cpt builds positions itself (a prompt cache that `generate` continues, the packed
shared-prefix sequence of cpt.rl.log_probs) it builds them here, from the model's own `get_rope_index`, which its
family description points to (cpt.model.families).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedModel

from cpt.model.families import family_of_model

if TYPE_CHECKING:
    from cpt.data.batches import Batch


def rope_positions(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, rows, width) the position of every token of `batch` in the three rotary sections (0 on the left
    padding), by the model's own `get_rope_index`; and (rows,) the position a token appended to each row takes
    (the row's largest position + 1), from which a continuation counts on one position per token. `model` is the
    transformers model itself (cpt.model.backbone.base_model of a peft model)."""
    positions, offsets = family_of_model(model).rope_index(
        model, input_ids=batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids,
        image_grid_thw=batch.image_grid_thw, attention_mask=batch.attention_mask)
    return positions, batch.attention_mask.sum(1) + offsets.view(-1).to(batch.attention_mask.device)


def reset_rope_offsets(model: PreTrainedModel) -> None:
    """Forget the rope offsets the model keeps from its last call with images (`rope_deltas`), which transformers
    adds to the positions of a call that continues a cache: no call of cpt's may continue from another's."""
    family_of_model(model).forget_rope_offsets(model)


def declares_mrope(model: PreTrainedModel) -> bool:
    text = model.config.get_text_config()
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    return "mrope_section" in rope


def require_token_types(model: PreTrainedModel) -> None:
    """From now on a forward of `model` (the model's own, or the first of `generate`) given images but no
    `mm_token_type_ids` raises, where the model declares M-RoPE: it would otherwise place the image tokens in 1D."""
    if not declares_mrope(model):
        return

    def check(module: nn.Module, args: tuple, kwargs: dict) -> None:
        # generate encodes the images before its first forward and hands that their features instead
        encoded = kwargs.get("mm_encoder_outputs") or {}
        images = (kwargs.get("pixel_values") is not None or kwargs.get("pixel_values_videos") is not None
                  or any(features is not None for features in encoded.values()))
        if images and kwargs.get("mm_token_type_ids") is None:
            raise ValueError(
                "images were given without mm_token_type_ids: the model would place their tokens in 1D positions "
                "instead of its M-RoPE ones. Pass the processor's mm_token_type_ids (0 text, 1 image, 2 video) with "
                "pixel_values; a cpt Batch carries them in model_inputs()")

    model.register_forward_pre_hook(check, with_kwargs=True)
