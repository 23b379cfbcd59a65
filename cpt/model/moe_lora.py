"""MoELoRA (as CoIN, Chen et al. 2024, uses it): a LoRA whose rank is split into experts mixed per token by a router.

In every adapted linear layer of input x, with LoRA's A (r, in), B (out, r) and scale alpha / r,

    h = W0 x + (alpha / r) * sum_e g_e(x) B_e A_e x,     g(x) = softmax(W_router x),  W_router (experts, in)

where expert e owns the r / experts rows of A and columns of B in its block, so one expert is plain LoRA. The
router has no bias, and there is no load-balancing loss, as in CoIN.

It is a peft LoRA layer (peft's custom-module support maps each `nn.Linear` target to `MoELoRALinear`): peft makes,
trains, saves and loads it like its own LoRA, the router being one more adapter weight (`lora_router`). A's and B's
initialisation is peft's LoRA's (B = 0, so the model starts as the base; A as in the plain LoRA the study compares
against), the router's nn.Linear's. A stage directory records the expert count in `moe_lora.json`, beside peft's
files. The router weighs the experts per token, so the adapters cannot be merged into the weights: a MoELoRA stage
is evaluated and sampled with them on top (`load_moe_lora`), and not exported as a plain checkpoint.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cpt.run_files import read_json

MARKER = "moe_lora.json"  # in a stage directory: {"experts": E}


def moe_lora_layer(experts: int) -> type:
    """peft's custom LoRA layer class for `nn.Linear` targets, with `experts` experts."""
    from peft.tuners.lora.layer import Linear

    @functools.cache
    def layer_class(experts: int) -> type:
        class MoELoRALinear(Linear):
            def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config, **kwargs) -> None:
                if r % experts:
                    raise ValueError(f"MoELoRA splits the LoRA rank into experts: rank {r} is not a multiple of "
                                     f"{experts} experts; change model.lora.r or moe_lora.experts")
                super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)
                if "lora_router" not in self.adapter_layer_names:  # peft trains, saves and loads it as an adapter's
                    self.adapter_layer_names = (*self.adapter_layer_names, "lora_router")
                    self.lora_router = nn.ModuleDict()
                weight = self.lora_A[adapter_name].weight
                self.lora_router[adapter_name] = nn.Linear(self.in_features, experts, bias=False).to(
                    weight.device, weight.dtype)
                self.experts = experts

            def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
                    return super().forward(x, *args, **kwargs)  # the base alone (merging is refused below)
                result = self.base_layer(x, *args, **kwargs)
                for name in self.active_adapters:
                    if name not in self.lora_A:
                        continue
                    a = self._cast_input_dtype(x, self.lora_A[name].weight.dtype)
                    gate = self.lora_router[name](a).softmax(-1)  # (..., experts)
                    low = self.lora_A[name](self.lora_dropout[name](a))  # (..., r): expert e's block is its own
                    low = low * gate.repeat_interleave(low.shape[-1] // self.experts, dim=-1)
                    result = result + (self.lora_B[name](low) * self.scaling[name]).to(result.dtype)
                return result

            def merge(self, *args: Any, **kwargs: Any) -> None:
                raise ValueError("MoELoRA's router weighs its experts per token: its adapters cannot be merged into "
                                 "the weights; evaluate or sample the stage directory as it is (cpt eval, cpt "
                                 "generate)")

        return MoELoRALinear

    return layer_class(experts)


def moe_lora_config(config, experts: int):
    """`config` (a peft LoraConfig) with its linear targets made MoELoRA layers of `experts` experts."""
    config._register_custom_module({nn.Linear: moe_lora_layer(experts)})
    return config


def experts_of(checkpoint: Path) -> int | None:
    """The expert count a MoELoRA stage directory records, or None for any other directory."""
    marker = Path(checkpoint) / MARKER
    return read_json(marker)["experts"] if marker.is_file() else None


def write_marker(model: nn.Module, path: Path) -> None:
    """Record the expert count of a model with MoELoRA layers in the directory it is saved to."""
    experts = {m.experts for m in model.modules() if hasattr(m, "lora_router") and hasattr(m, "experts")}
    if experts:
        (Path(path) / MARKER).write_text(json.dumps({"experts": experts.pop()}) + "\n")


def load_moe_lora(base: nn.Module, checkpoint: Path, experts: int) -> nn.Module:
    """`base` with the MoELoRA adapters of a stage directory on top."""
    from peft import LoraConfig, PeftModel

    config = moe_lora_config(LoraConfig.from_pretrained(checkpoint), experts)
    return PeftModel.from_pretrained(base, checkpoint, config=config)
