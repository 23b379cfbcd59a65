"""One LoRA adapter per stage, through peft's multiple adapters (O-LoRA, callbacks/olora.py): the model after stage
t is the base plus the adapters of stages 1..t, the last one training, the earlier ones frozen.

Every stage's adapter is made when the backbone is built, so that a checkpoint's keys, the optimizer's parameters
and a resumed run's model are the same whatever stage a run is at; an adapter joins the forward (and training)
only from its stage on. A stage directory holds the adapters so far in peft's layout: the first stage's ("default")
at its top, each later one in a subdirectory named after it; `load_adapter_stack` reads them back, all active.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from cpt.errors import ConfigError

FIRST = "default"  # peft's own name: save_pretrained writes this adapter at the top of a directory


def stage_adapter(stage: int) -> str:
    """The name of stage `stage`'s adapter (0-based)."""
    return FIRST if stage == 0 else f"stage{stage + 1}"


def stage_of(name: str) -> int:
    return 0 if name == FIRST else int(name.removeprefix("stage")) - 1


def is_adapter_weight(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (peft's lora_A / lora_B)."""
    return ".lora_A." in name or ".lora_B." in name


def add_stage_adapters(model: nn.Module, count: int) -> None:
    """Give a peft model (holding the first stage's adapter) the adapters of stages 2..count, like the first, with
    only the first active; every adapter weight requires a gradient, so the optimizer holds them all from the start
    (a weight without a gradient is not stepped: `activate` freezes all but the stage's own)."""
    config = model.peft_config[FIRST]
    for stage in range(1, count):
        model.add_adapter(stage_adapter(stage), config)
    activate(model, 0)
    for name, param in model.named_parameters():
        if is_adapter_weight(name):
            param.requires_grad_(True)


def activate(model: nn.Module, stage: int) -> None:
    """Stage `stage`'s model: the adapters of stages 0..stage in the forward, only the last one trainable."""
    model.base_model.set_adapter([stage_adapter(k) for k in range(stage + 1)])
    current = f".{stage_adapter(stage)}."
    for name, param in model.named_parameters():
        if is_adapter_weight(name):
            param.requires_grad_(current in name)


def active_adapters(model: nn.Module) -> list[str]:
    return list(model.base_model.active_adapters)


@contextmanager
def adapters_marked_trainable(model: nn.Module) -> Iterator[None]:
    """Every adapter weight marked as requiring a gradient for the duration (to save the frozen ones with the one
    that trains), as it was after."""
    flags = {name: param.requires_grad for name, param in model.named_parameters() if is_adapter_weight(name)}
    params = dict(model.named_parameters())
    try:
        for name in flags:
            params[name].requires_grad_(True)
        yield
    finally:
        for name, flag in flags.items():
            params[name].requires_grad_(flag)


def refuse_part_of_a_stage(path: Path) -> None:
    """ConfigError when `path` is one stage's adapter inside a stage directory (`<stage>/stage2`): loaded alone it
    would be the base plus that adapter, a model no run ever had; the stage directory above it is the model."""
    path = Path(path)
    parent = path.parent
    if ((path / "adapter_config.json").is_file() and (parent / "adapter_config.json").is_file()
            and path.name.startswith("stage") and path.name.removeprefix("stage").isdigit()):
        raise ConfigError(f"{path} is stage {stage_of(path.name) + 1}'s adapter inside the stage directory {parent}; "
                          f"alone it is not a model any run had (the base plus that adapter, without the ones before "
                          f"it): name the stage directory {parent}")


def load_adapter_stack(base: nn.Module, checkpoint: Path) -> nn.Module:
    """A peft model of `base` with every adapter `checkpoint` holds (its top one and those in subdirectories), all
    active, in stage order, as the run that saved them had them."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, checkpoint)
    later = sorted((p.name for p in Path(checkpoint).iterdir() if (p / "adapter_config.json").is_file()
                    and p.name.startswith("stage")), key=stage_of)
    for name in later:
        model.load_adapter(Path(checkpoint) / name, adapter_name=name)
    if later:
        model.base_model.set_adapter([FIRST, *later])
    return model
