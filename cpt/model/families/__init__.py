"""The backbone families cpt trains, one description each, and how a checkpoint's family is found.

Add a family: describe it in a new module here (cpt.model.family.Family) and list it in FAMILIES.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cpt.errors import ConfigError
from cpt.model.families.qwen2_5_vl import QWEN2_5_VL
from cpt.model.families.qwen3_5 import QWEN3_5
from cpt.model.families.qwen3_vl import QWEN3_VL
from cpt.model.family import Family
from cpt.run_files import read_json

FAMILIES: tuple[Family, ...] = (QWEN2_5_VL, QWEN3_VL, QWEN3_5)
DEFAULT = QWEN2_5_VL  # of the `tiny` preset and the benchmarks against TRL


def family_of_type(model_type: str | None, where: str = "the checkpoint") -> Family:
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    known = ", ".join(f"{f.display_name} ({f.model_type})" for f in FAMILIES)
    raise ConfigError(f"{where} holds a {model_type!r} model; cpt trains {known}. A new family is one description "
                      "in cpt/model/families/")


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ConfigError(f"no backbone family {name!r}; cpt knows {', '.join(f.name for f in FAMILIES)}")


def family_of_model(model: nn.Module) -> Family:
    """The family of a transformers model, or of the model inside a peft wrapper."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        config = model.get_base_model().config
    return family_of_type(config.model_type, type(model).__name__)


def family_of_checkpoint(path: str | Path) -> Family:
    """The family of a checkpoint directory: its config.json's, or for a LoRA stage (adapters only) its base's."""
    path = Path(path)
    while not (path / "config.json").is_file():
        adapters = path / "adapter_config.json"
        if not adapters.is_file():
            raise ConfigError(f"{path} has neither a config.json nor LoRA adapters: it is not a checkpoint")
        path = Path(read_json(adapters)["base_model_name_or_path"])
    config = read_json(path / "config.json")
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ConfigError(f"{path / 'config.json'} names no model_type, so the model's family cannot be told: it is "
                          "not a transformers checkpoint's config (copy the checkpoint's own config.json back)")
    return family_of_type(config["model_type"], str(path))


def preset_families() -> dict[str, Family]:
    """Every built-in `model.name_or_path`: the toy foundations and the published shapes, with their family."""
    presets = {name: family for family in FAMILIES for name in family.toys}
    for family in FAMILIES:
        presets.update({name: family for name in family.shapes})
    return presets
