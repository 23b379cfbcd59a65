"""Decoding with the KV cache: greedy for evaluation, sampled for RFT rollouts; works under FSDP2.

RFT samples G completions of every prompt. With a `PromptCache` each prompt (its images included) is encoded and
prefilled once, and its cache is copied to the G rows that continue it, instead of G identical prefills.

Under FSDP every rank must run the same number of forward passes (each one gathers shards), so with several
ranks `synced_gpus` keeps a finished rank stepping until all are done.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from transformers import Cache, GenerationConfig

from cpt.data.batches import Batch
from cpt.model.backbone import base_model
from cpt.model.processor import VisionTextProcessor


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class PromptCache:
    """The KV cache of a batch of prompts, every token but the last (generation needs one uncached token to start
    from), computed once and copied for each use."""

    cache: Cache

    @classmethod
    @torch.no_grad()
    def prefill(cls, model: nn.Module, prompts: Batch) -> PromptCache:
        mask = prompts.attention_mask[:, :-1]
        # The positions `generate` gives the prompt tokens (left padding does not count), so that it continues them.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {**prompts.model_inputs(), "input_ids": prompts.input_ids[:, :-1], "attention_mask": mask}
        return cls(model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1).cache)

    def repeated(self, times: int) -> Cache:
        """A fresh copy for `times` rows per prompt (generation extends the cache in place)."""
        cache = copy.deepcopy(self.cache)
        if times > 1:
            cache.batch_repeat_interleave(times)
        return cache


@torch.no_grad()
def generate_ids(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int,
                 synced: bool = False, sampling: Sampling | None = None, repeats: int = 1,
                 prefix: PromptCache | None = None) -> torch.Tensor:
    """The new tokens for every row of a collated batch of prompts, each row `repeats` times in a row, as
    (rows * repeats, <= max_new_tokens), padded with `processor.pad_id` after each row's end-of-turn token.
    Greedy unless `sampling` is given. With `prefix` (the batch's PromptCache) the prompts are not encoded again."""
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
        if prefix is None:
            rows = batch.repeat(repeats) if repeats > 1 else batch
            out = model.generate(**rows.model_inputs(), generation_config=config, synced_gpus=synced)
        else:
            # The images are in the cache: only ids and mask go in. Positions restart from the mask, as after a
            # plain prefill; the 3D rope offsets of an earlier call would not fit these rows.
            root.model.rope_deltas = None
            out = model.generate(input_ids=batch.input_ids.repeat_interleave(repeats, 0),
                                 attention_mask=batch.attention_mask.repeat_interleave(repeats, 0),
                                 cache=prefix.repeated(repeats), generation_config=config, synced_gpus=synced)
    finally:
        if sharded:
            root.reshard()
    return out[:, batch.input_ids.shape[1]:]


def generate(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int,
             synced: bool = False) -> list[str]:
    """Greedy completions as text."""
    return [processor.decode(row) for row in generate_ids(model, processor, batch, max_new_tokens, synced)]
