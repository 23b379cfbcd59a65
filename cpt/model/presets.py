"""The resolution of `model.name_or_path` to a checkpoint directory: a built-in preset or a local checkpoint.

`tiny` is a toy Qwen2.5-VL pre-trained by the package (cpt.model.tiny, cpt.model.foundation). `qwen2.5-vl-7b` has
the published shape of Qwen2.5-VL-7B-Instruct with random weights, for sizing and speed measurements without a
download.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from safetensors import safe_open
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cpt.errors import ConfigError, DataError
from cpt.model.backbone import adapter_base
from cpt.model.foundation import cache_root, ensure_foundation
from cpt.model.processor import VisionTextProcessor
from cpt.model.tiny import build_tiny_processor, special_token_ids, tiny_config

# Qwen2.5-VL-7B-Instruct's published config.json (text and vision parts).
QWEN25_VL_7B = {
    "text": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31]),
}


def write_shape_preset(directory: Path, processor: VisionTextProcessor) -> Path:
    """A weightless checkpoint directory with the 7B's config; loads as a random-init model."""
    config = Qwen2_5_VLConfig(text_config={**QWEN25_VL_7B["text"], "eos_token_id": processor.eos_id,
                                           "pad_token_id": processor.pad_id},
                              vision_config=QWEN25_VL_7B["vision"], tie_word_embeddings=False,
                              **special_token_ids(processor.tokenizer))
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                             max_pixels=448 * 448).save_pretrained(directory)
    return directory


def resolve_checkpoint(cfg: DictConfig, build_weights: bool = True) -> Path:
    """The checkpoint directory for `model.name_or_path`, pre-training the toy foundation model when needed.

    With build_weights=False, `tiny` gives a weightless directory with its config (enough for sizing).
    """
    name = cfg.model.name_or_path
    if name == "tiny":
        if build_weights:
            return ensure_foundation(cfg.foundation, cfg.data.image_size)
        processor = build_tiny_processor(cfg.foundation.seed, cfg.data.image_size)
        directory = cache_root(cfg.foundation.cache_dir) / "shapes" / name
        directory.mkdir(parents=True, exist_ok=True)
        tiny_config(processor.tokenizer).save_pretrained(directory)
        return directory
    if name == "qwen2.5-vl-7b":
        processor = build_tiny_processor(cfg.foundation.seed, cfg.data.image_size)
        return write_shape_preset(cache_root(cfg.foundation.cache_dir) / "shapes" / name, processor)
    path = Path(name).expanduser()
    if path.is_dir():
        check_model_files(path)  # a damaged file named before anything reads it
    base = adapter_base(path)
    if base is not None:  # a LoRA stage of an earlier run: the new sequence starts from base + its adapters
        if cfg.model.finetune == "qlora":
            raise ConfigError(f"{path} holds LoRA adapters, merged into their base to start from; QLoRA quantizes "
                              "the base while loading and cannot take them: use model.finetune=lora or full, or "
                              f"merge them first (python -m cpt export {path} OUT_DIR) and QLoRA OUT_DIR")
        check_stage_chain(path)
        return path
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.name_or_path={name!r} is neither a preset (tiny, qwen2.5-vl-7b) nor a directory with a "
            f"config.json; download the checkpoint on a machine with internet and point to its directory"
        )
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "qwen2_5_vl":
        raise ConfigError(f"{path} holds a {config.get('model_type')!r} model; cpt trains Qwen2.5-VL (qwen2_5_vl)")
    return path


def check_stage_chain(path: Path) -> None:
    """Every directory a LoRA stage stands on, down to the whole model the first stage trained on, is there and
    readable (check_model_files)."""
    stage, base = path, adapter_base(path)
    while base is not None:
        if not ((base / "config.json").is_file() or (base / "adapter_config.json").is_file()):
            raise ConfigError(f"{stage} holds LoRA adapters trained on {base}, which is not there: put that "
                              "checkpoint back at that path (adapter_config.json names it)")
        check_model_files(base)
        stage, base = base, adapter_base(base)


def check_model_files(path: Path) -> None:
    """Every JSON file of a model directory parses and every safetensors file has a readable header (the
    tensors are not read), so that a damaged file is named before transformers fails somewhere inside it."""
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{file} is not valid JSON ({error}); restore it from the original checkpoint") from None
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(file, "pt") as weights:
                weights.keys()
        except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for a bad header
            raise DataError(f"{file} is not a readable safetensors file ({error}); it may be truncated: copy "
                            "it again") from None
