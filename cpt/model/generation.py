"""Decoding with the KV cache: greedy for evaluation, sampled for RFT rollouts; works under FSDP2.

Under FSDP every rank must run the same number of forward passes (each one gathers shards), so with several
ranks `synced_gpus` keeps a finished rank stepping until all are done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from transformers import GenerationConfig

from cpt.data.batches import Batch
from cpt.model.backbone import base_model
from cpt.model.processor import VisionTextProcessor


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0


@torch.no_grad()
def generate_ids(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int,
                 synced: bool = False, sampling: Sampling | None = None) -> torch.Tensor:
    """The new tokens for every row of a collated batch of prompts, (rows, <= max_new_tokens), padded with
    `processor.pad_id` after each row's end-of-turn token. Greedy unless `sampling` is given."""
    # Under FSDP2, generate runs the vision tower (get_image_features) before the first forward of the root.
    # FSDP2 would take the first module to run for its root, and the root's own weights (patch embedding,
    # merger, embeddings) would still be sharded: settle the root (a no-op once done) and gather them first.
    root = base_model(model)
    sharded = isinstance(root, FSDPModule)
    if sharded:
        root._get_fsdp_state()._lazy_init()  # private in torch 2.13; the public path is a forward of the root
        root.unshard()
    # A fresh generation config, not the checkpoint's: Qwen2.5-VL ships a repetition penalty and top_k, and RFT
    # must sample from the plain softmax(logits / temperature) that its loss scores.
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=processor.pad_id,
                              eos_token_id=processor.eos_id, suppress_tokens=processor.placeholder_ids, do_sample=False)
    if sampling is not None:
        config.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    try:
        out = model.generate(**batch.model_inputs(), generation_config=config, synced_gpus=synced)
    finally:
        if sharded:
            root.reshard()
    return out[:, batch.input_ids.shape[1]:]


def generate(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int,
             synced: bool = False) -> list[str]:
    """Greedy completions as text."""
    return [processor.decode(row) for row in generate_ids(model, processor, batch, max_new_tokens, synced)]
