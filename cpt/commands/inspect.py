"""`python -m cpt inspect [CONFIG.yaml] [key=value ...]`: the configured backbone sized without memory. Built on the
meta device, it reports parameter counts, what LoRA trains, the FSDP units it would be sharded into, what its cache
holds and whether RFT can pack a group's completions behind one prompt."""

from __future__ import annotations

from collections import Counter

import torch
from omegaconf import DictConfig, OmegaConf

from cpt.config import config_from_args
from cpt.model.backbone import DTYPES, apply_finetune, count_parameters, fsdp_units
from cpt.model.families import family_of_checkpoint
from cpt.model.presets import resolve_checkpoint


def describe_backbone(cfg: DictConfig) -> dict:
    checkpoint = resolve_checkpoint(cfg, build_weights=False)
    family = family_of_checkpoint(checkpoint)
    config = family.config_class.from_pretrained(checkpoint)
    with torch.device("meta"):
        model = family.model_class._from_config(config, dtype=DTYPES[cfg.model.dtype])
        # On meta there is nothing to quantize: QLoRA trains the same adapters as LoRA.
        finetune = "lora" if cfg.model.finetune == "qlora" else cfg.model.finetune
        # MoELoRA's routers train with the adapters: built as the run builds them, so that they are counted.
        experts = cfg.moe_lora.experts if cfg.moe_lora.enabled else None
        model = apply_finetune(model, OmegaConf.merge(cfg.model, {"finetune": finetune}), experts=experts)
    total, trainable = count_parameters(model)
    units = fsdp_units(model)
    unit_params = [sum(p.numel() for p in unit.parameters()) for unit in units]
    sharded = sum(unit_params)
    vision = family.vision_name()
    return {
        "family": family.display_name,
        "total_params": total,
        "trainable_params": trainable,
        "vision_params": sum(p.numel() for n, p in model.named_parameters() if f".{vision}." in f".{n}"),
        "fsdp_units": dict(Counter(type(unit).__name__ for unit in units)),
        "fsdp_unit_params_max": max(unit_params, default=0),
        "fsdp_root_params": total - sharded,
        "bytes_per_param": torch.finfo(DTYPES[cfg.model.dtype]).bits // 8,
        "cached_state": list(family.cached_state),
        "packable": family.packable,
    }


def format_description(name: str, d: dict) -> str:
    units = ", ".join(f"{n} x {k}" for k, n in d["fsdp_units"].items())
    gib = d["total_params"] * d["bytes_per_param"] / 2**30
    return "\n".join([
        f"backbone            {name} ({d['family']})",
        f"parameters          {d['total_params']:,} ({d['total_params'] / 1e9:.2f}B; {gib:.1f} GiB of weights)",
        f"  vision tower      {d['vision_params']:,}",
        f"trainable           {d['trainable_params']:,} ({100 * d['trainable_params'] / d['total_params']:.2f}%)",
        f"FSDP units          {units}",
        f"  largest unit      {d['fsdp_unit_params_max']:,} parameters",
        f"  root              {d['fsdp_root_params']:,} parameters: embeddings, head, final norm, vision patch "
        "embedding and merger",
        f"cache               {'; '.join(d['cached_state'])}",
        "RFT shared prompt   " + ("packed: one sequence per group (rft.shared_prefix; SDPA or eager attention)"
                                  if d["packable"] else "forked: the prompt's cache continued by every rollout "
                                  "(rft.shared_prefix; a recurrence cannot be packed)"),
    ])


def main(args: list[str]) -> int:
    cfg = config_from_args(args)
    print(format_description(cfg.model.name_or_path, describe_backbone(cfg)))
    return 0
