"""Decoding with the KV cache: greedy for evaluation, sampled for RFT rollouts; works under FSDP2.

RFT samples G completions of every prompt. With a `PromptCache` each prompt (its images included) is encoded and
prefilled once, and its cache is copied to the G rows that continue it, instead of G identical prefills. Every token
takes the model's own M-RoPE position: `generate` builds them from the batch's token types, and a prompt cache
hands them over with its cache (cpt.model.positions).

Under FSDP every rank must run the same number of forward passes (each one gathers shards), so with several
ranks `synced_gpus` keeps a finished rank stepping until all are done.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from transformers import Cache, GenerationConfig

from cpt.data.batches import Batch
from cpt.model.backbone import base_model
from cpt.model.positions import reset_rope_offsets, rope_positions
from cpt.model.processor import VisionTextProcessor


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class PromptCache:
    """The cache of a batch of prompts (keys and values; a linear-attention layer's convolution and recurrent
    states) over every token but the last (generation needs one uncached token to start from), computed once and
    copied for each use; and every prompt token's position, from which `generate` continues each row."""

    cache: Cache
    positions: torch.Tensor  # (3, rows, width): the model's M-RoPE positions of the prompts (cpt.model.positions)

    @classmethod
    @torch.no_grad()
    def prefill(cls, model: nn.Module, prompts: Batch) -> PromptCache:
        positions, _ = rope_positions(base_model(model), prompts)
        inputs = {name: value[:, :-1] if name in ("input_ids", "attention_mask", "mm_token_type_ids") else value
                  for name, value in prompts.model_inputs().items()}
        out = model(**inputs, position_ids=positions[..., :-1], use_cache=True, logits_to_keep=1)
        return cls(getattr(out, cache_keyword(model)), positions)

    def repeated(self, times: int) -> tuple[Cache, torch.Tensor]:
        """A fresh copy of the cache for `times` rows per prompt (generation extends it in place), and the
        positions of those rows."""
        cache = copy.deepcopy(self.cache)
        if times > 1:
            # Every state the layers keep (keys and values; a linear-attention layer's convolution and recurrent
            # states), each row `times` times: transformers' reordering covers all layer kinds, its batch repeat not.
            rows = self.positions.shape[1]
            cache.reorder_cache(torch.arange(rows, device=self.positions.device).repeat_interleave(times))
        return cache, self.positions.repeat_interleave(times, 1)


def cache_keyword(model: nn.Module) -> str:
    """The name of the KV cache in the model's forward and outputs: `cache` since transformers 5.2x,
    `past_key_values` before (5.17, which GPU images still ship)."""
    forward = inspect.signature(base_model(model).forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


@torch.no_grad()
def generate_ids(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int,
                 synced: bool = False, sampling: Sampling | None = None, repeats: int = 1,
                 prefix: PromptCache | None = None, min_new_tokens: int = 0) -> torch.Tensor:
    """The new tokens for every row of a collated batch of prompts, each row `repeats` times in a row, as
    (rows * repeats, <= max_new_tokens), padded with `processor.pad_id` after each row's end-of-turn token.
    Greedy unless `sampling` is given. With `prefix` (the batch's PromptCache) the prompts are not encoded again.
    `min_new_tokens`: the end of turn is held back until then (benchmarks: a random model's lengths are forced)."""
    out = _generate(model, processor, batch, max_new_tokens, synced, sampling, repeats, prefix, scores=False,
                    min_new_tokens=min_new_tokens)
    return out.sequences[:, batch.input_ids.shape[1]:]


@torch.no_grad()
def generate_ids_and_log_probs(model: nn.Module, processor: VisionTextProcessor, batch: Batch,
                               max_new_tokens: int, sampling: Sampling, repeats: int = 1,
                               prefix: PromptCache | None = None, synced: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`generate_ids`' sampled tokens, and (rows * repeats, tokens) the log-probability of each under the
    distribution it was drawn from (the decoding step's scores after temperature and suppression): what the RFT
    update must compute for it to be on-policy. For checks: it keeps every step's scores over the vocabulary."""
    out = _generate(model, processor, batch, max_new_tokens, synced, sampling, repeats, prefix, scores=True)
    ids = out.sequences[:, batch.input_ids.shape[1]:]
    steps = torch.stack(out.scores, 1).float().log_softmax(-1)  # (rows, tokens, vocab)
    return ids, steps.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def _generate(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int, synced: bool,
              sampling: Sampling | None, repeats: int, prefix: PromptCache | None, scores: bool,
              min_new_tokens: int = 0):
    # Under FSDP2, generate runs the vision tower (get_image_features) before the first forward of the root.
    # FSDP2 would take the first module to run for its root, and the root's own weights (patch embedding,
    # merger, embeddings) would still be sharded: settle the root (a no-op once done) and gather them first.
    root = base_model(model)
    sharded = isinstance(root, FSDPModule)
    if sharded:
        root._get_fsdp_state()._lazy_init()  # private in torch 2.13; the public path is a forward of the root
        root.unshard()
    # A fresh generation config, not the checkpoint's: Qwen-VL ships a repetition penalty and top_k, and RFT
    # must sample from the plain softmax(logits / temperature) that its loss scores.
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=processor.pad_id,
                              eos_token_id=processor.eos_id, suppress_tokens=processor.placeholder_ids, do_sample=False,
                              return_dict_in_generate=True, output_scores=scores,
                              min_new_tokens=min_new_tokens or None)
    if sampling is not None:
        config.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    reset_rope_offsets(root)  # each call places its own rows (transformers keeps the last call's offsets)
    try:
        if prefix is None:
            # From the token types, generate builds the model's M-RoPE positions and continues them.
            rows = batch.repeat(repeats) if repeats > 1 else batch
            return model.generate(**rows.model_inputs(), generation_config=config, synced_gpus=synced)
        # The images are in the cache: ids and mask go in, with every prompt position, which generate continues
        # one per new token.
        cache, positions = prefix.repeated(repeats)
        return model.generate(input_ids=batch.input_ids.repeat_interleave(repeats, 0),
                              attention_mask=batch.attention_mask.repeat_interleave(repeats, 0),
                              position_ids=positions, generation_config=config, synced_gpus=synced,
                              **{cache_keyword(model): cache})
    finally:
        reset_rope_offsets(root)
        if sharded:
            root.reshard()


def generate(model: nn.Module, processor: VisionTextProcessor, batch: Batch, max_new_tokens: int,
             synced: bool = False) -> list[str]:
    """Greedy completions as text."""
    return [processor.decode(row) for row in generate_ids(model, processor, batch, max_new_tokens, synced)]
