"""The resolution of `model.name_or_path` to a checkpoint directory: a built-in preset or a local checkpoint.

`tiny` (Qwen2.5-VL), `tiny-qwen3-vl` and `tiny-qwen3.5` are toy models pre-trained by the package (cpt.model.tiny,
cpt.model.foundation); `small`, `small-qwen3-vl` and `small-qwen3.5` are the same recipe at 5 to 7 times the
parameters. `qwen2.5-vl-3b`, `qwen2.5-vl-7b`, `qwen3-vl-4b`, `qwen3-vl-8b` and `qwen3.5-0.8b` to `qwen3.5-27b` have the
published shapes with random weights, for sizing and speed measurements without a download. Each family describes
its own (cpt.model.families).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cpt.errors import ConfigError
from cpt.model.backbone import adapter_base
from cpt.model.families import family_of_checkpoint, preset_families
from cpt.model.family import Family, Shape
from cpt.model.foundation import cache_root, ensure_foundation
from cpt.model.stage_adapters import refuse_part_of_a_stage
from cpt.model.tiny import build_tiny_processor
from cpt.run_files import read_json, weight_keys


def write_shape_preset(directory: Path, family: Family, shape: Shape, seed: int, image_size: int,
                       max_pixels: int = 448 * 448) -> Path:
    """A weightless checkpoint directory with architecture `shape` of `family` (a published one, or the tiny one),
    the tiny model's tokenizer and an image processor at the shape's patch size (up to `max_pixels`); loads as a
    random-init model."""
    processor = build_tiny_processor(seed, image_size, family)
    directory.mkdir(parents=True, exist_ok=True)
    family.config({"vocab_size": len(processor.tokenizer), **shape.text}, shape.vision, processor.tokenizer,
                  shape.tie_word_embeddings).save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    patch = shape.patch_size
    family.image_processor(patch, min_pixels=(4 * patch) ** 2, max_pixels=max_pixels).save_pretrained(directory)
    return directory


def preset_names() -> str:
    return ", ".join(preset_families())


def resolve_checkpoint(cfg: DictConfig, build_weights: bool = True) -> Path:
    """The checkpoint directory for `model.name_or_path`, pre-training the toy foundation model when needed.

    With build_weights=False, a tiny preset gives a weightless directory with its config (enough for sizing).
    """
    name = cfg.model.name_or_path
    family = preset_families().get(name)
    if family is not None and name in family.toys:
        if build_weights:
            return ensure_foundation(cfg.foundation, cfg.data.image_size, family, name)
        processor = build_tiny_processor(cfg.foundation.seed, cfg.data.image_size, family)
        directory = cache_root(cfg.foundation.cache_dir) / "shapes" / name
        directory.mkdir(parents=True, exist_ok=True)
        family.toy_config(processor.tokenizer, name).save_pretrained(directory)
        return directory
    if family is not None:
        return write_shape_preset(cache_root(cfg.foundation.cache_dir) / "shapes" / name, family,
                                  family.shapes[name], cfg.foundation.seed, cfg.data.image_size)
    path = Path(name).expanduser()
    refuse_part_of_a_stage(path)
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
            f"model.name_or_path={name!r} is neither a preset ({preset_names()}) nor a directory with a "
            f"config.json; download the checkpoint on a machine with internet and point to its directory"
        )
    family_of_checkpoint(path)  # its model_type names a family cpt trains
    if build_weights:
        check_whole_checkpoint(path)
    return path


def check_whole_checkpoint(path: Path) -> None:
    """A model directory holds what loading it needs besides config.json: weights, a tokenizer and an image
    processor; what is missing is named (transformers would fail on it deep inside, or start from random weights)."""
    missing = []
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if not ((path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()):
        missing.append("a tokenizer (tokenizer_config.json)")
    if not (path / "preprocessor_config.json").is_file():
        missing.append("an image processor (preprocessor_config.json)")
    if missing:
        listed = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        raise ConfigError(f"{path} holds a config.json but lacks {listed}: copy the whole checkpoint directory "
                          "there")


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
    """Every JSON file of a model directory (and of the adapter directories in it) parses and every safetensors
    file has a readable header, checked against its length (the tensors are not read), so that a damaged file is
    named, with what to do, before transformers or peft fails somewhere inside it."""
    for file in sorted(path.glob("*.json")):
        read_json(file)
    for file in sorted(path.glob("*.safetensors")):
        weight_keys(file)
    for adapters in sorted(p for p in path.iterdir() if (p / "adapter_config.json").is_file()):
        check_model_files(adapters)  # a stage's earlier adapters (O-LoRA's stage<k>/)
