"""What cpt needs to know of a backbone family, in one description per family (cpt.model.families).

Everything that differs between model families lives here and nowhere else: the transformers classes, the chat
framing, the tokens that mark images and turns, the module paths of the vision tower and the language model's
layers, what LoRA and `model.trainable` select, the FSDP units, the tiny architecture the package pre-trains, and
the published shapes. The rest of cpt reads these fields, so a new family is one new file in cpt.model.families.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

# The projections of a full-attention layer, in every family (LoRA's default targets include them).
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Markers:
    """The tokens of a family's chat and vision framing."""

    pad: str  # the tokenizer's padding
    turn_start: str
    end_of_turn: str  # what the model writes to end its answer; generation stops there
    vision_start: str
    vision_end: str
    image: str  # one per image token: the processor expands it to the image's number of merged patches
    video: str

    @property
    def special(self) -> list[str]:
        return [self.pad, self.turn_start, self.end_of_turn, self.vision_start, self.vision_end, self.image,
                self.video]


@dataclass(frozen=True)
class Shape:
    """A published checkpoint's architecture: its config.json's text and vision parts."""

    text: dict
    vision: dict
    tie_word_embeddings: bool = False
    patch_size: int = 14  # the image processor's

    def scaled(self, width: int, layers: int, vision_depth: int) -> Shape:
        """This shape `width` times as wide (hidden and MLP sizes, attention and key-value heads: the heads keep
        their size, so the M-RoPE sections still fit) with `layers` decoder layers and `vision_depth` vision
        blocks; the vision blocks a family singles out (full attention, DeepStack) spread over the new depth as
        they were over the old one. How a toy of one family gets its larger sibling."""
        depth = self.vision["depth"]

        def spread(indexes: list[int]) -> list[int]:
            return [round((i + 1) * vision_depth / depth) - 1 for i in indexes]

        text = {**self.text, "hidden_size": width * self.text["hidden_size"],
                "intermediate_size": width * self.text["intermediate_size"], "num_hidden_layers": layers,
                "num_attention_heads": width * self.text["num_attention_heads"],
                "num_key_value_heads": width * self.text["num_key_value_heads"]}
        for key in ("linear_num_key_heads", "linear_num_value_heads"):
            if key in text:
                text[key] = width * text[key]
        vision = {**self.vision, "depth": vision_depth, "hidden_size": width * self.vision["hidden_size"],
                  "intermediate_size": width * self.vision["intermediate_size"],
                  "num_heads": width * self.vision["num_heads"], "out_hidden_size": text["hidden_size"]}
        for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
            if key in vision:
                vision[key] = spread(vision[key])
        return Shape(text, vision, self.tie_word_embeddings, self.patch_size)


@dataclass(frozen=True)
class Toy:
    """A toy foundation model the package pre-trains (cpt.model.foundation): its architecture (vocabulary: the toy
    tokenizer's) and the directory in cpt/model of its shipped weights, or None where it is pre-trained on first
    use and cached."""

    shape: Shape
    shipped: str | None = None


@dataclass(frozen=True)
class Family:
    name: str  # as users write it: `qwen2.5-vl`
    display_name: str  # in prose: `Qwen2.5-VL`
    model_type: str  # config.json's `model_type`, by which a checkpoint's family is found
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    image_processor_class: type  # the PIL one, which needs no torchvision
    processor_class: type  # transformers' own processor (its video part needs torchvision)
    markers: Markers
    chat_template: str  # the framing of a checkpoint that ships none (and of the tiny model's tokenizer)
    vision_tower: str  # module path from the model's root
    language_layers: str  # module path of the decoder layers' list
    final_norm: str  # module path of the language model's last norm (its output feeds the head)
    positions_owner: str  # module path of the module with `get_rope_index` and `rope_deltas`
    fsdp_units: tuple[str, ...]  # class names of the modules sharded one by one
    vision_lora_targets: str  # regex, after the vision tower's blocks: the linear layers LoRA may adapt
    attention_projections: str  # regex, within a decoder layer
    mlp_gate_up: str  # regex, within a decoder layer
    # The toy foundation models, by `model.name_or_path`; the first is the family's default (`tiny`). All share
    # one pre-training recipe, tokenizer and image patch, so only the architecture tells them apart.
    toys: dict[str, Toy]
    shapes: dict[str, Shape] = field(default_factory=dict)  # published shapes, by preset name
    # The modules of a decoder layer that mix tokens (attention, linear attention): the analysis' attention group.
    token_mixers: tuple[str, ...] = ("self_attn",)
    # Layers that mix tokens by a recurrence (linear attention) rather than by attention: their projections' names,
    # which LoRA and `model.trainable=attention` take wherever they take the attention projections.
    linear_attention_projections: tuple[str, ...] = ()
    # What the decoder layers carry from one token to the next, which a prompt cache holds and copies per rollout
    # (for `inspect`; transformers' cache reorders them all alike).
    cached_state: tuple[str, ...] = ("keys and values",)
    # Modules QLoRA keeps in full precision besides the vision tower and the head (names, matched at their end).
    unquantized: tuple[str, ...] = ()
    # Whether several completions can be packed behind one prompt in one sequence, each seeing the prompt and itself
    # through a block mask (cpt.rl.log_probs). Not where a layer carries a recurrent state: a mask does not stop a
    # recurrence, so a completion would read its siblings; the prompt's cache is forked to them instead.
    packable: bool = True

    @property
    def tiny_preset(self) -> str:
        return next(iter(self.toys))

    @property
    def tiny(self) -> Shape:
        return self.toys[self.tiny_preset].shape

    # --- configs -----------------------------------------------------------------------------------------------

    def marker_ids(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
        """The vision markers' ids, as the family's config names them."""
        ids = tokenizer.convert_tokens_to_ids
        return dict(image_token_id=ids(self.markers.image), video_token_id=ids(self.markers.video),
                    vision_start_token_id=ids(self.markers.vision_start),
                    vision_end_token_id=ids(self.markers.vision_end))

    def config(self, text: dict, vision: dict, tokenizer: PreTrainedTokenizerBase,
               tie_word_embeddings: bool = False) -> PretrainedConfig:
        """A config of this family with `tokenizer`'s markers, end of turn and padding."""
        ends = {"eos_token_id": tokenizer.convert_tokens_to_ids(self.markers.end_of_turn),
                "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.pad_token_id}
        return self.config_class(text_config={**ends, **text}, vision_config=vision,
                                 tie_word_embeddings=tie_word_embeddings, **self.marker_ids(tokenizer))

    def toy_config(self, tokenizer: PreTrainedTokenizerBase, preset: str | None = None) -> PretrainedConfig:
        """The config of toy `preset` (the default one if None) with the toy tokenizer's vocabulary."""
        shape = self.toys[preset or self.tiny_preset].shape
        return self.config({**shape.text, "vocab_size": len(tokenizer)}, shape.vision, tokenizer,
                           shape.tie_word_embeddings)

    def image_processor(self, patch_size: int, min_pixels: int, max_pixels: int):
        return self.image_processor_class(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                          min_pixels=min_pixels, max_pixels=max_pixels)

    # --- modules -----------------------------------------------------------------------------------------------

    def vision(self, model: PreTrainedModel) -> nn.Module:
        return model.get_submodule(self.vision_tower)

    def norm(self, model: PreTrainedModel) -> nn.Module:
        return model.get_submodule(self.final_norm)

    def rope_index(self, model: PreTrainedModel, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own (3, rows, width) positions and (rows, 1) offsets of the continuation."""
        return model.get_submodule(self.positions_owner).get_rope_index(**inputs)

    def forget_rope_offsets(self, model: PreTrainedModel) -> None:
        model.get_submodule(self.positions_owner).rope_deltas = None

    def vision_name(self) -> str:
        """The vision tower's last name (`visual`): what parameter names hold when they belong to it."""
        return self.vision_tower.rpartition(".")[2]

    def trainable(self) -> dict[str, re.Pattern]:
        """model.trainable: the parameters each subset trains under full fine-tuning (matched on their name)."""
        layers, vision = re.escape(self.language_layers), re.escape(self.vision_name())
        mixing = self.attention_projections
        if self.linear_attention_projections:
            mixing = rf"(?:{mixing}|\w+\.(?:{'|'.join(self.linear_attention_projections)}))"
        return {
            "attention": re.compile(rf"\b{layers}\.\d+\.{mixing}\."),
            "mlp_gate_up": re.compile(rf"\b{layers}\.\d+\.{self.mlp_gate_up}\."),
            "language": re.compile(rf"^(?!.*\b{vision}\b)"),
            "vision": re.compile(rf"\b{vision}\b"),
        }

    def module_group(self, name: str) -> str:
        """The forgetting analysis' group of a parameter, by its name (a LoRA adapter's holds the module it adapts):
        vision, attention (every token mixer), mlp, embeddings_head or other."""
        parts = name.split(".")
        if self.vision_name() in parts:
            return "vision"
        if "embed_tokens" in parts or "lm_head" in parts:
            return "embeddings_head"
        if any(mixer in parts for mixer in self.token_mixers):
            return "attention"
        if "mlp" in parts:
            return "mlp"
        return "other"

    def lora_targets(self, text_targets: list[str]) -> list[str]:
        """The language model's module names LoRA adapts for `text_targets`: with any attention projection among
        them (q, k, v, o), a linear-attention layer's projections too, since such a layer has none of those."""
        if set(text_targets) & set(ATTENTION_PROJECTIONS):
            return list(dict.fromkeys([*text_targets, *self.linear_attention_projections]))
        return list(text_targets)

    def lora_pattern(self, text_targets: list[str], vision: bool) -> str:
        """peft's target regex (matched on full module names): the language model's `text_targets` (and what
        `lora_targets` adds), and with `vision` the vision blocks' linear layers (not its patch embedding, which may
        share their names)."""
        text_targets = self.lora_targets(text_targets)
        tower = re.escape(self.vision_name())
        pattern = rf"^(?!.*\b{tower}\b).*\.({'|'.join(text_targets)})$"
        if vision:
            pattern = rf"(?:{pattern})|(?:.*\b{tower}\.blocks\.\d+\.{self.vision_lora_targets}$)"
        return pattern

    def quantization_skip(self) -> list[str]:
        """Modules QLoRA keeps in full precision: the vision tower, the head and the family's `unquantized`.
        transformers 5 matches names from the start or at their end, older versions by substring: both forms."""
        return [self.vision_tower, self.vision_name(), "lm_head", *self.unquantized]
