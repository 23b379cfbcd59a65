"""Loading the backbone under FSDP without a full copy per process.

Every process builds the model with its parameters on the meta device (no memory; the small non-persistent buffers,
the rotary frequencies, are computed on the CPU as usual and put back after materialisation), applies the
fine-tuning mode, shards it with `fully_shard`, allocates its own shards only (`to_empty`), then fills them:

  - from a checkpoint, each process reads only the rows of each tensor its shard covers, straight from the
    safetensors files (`get_slice`), one tensor at a time, with the checkpoint's key names converted to the
    model's by transformers' own conversion mapping (`visual.*` -> `model.visual.*`, ...) and its dtype cast to
    the model's;
  - for a weightless shape preset, each FSDP unit (decoder layer, vision block) and each remaining module is
    initialised on the CPU from a seed derived from `seed` and the unit's position, as transformers would
    initialise it, and each process keeps its rows: every process gets its part of the same random model;
  - LoRA adapters are initialised by peft's own `reset_lora_parameters` from `seed` on the CPU before sharding
    (they are small), then each process keeps its rows.

So a process holds its shards, the LoRA adapters in full (small), and at most one tensor's rows (checkpoint) or one
unit (random init) more at a time, instead of the whole model: see `python -m cpt bench fsdp-load`.
QLoRA (bitsandbytes quantizes while loading) and checkpoints without `model.safetensors` fall back to loading the
whole model on every process and sharding it (`load_backbone` + `shard_backbone`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import GenerationConfig, PreTrainedModel

from cpt.model.backbone import (
    DTYPES,
    adapter_base,
    apply_finetune,
    attention_implementation,
    has_adapters,
    has_weights,
    load_backbone,
    shard_backbone,
)
from cpt.model.families import family_of_checkpoint
from cpt.model.positions import require_token_types
from cpt.run_files import read_json, weight_keys

log = logging.getLogger(__name__)

Slot = tuple[nn.Module, str]  # a tensor's module and attribute: survives sharding, which replaces the tensor object
Read = Callable[[tuple[slice, ...]], torch.Tensor]  # the part of a full tensor given by one slice per dimension


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Parameters created inside go to the meta device; buffers stay where they are made (the CPU)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def tensor_slots(model: nn.Module, buffers: bool = False) -> dict[str, Slot]:
    """Parameter (or buffer) name -> where it lives; a tied parameter appears once, under its first name."""
    slots: dict[str, Slot] = {}
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        tensors = module._buffers if buffers else module._parameters
        for attr, tensor in tensors.items():
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            slots[f"{prefix}.{attr}" if prefix else attr] = (module, attr)
    return slots


class SafetensorsWeights:
    """The tensors of a checkpoint directory's `model.safetensors` (or the files its index names), read in parts."""

    def __init__(self, files: dict[str, Path]):
        self.files = files  # checkpoint key -> file

    @classmethod
    def find(cls, checkpoint: Path) -> SafetensorsWeights | None:
        index = checkpoint / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index)["weight_map"]
            return cls({key: checkpoint / name for key, name in weight_map.items()})
        single = checkpoint / "model.safetensors"
        if single.is_file():
            return cls(dict.fromkeys(weight_keys(single), single))
        return None

    def reader(self, key: str) -> Read:
        def read(index: tuple[slice, ...]) -> torch.Tensor:
            # Opened per tensor: the file's mapped pages are let go once the rows are copied out.
            with safe_open(self.files[key], framework="pt") as f:
                return f.get_slice(key)[index] if index else f.get_tensor(key)

        return read

    def names_for(self, model: PreTrainedModel) -> dict[str, str]:
        """Model parameter name -> checkpoint key, through transformers' conversion mapping for this model (the
        renames `from_pretrained` applies, e.g. an older layout's `model.layers.*` ->
        `model.language_model.layers.*`)."""
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        conversions = get_model_conversion_mapping(model)
        renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
        converters = [c for c in conversions if isinstance(c, WeightConverter)]
        targets = dict.fromkeys(model.state_dict(), True)
        prefix = model.base_model_prefix
        names: dict[str, str] = {}
        for key in sorted(self.files):
            name, converter = rename_source_key(key, renamings, converters, prefix, targets)
            if name not in targets and key in targets:  # as from_pretrained: a key already in the model's naming
                name, converter = rename_source_key(key, [], [], prefix, targets)
            if name not in targets:
                continue
            if converter is not None:
                raise NotImplementedError(f"{key} needs a weight conversion ({converter}), not only a rename: "
                                          "sharded loading reads tensors as stored")
            names.setdefault(name, key)
        # As from_pretrained: the renames used are reverted when the model is saved.
        model._weight_conversions = [c for c in conversions if getattr(c, "was_used", lambda: True)()]
        return names


def local_index(tensor: torch.Tensor) -> tuple[slice, ...]:
    """The part of the full tensor this process holds: its shard of a DTensor (FSDP2 cuts dim 0 as torch.chunk
    does, so the last ranks' shards may be shorter or empty), all of a plain tensor."""
    if not isinstance(tensor, DTensor):
        return tuple(slice(0, n) for n in tensor.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    if tuple(shape) != tuple(tensor.to_local().shape):
        raise AssertionError(f"local shard {tuple(tensor.to_local().shape)} is not the expected {tuple(shape)}")
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


@torch.no_grad()
def fill(tensor: torch.Tensor, read: Read) -> None:
    """Copy this process's part of a full tensor into `tensor` (a DTensor shard or a plain tensor), casting."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    if local.numel() == 0:
        return
    local.copy_(read(local_index(tensor)))


def init_groups(model: PreTrainedModel) -> list[tuple[str, bool]]:
    """(module name, whole) for every part initialised on its own: each FSDP unit with everything in it (whole),
    then each other module holding parameters itself (its own parameters only)."""
    units = set(model._no_split_modules)
    groups: list[tuple[str, bool]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(unit + ".") for unit in inside):
            continue
        if type(module).__name__ in units:
            groups.append((name, True))
            inside.append(name)
        elif any(p is not None for p in module._parameters.values()):
            groups.append((name, False))
    return groups


def init_owner(model: PreTrainedModel, name: str) -> PreTrainedModel:
    """The innermost PreTrainedModel holding module `name`: its `_init_weights` (and config) initialise it, as in
    `initialize_weights`, which dispatches to each sub-model (vision tower, language model)."""
    owner, path = model, ""
    for part in name.split(".") if name else []:
        path = f"{path}.{part}" if path else part
        module = model.get_submodule(path)
        if isinstance(module, PreTrainedModel):
            owner = module
    return owner


@torch.no_grad()
def random_group(template: PreTrainedModel, name: str, whole: bool, seed: int) -> dict[str, torch.Tensor]:
    """One part of the random model, on the CPU: parameter name (relative to `name`) -> value."""
    module = copy.deepcopy(template.get_submodule(name))  # meta parameters: no memory yet
    module.to_empty(device="cpu", recurse=whole)
    owner = init_owner(template, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules() if whole else [module]:
            owner._init_weights(sub)
    return dict(module.named_parameters(recurse=whole, remove_duplicate=False))


@torch.no_grad()
def initialise_adapters(model: nn.Module, seed: int) -> list[tuple[Slot, torch.Tensor]]:
    """LoRA weights as peft initialises them (`reset_lora_parameters`), from `seed`, on the CPU, in full."""
    if not has_adapters(model):
        return []
    from peft.tuners.lora import LoraLayer
    values: list[tuple[Slot, torch.Tensor]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in model.modules():
            if not isinstance(layer, LoraLayer):
                continue
            for adapter in list(layer.lora_A.keys()):
                parts = [layer.lora_A[adapter], layer.lora_B[adapter]]
                for part in parts:
                    part.to_empty(device="cpu")
                layer.reset_lora_parameters(adapter, model.peft_config[adapter].init_lora_weights)
                for part in parts:
                    values += [((part, attr), p.detach().clone()) for attr, p in part._parameters.items()
                               if p is not None]
    return values


def mesh_device(mesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, getattr(torch, mesh.device_type).current_device())


def load_sharded_backbone(model_cfg: DictConfig, checkpoint: Path, mesh, seed: int = 0,
                          param_dtype: torch.dtype | None = None) -> nn.Module:
    """What `shard_backbone(load_backbone(...), mesh, param_dtype)` gives, with each process holding only its
    shards (plus one unit while loading)."""
    checkpoint = Path(checkpoint)
    weights = SafetensorsWeights.find(checkpoint)
    whole_reason = ("QLoRA quantizes while loading" if model_cfg.finetune == "qlora" else
                    "a LoRA stage: its adapters are merged into the base" if adapter_base(checkpoint) else
                    "no model.safetensors" if weights is None and has_weights(checkpoint) else None)
    if whole_reason:
        log.warning("%s: every process loads the whole checkpoint, then shards it (%s)", checkpoint, whole_reason)
        return shard_backbone(load_backbone(model_cfg, checkpoint, seed=seed), mesh, param_dtype=param_dtype)

    family = family_of_checkpoint(checkpoint)
    config = family.config_class.from_pretrained(checkpoint)
    config._name_or_path = str(checkpoint.resolve())  # what adapters trained on it record as their base
    attn = attention_implementation(model_cfg.attn_implementation, DTYPES[model_cfg.dtype])
    with parameters_on_meta():
        base = family.model_class._from_config(config, dtype=DTYPES[model_cfg.dtype], attn_implementation=attn)
    require_token_types(base)
    params, buffer_slots = tensor_slots(base), tensor_slots(base, buffers=True)
    # Buffers as built (the rotary inverse frequencies, in no checkpoint: non-persistent); to_empty wipes them.
    buffers = [(slot, getattr(*slot).detach().clone()) for slot in buffer_slots.values()]
    if weights is not None:
        keys = weights.names_for(base)
        if missing := [name for name in params if name not in keys]:
            raise KeyError(f"{checkpoint} lacks {len(missing)} weights of the model, e.g. {missing[:3]}")
        # As from_pretrained (peft records it in adapter configs).
        base.config.name_or_path = base.name_or_path = str(checkpoint)
        if (checkpoint / "generation_config.json").is_file():
            base.generation_config = GenerationConfig.from_pretrained(checkpoint)
        template = None
    else:
        template = copy.deepcopy(base)  # unsharded, on meta: the shapes each random part is drawn in

    model = apply_finetune(base, model_cfg)
    adapters = initialise_adapters(model, seed)
    shard_backbone(model, mesh, param_dtype=param_dtype)
    model.to_empty(device=mesh_device(mesh))  # this process's shards only, uninitialised

    with torch.no_grad():
        for (module, attr), value in buffers:
            getattr(module, attr).copy_(value)
    filled: set[int] = set()

    def put(slot: Slot, read: Read) -> None:
        tensor = getattr(*slot)
        fill(tensor, read)
        filled.add(id(tensor))

    if template is None:
        for name, slot in params.items():
            put(slot, weights.reader(keys[name]))
        for name, slot in buffer_slots.items():
            if name in keys:  # a persistent buffer the checkpoint holds
                fill(getattr(*slot), weights.reader(keys[name]))
    else:
        for k, (group, whole) in enumerate(init_groups(template)):
            names = {name: f"{group}.{name}" if group else name for name, _ in
                     template.get_submodule(group).named_parameters(recurse=whole, remove_duplicate=False)}
            if not any(full in params for full in names.values()):
                continue  # e.g. a head tied to the embeddings: already drawn with them
            values = random_group(template, group, whole, seed=seed * 1_000_003 + k)
            for name, value in values.items():
                if names[name] in params:
                    put(params[names[name]], value.__getitem__)
            del values
    for slot, value in adapters:
        put(slot, value.__getitem__)
    if unfilled := [name for name, p in model.named_parameters() if id(p) not in filled]:
        raise AssertionError(f"sharded loading left {len(unfilled)} parameters uninitialised, e.g. {unfilled[:3]}")
    return model
