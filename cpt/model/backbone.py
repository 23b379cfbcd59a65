"""The one backbone every LightningModule trains: loading, fine-tuning mode, sharding, saving.

A checkpoint directory holds `config.json`, tokenizer and image-processor files, and usually weights. A
directory without weights (a shape preset) is initialised at random from the seed, which is how real-size
memory and speed are measured without downloading anything. Which classes and module paths a model has is its
family's (cpt.model.families), found from the checkpoint's config.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import BitsAndBytesConfig, PreTrainedModel

from cpt.errors import ConfigError
from cpt.model.families import family_of_checkpoint, family_of_model
from cpt.model.family import Family
from cpt.model.moe_lora import experts_of, load_moe_lora, moe_lora_config, write_marker
from cpt.model.positions import require_token_types
from cpt.model.stage_adapters import (
    active_adapters,
    adapters_marked_trainable,
    add_stage_adapters,
    load_adapter_stack,
)
from cpt.run_files import read_json

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def attention_implementation(requested: str, dtype: torch.dtype) -> str:
    """`auto`: flash-attention 2 where it can run (installed, CUDA, half-precision weights: its kernels refuse
    float32), else SDPA."""
    if requested != "auto":
        return requested
    if (dtype in (torch.bfloat16, torch.float16) and torch.cuda.is_available()
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def has_weights(checkpoint: Path) -> bool:
    return any(checkpoint.glob("*.safetensors")) or any(checkpoint.glob("*.bin"))


def adapter_base(checkpoint: Path) -> Path | None:
    """The base model of a directory that holds LoRA adapters only (a LoRA stage: its adapter_config.json names
    the base), or None for a directory that holds a whole model."""
    adapters = Path(checkpoint) / "adapter_config.json"
    if (Path(checkpoint) / "config.json").is_file() or not adapters.is_file():
        return None
    return Path(read_json(adapters)["base_model_name_or_path"])


def processor_source(checkpoint: Path) -> Path:
    """The directory whose processor a checkpoint uses: its own, or for a LoRA stage saved without one, its
    base's."""
    source = Path(checkpoint)
    while not (source / "tokenizer_config.json").is_file() and adapter_base(source) is not None:
        source = adapter_base(source)
    return source


def load_for_inference(model_cfg: DictConfig, checkpoint: Path, seed: int = 0) -> nn.Module:
    """A checkpoint as its run evaluated it: a LoRA stage as its base (merged down to the first) with the adapters
    on top, unmerged, so that the greedy answers are the run's to the last bit; a whole model as it is."""
    dtype = DTYPES[model_cfg.dtype]
    attn = attention_implementation(model_cfg.attn_implementation, dtype)
    base = adapter_base(checkpoint)
    if base is None:
        return load_model(Path(checkpoint), dtype, attn, seed=seed)
    experts = experts_of(checkpoint)
    if experts is not None:
        return load_moe_lora(load_model(base, dtype, attn, seed=seed), checkpoint, experts)
    return load_adapter_stack(load_model(base, dtype, attn, seed=seed), checkpoint)


def load_backbone(model_cfg: DictConfig, checkpoint: Path, seed: int = 0, adapters: int = 1,
                  experts: int | None = None) -> nn.Module:
    """The model from `checkpoint`, with adapters (`adapters` of them: one per stage for O-LoRA; MoELoRA layers of
    `experts` experts) or frozen parts as `model_cfg.finetune` asks."""
    dtype = DTYPES[model_cfg.dtype]
    attn = attention_implementation(model_cfg.attn_implementation, dtype)
    quantization = None
    if model_cfg.finetune == "qlora":
        family = family_of_checkpoint(checkpoint)
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=family.quantization_skip(),  # the vision tower and the head
        )
    return apply_finetune(load_model(Path(checkpoint), dtype, attn, quantization, seed), model_cfg, adapters, experts)


def load_model(checkpoint: Path, dtype: torch.dtype, attn: str, quantization=None, seed: int = 0) -> PreTrainedModel:
    """The whole model a checkpoint directory stands for: its weights, random ones from `seed` for a weightless
    shape, or for a LoRA stage its base (itself loaded this way: a stage of a run that started from a stage) with
    the adapters merged in. The model remembers the directory (absolute), which adapters trained on it record as
    their base."""
    checkpoint = checkpoint.resolve()
    base = adapter_base(checkpoint)
    if base is not None and experts_of(checkpoint) is not None:
        raise ConfigError(f"{checkpoint} is a MoELoRA stage: its router weighs the experts per token, so they cannot "
                         "be merged into a model to start from or export; evaluate or sample it as it is")
    if base is not None:
        # The model this run starts from, so that RFT's `base` reference (the model with its own adapters off) is
        # the stage's model, not the first base.
        model = load_adapter_stack(load_model(base, dtype, attn, seed=seed), checkpoint).merge_and_unload()
    elif has_weights(checkpoint):
        model = family_of_checkpoint(checkpoint).model_class.from_pretrained(
            checkpoint, dtype=dtype, attn_implementation=attn, quantization_config=quantization
        )
    else:
        if quantization is not None:
            raise ValueError(f"{checkpoint} has no weights to quantize; use model.finetune=lora or full")
        family = family_of_checkpoint(checkpoint)
        config = family.config_class.from_pretrained(checkpoint)
        torch.manual_seed(seed)
        model = family.model_class._from_config(config, dtype=dtype, attn_implementation=attn)
    if base is None:  # a stage's base has its guard already
        require_token_types(model)
    model.name_or_path = model.config._name_or_path = str(checkpoint)
    return model


def apply_finetune(model: PreTrainedModel, model_cfg: DictConfig, adapters: int = 1,
                   experts: int | None = None) -> nn.Module:
    """Wrap in LoRA adapters (`adapters` > 1: one per stage, cpt.model.stage_adapters; `experts`: MoELoRA layers,
    cpt.model.moe_lora), or choose which full weights train."""
    family = family_of_model(model)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if model_cfg.finetune == "full":
        model.requires_grad_(True)
        if model_cfg.freeze_vision:
            family.vision(model).requires_grad_(False)
        if model_cfg.trainable != "all":
            chosen = family.trainable()[model_cfg.trainable]
            for name, param in model.named_parameters():
                if not chosen.search(name):
                    param.requires_grad_(False)
        return model
    lora = model_cfg.lora
    # peft matches a string target as a regex on the full module name: the vision tower stays out unless asked.
    pattern = family.lora_pattern(list(lora.target_modules), lora.vision)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # see has_adapters

    if model_cfg.finetune == "qlora":
        # peft's preparation of a 4-bit model: the weights left in half precision (vision tower, head, norms) in
        # float32 for stable adapters' gradients, inputs that carry gradients (for checkpointing).
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=model_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=pattern,
                             task_type="CAUSAL_LM")
    if experts is not None:
        peft_config = moe_lora_config(peft_config, experts)
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as error:  # peft's NoMatchingPeftModuleError (a ValueError in older versions' own words)
        if "target" not in str(error).lower():
            raise
        raise ConfigError(f"model.lora.target_modules={list(lora.target_modules)} names no linear layer of the "
                          f"language model{' or the vision tower' if lora.vision else ''}; its linear layers "
                          f"are {', '.join(language_linear_layers(model, family))}") from None
    if adapters > 1:
        add_stage_adapters(model, adapters)
    return model


def language_linear_layers(model: nn.Module, family: Family) -> list[str]:
    """The names of the language model's linear layers, each once, in the model's order (the head's last)."""
    tower = family.vision_name()
    names = [name.rpartition(".")[2] for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and tower not in name.split(".")]
    return list(dict.fromkeys(names))


def has_adapters(model: nn.Module) -> bool:
    """Whether `model` is a peft model. peft is imported only where adapters are made: with bitsandbytes it takes
    seconds to import, which a run or a command without adapters need not wait for."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_model(model: nn.Module) -> PreTrainedModel:
    return model.get_base_model() if has_adapters(model) else model


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: every decoder layer and every vision block."""
    names = set(family_of_model(base_model(model)).fsdp_units)
    return [module for module in model.modules() if type(module).__name__ in names]


def shard_backbone(model: nn.Module, mesh, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: each unit gathers its parameters only while it runs; the root holds the rest (embeddings, head).

    The root is the transformers model itself, not a peft wrapper around it: `generate` calls the inner model's
    forward, and the root's gathering hooks must fire there too. (`generate` also runs the vision tower before
    that forward: see `cpt.model.generation.generate_ids`.)
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(base_model(model), mesh=mesh, mp_policy=policy)
    return model


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 unit of `model` back in its sharded state. FSDP2 leaves the root gathered after a forward
    (expecting a backward soon); a module that only runs without gradient must be resharded by hand before its
    parameters are read or written as shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter (or a copy of one): its shard under FSDP, the whole tensor otherwise."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; 4-bit weights are counted as the parameters they stand for."""
    total = trainable = 0
    for param in model.parameters():
        n = param.numel() * (2 if param.dtype == torch.uint8 else 1)  # NF4 packs two weights per byte
        total += n
        trainable += n if param.requires_grad else 0
    return total, trainable


def save_weights(model: nn.Module, path: Path, is_main: bool = True) -> None:
    """Adapters (LoRA) or the full weights, in the usual save_pretrained layout. Call on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    adapters_only = has_adapters(model)
    # Gathers shards under FSDP; every rank must take part, only the main one writes. For LoRA only the
    # adapters are gathered, not the frozen base.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapters_only)
    if adapters_only:
        with adapters_marked_trainable(model):  # earlier stages' frozen adapters are part of the model (O-LoRA)
            state = get_model_state_dict(model, options=options)
    else:
        state = get_model_state_dict(model, options=options)
    if not is_main:
        return
    path.mkdir(parents=True, exist_ok=True)
    # Adapters never include the embeddings (LoRA targets the projections): peft need not look for the base's
    # vocabulary, which a base that is itself a LoRA stage does not state.
    # The adapters in the forward: with one per stage (O-LoRA), those of the stages so far, not the later ones.
    extra = {"save_embedding_layers": False, "selected_adapters": active_adapters(model)} if adapters_only else {}
    model.save_pretrained(path, state_dict=state, **extra)
    write_marker(model, path)
