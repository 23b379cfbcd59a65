"""Log-probabilities of completion tokens under a model: what the policy loss, the KL term and the forgetting
analysis are computed from.

Two costs dominate at the size users run (G rollouts per prompt, prompts of hundreds of image tokens, a vocabulary
of 152k), and both are avoidable:
  - the prompt repeated on each of its G rows: with `groups`, each prompt (its image included) runs once and its
    G completions attend to it, gradients flowing back through the shared prompt: packed into one sequence with a
    block mask (SDPA or eager attention; flash-attention takes no such mask, and the prompt is repeated), or, in a
    family with linear-attention layers, whose recurrence a mask does not cut, continued from the prompt's cache
    forked to its G rows;
  - the float32 logits over the whole vocabulary for every completion token (64 rollouts x 256 tokens x 152k is
    10 GB, and log_softmax and the entropy make more of that size): with `chunk`, the head runs on at most `chunk`
    tokens at a time and is recomputed in the backward pass instead of kept.
Both give the values of the plain path (tests/rl/test_log_probs.py; the forked pass within float32 rounding, its
recurrence split at other places), which stays available for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MethodType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Cache

from cpt.data.batches import Batch
from cpt.model.backbone import base_model
from cpt.model.families import family_of_model
from cpt.model.generation import cache_keyword
from cpt.model.positions import rope_positions


def token_log_probs(model: nn.Module, prompts: Batch, completion_ids: torch.Tensor, mask: torch.Tensor,
                    temperature: float, with_entropy: bool = False, groups: torch.Tensor | None = None,
                    chunk: int | None = None, suppressed: Sequence[int] = (), entropy_grad: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows, tokens) log pi(token | prefix) of every completion token under the sampling temperature, and the
    entropy of the next-token distribution (a health metric without gradient; with `entropy_grad`, a loss term
    with it) or None. pi is the distribution sampling draws from: softmax(logits / temperature) without the
    `suppressed` tokens (generation never writes the image and vision markers: cpt.model.generation), so that the
    rollouts are the policy's own samples.

    Row i is `prompts` row i followed by `completion_ids` row i, attending to the completion where `mask` is set.
    `groups` (rows,): rows with the same id in a run share one prompt forward (they must hold the same prompt);
    None repeats the prompt on every row. `chunk`: completion tokens whose logits exist at once; None computes
    them all in the model's forward.
    """
    sharing = None if groups is None else prompt_sharing(model, prompts, completion_ids, groups)
    if sharing is None:
        sequences = prompts.with_completions(completion_ids, mask)
        if chunk is None:
            return logits_log_probs(target_logits(model, sequences, completion_ids.shape[1]), completion_ids,
                                    temperature, with_entropy, suppressed, entropy_grad)
        hidden = _final_hidden(model, sequences.model_inputs())[:, -completion_ids.shape[1] - 1:-1]
    elif sharing == "packed":
        hidden = _shared_prefix_hidden(model, prompts, completion_ids, mask, groups)
    else:
        hidden = _forked_prefix_hidden(model, prompts, completion_ids, mask, groups)
    return head_log_probs(base_model(model).lm_head, hidden, completion_ids, temperature, with_entropy, chunk,
                          suppressed, entropy_grad)


def target_logits(model: nn.Module, sequences: Batch, n: int) -> torch.Tensor:
    """(rows, n, vocab) float: the model's logits predicting each of the last n tokens of every row (the logits at
    position i predict token i + 1: the last n + 1 positions cover them)."""
    return model(**sequences.model_inputs(), logits_to_keep=n + 1).logits[:, :-1].float()


def logits_log_probs(logits: torch.Tensor, ids: torch.Tensor, temperature: float, with_entropy: bool = False,
                     suppressed: Sequence[int] = (), entropy_grad: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_log_probs` from the logits predicting `ids` (rows, tokens, vocab), which are left as they are."""
    log_probs = _suppress(logits / temperature, suppressed).log_softmax(-1)
    chosen = log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    return chosen, entropy


def _final_hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The language model's last hidden states (after its final norm) for every input position, through the
    model's own forward (so FSDP's and peft's hooks run) with the head applied to one position only."""
    return _final_hidden_and_output(model, inputs)[0]


def _final_hidden_and_output(model: nn.Module, inputs: dict) -> tuple[torch.Tensor, object]:
    """`_final_hidden`, and the forward's output (its cache, where one was asked for)."""
    captured = []
    norm = family_of_model(base_model(model)).norm(base_model(model))
    handle = norm.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        out = model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1], out


def _runs(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rows grouped in runs of equal ids: whether each row starts its run, each row's run, and its place in
    the run."""
    first = torch.ones(len(groups), dtype=torch.bool)
    first[1:] = groups[1:].cpu() != groups[:-1].cpu()
    run = first.cumsum(0) - 1
    slot = torch.arange(len(groups)) - first.nonzero().squeeze(1)[run]
    return first, run, slot


def _shared_prefix_hidden(model: nn.Module, prompts: Batch, ids: torch.Tensor, mask: torch.Tensor,
                          groups: torch.Tensor) -> torch.Tensor:
    """(rows, tokens, hidden): the hidden states that predict each completion token, each run of rows of the same
    group reading one pass over their prompt.

    A run becomes one sequence, its prompt followed by its completions side by side, under a mask that lets every
    completion see the prompt and its own tokens but not its siblings'. One forward then covers the run: the
    prompt's keys and values are computed once and every completion's gradient reaches them. Positions are those
    of the repeated forward: the prompt's the model's own M-RoPE ones, every completion slot continuing at the
    prompt's largest position + 1 (cpt.model.positions). One forward, not a prompt cache read by a second one, so
    that FSDP's gather-before-backward hooks and gradient checkpointing see an ordinary forward.
    """
    rows, n = ids.shape
    device = ids.device
    first, run, slot = _runs(groups)
    runs, slots = int(run[-1]) + 1, int(slot.max()) + 1
    unique = prompts.select(first.nonzero().squeeze(1).tolist())
    width = unique.input_ids.shape[1]
    total = width + slots * n

    input_ids = torch.zeros((runs, slots, n), dtype=ids.dtype, device=device)  # unused slots stay unattended
    valid = torch.zeros((runs, slots, n), dtype=torch.bool, device=device)
    input_ids[run, slot], valid[run, slot] = ids, mask
    packed = unique.with_completions(input_ids.flatten(1), valid.flatten(1))
    valid = packed.attention_mask.bool()  # (runs, total) keys that exist

    # Which part of the sequence each column is in (-1: the prompt, s: completion slot s), and its position.
    part = torch.cat([torch.full((width,), -1), torch.arange(slots).repeat_interleave(n)]).to(device)
    prompt_positions, next_position = rope_positions(base_model(model), unique)
    continued = next_position[:, None] + torch.arange(n, device=device).repeat(slots)  # (runs, slots * n)
    position = torch.cat([prompt_positions, continued.expand(3, -1, -1)], -1)
    column = torch.arange(total, device=device)
    causal = column[None, :] <= column[:, None]
    same_part = (part[None, :] == -1) | (part[None, :] == part[:, None])
    attend = causal & same_part & valid[:, None, :]
    attend |= torch.eye(total, dtype=torch.bool, device=device)  # a padding query sees itself: no empty softmax
    inputs = {**packed.model_inputs(), "attention_mask": _attention_mask(model, attend[:, None]),
              "position_ids": position}
    hidden = _final_hidden(model, inputs)
    # Completion token t of slot s is predicted at column width + s * n + t - 1 (the prompt's last for t = 0).
    predictors = width - 1 + slot[:, None] * n + torch.arange(n)
    predictors[:, 0] = width - 1
    return hidden[run.to(device)[:, None], predictors.to(device)]


def _forked_prefix_hidden(model: nn.Module, prompts: Batch, ids: torch.Tensor, mask: torch.Tensor,
                          groups: torch.Tensor) -> torch.Tensor:
    """`_shared_prefix_hidden` for a model with recurrent layers, which cannot be packed: one forward over each
    run's prompt keeps its cache (keys and values, convolution and recurrent states), which is forked to the run's
    rows, and a second forward continues every completion from it. Gradients reach the prompt through the forked
    states, as they reach it through the shared keys and values of the packed pass."""
    n = ids.shape[1]
    device = ids.device
    first, run, _ = _runs(groups)
    unique = prompts.select(first.nonzero().squeeze(1).tolist())
    positions, next_position = rope_positions(base_model(model), unique)
    keyword = cache_keyword(model)
    prompt_hidden, out = _final_hidden_and_output(
        model, {**unique.model_inputs(), "position_ids": positions, "use_cache": True})
    run = run.to(device)
    cache = fork_cache(getattr(out, keyword), run)
    continued = (next_position[run, None] + torch.arange(n, device=device)).expand(3, -1, -1)
    attention = torch.cat([unique.attention_mask[run], mask.to(unique.attention_mask.dtype)], 1)
    hidden = _final_hidden(model, {"input_ids": ids, "attention_mask": attention, "position_ids": continued,
                                   keyword: cache})
    # Completion token 0 is predicted by the prompt's last position, token t by completion token t - 1.
    return torch.cat([prompt_hidden[run, -1:], hidden[:, :-1]], 1)


def fork_cache(cache: Cache, rows: torch.Tensor) -> Cache:
    """`cache` with its row rows[i] as row i, every layer state copied (transformers' reordering covers keys and
    values and linear attention's states alike), for one forward that continues it and backpropagates through it.
    transformers writes a linear-attention layer's new states into the old ones in place, which autograd refuses
    when the old ones fed the same forward; here they replace them instead (the cache is used once)."""
    cache.reorder_cache(rows)
    for layer in cache.layers:
        if hasattr(layer, "recurrent_states"):
            layer.update_conv_state = MethodType(_replace_conv_state, layer)
            layer.update_recurrent_state = MethodType(_replace_recurrent_state, layer)
    return cache


def _replace_conv_state(layer, conv_states: torch.Tensor, state_idx: int = 0, **_) -> torch.Tensor:
    full = torch.cat([layer.conv_states[state_idx], conv_states], dim=-1)  # the convolution's left context
    layer.conv_states[state_idx] = full[..., -layer.conv_kernel_size[state_idx]:]
    return full


def _replace_recurrent_state(layer, recurrent_states, state_idx: int = 0, **_) -> torch.Tensor:
    last = recurrent_states if isinstance(recurrent_states, torch.Tensor) else recurrent_states[-1]
    layer.recurrent_states[state_idx] = last
    return last


def prompt_sharing(model: nn.Module, prompts: Batch, completion_ids: torch.Tensor, groups: torch.Tensor
                   ) -> str | None:
    """How a pass over `groups` of rows shares their prompts: "packed" (one sequence per run, block masks),
    "forked" (the prompt's cache forked to its rows: a family with recurrent layers), or None (each row repeats
    its prompt: flash-attention takes no block mask, a short prompt does not pay for packing, or gradient
    checkpointing keeps no cache)."""
    if why_prompts_repeat(model) is not None or not bool((groups[1:] == groups[:-1]).any()):
        return None  # (a group of one row has nothing to share)
    if not family_of_model(base_model(model)).packable:
        return "forked"  # the packed pass's tokens, without the masked query-key pairs it pays for
    hidden_size = base_model(model).config.get_text_config().hidden_size
    return "packed" if packing_pays(prompts, completion_ids, groups, hidden_size) else None


def _checkpointing(model: nn.Module) -> bool:
    """Whether the model recomputes activations in its backward pass, which keeps no cache: transformers' name
    for it since 5.2x, and before (5.17, which GPU images still ship)."""
    root = base_model(model)
    if hasattr(type(root), "is_activation_checkpointing"):
        return root.is_activation_checkpointing
    return root.is_gradient_checkpointing


def packing_pays(prompts: Batch, completion_ids: torch.Tensor, groups: torch.Tensor, hidden_size: int) -> bool:
    """Whether one sequence of a prompt and its r completions costs less compute than r repeated rows. Per layer a
    token costs about 40 d^2 FLOPs in its projections and MLP, and a query-key pair about 4 d in attention (masked
    pairs included: the kernels do not skip them), so the cost is ~ tokens * 10 d + pairs: packing saves
    (r - 1) P tokens and costs (P + r n)^2 - r (P + n)^2 more pairs, which only long completions outweigh."""
    width, n = prompts.input_ids.shape[1], completion_ids.shape[1]
    runs = int((groups[1:] != groups[:-1]).sum()) + 1
    r = len(groups) / runs
    packed = 10 * hidden_size * (width + r * n) + (width + r * n) ** 2
    repeated = r * (10 * hidden_size * (width + n) + (width + n) ** 2)
    return packed <= repeated


def why_prompts_repeat(model: nn.Module) -> str | None:
    """Why the model's log-probability passes cannot share a prompt among its rollouts, or None where they can."""
    if not family_of_model(base_model(model)).packable:
        if _checkpointing(model):
            return ("gradient checkpointing keeps no cache to fork a prompt's recurrent state from "
                    "(model.gradient_checkpointing=false shares it)")
        return None
    if base_model(model).config._attn_implementation not in ("sdpa", "eager"):
        return "flash-attention takes no block mask (attn_implementation=sdpa shares the prompt)"
    return None


def _attention_mask(model: nn.Module, attend: torch.Tensor) -> torch.Tensor:
    """A (batch, 1, queries, keys) mask as the model's attention takes it: boolean for SDPA, additive for eager."""
    if base_model(model).config._attn_implementation == "sdpa":
        return attend
    dtype = base_model(model).dtype
    return torch.zeros(attend.shape, dtype=dtype, device=attend.device).masked_fill(~attend, torch.finfo(dtype).min)


def head_log_probs(head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float,
                   with_entropy: bool = False, chunk: int | None = None, suppressed: Sequence[int] = (),
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of `ids` (rows, tokens) from the hidden states that predict them (rows, tokens, hidden),
    the output head run on `chunk` tokens at a time (None: all at once), the `suppressed` tokens taken out of the
    distribution. With gradient, each chunk's logits are recomputed in the backward pass rather than kept, so only
    one chunk's exist at any time."""
    rows, tokens = ids.shape
    flat_hidden, flat_ids = hidden.reshape(rows * tokens, -1), ids.reshape(-1)
    size = chunk or max(len(flat_ids), 1)
    recompute = torch.is_grad_enabled() and flat_hidden.requires_grad
    chosen, entropy = [], []
    for start in range(0, len(flat_ids), size):
        part = (flat_hidden[start:start + size], flat_ids[start:start + size])
        if recompute:
            logp, ent = checkpoint(_chunk_log_probs, head, *part, temperature, with_entropy, suppressed,
                                   entropy_grad, use_reentrant=False)
        else:
            logp, ent = _chunk_log_probs(head, *part, temperature, with_entropy, suppressed, entropy_grad)
        chosen.append(logp)
        entropy.append(ent)
    chosen = torch.cat(chosen).view(rows, tokens)
    return chosen, torch.cat(entropy).view(rows, tokens) if with_entropy else None


def _chunk_log_probs(head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float,
                     with_entropy: bool, suppressed: Sequence[int], entropy_grad: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits.div_(temperature)  # in place: the head's backward keeps its input, not its output
    logits = _suppress(logits, suppressed)
    normaliser = logits.logsumexp(-1)
    chosen = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - normaliser
    entropy = torch.empty(0, device=ids.device)
    if with_entropy:  # H = logsumexp - sum p * logits, the sum as a product: no second (tokens, vocab)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = normaliser - logits.softmax(-1).unsqueeze(1).bmm(logits.unsqueeze(2)).view(-1)
    return chosen, entropy


def _suppress(logits: torch.Tensor, suppressed: Sequence[int]) -> torch.Tensor:
    """`logits` (float, no other use) with the suppressed tokens' set in place to the lowest float: probability 0
    after the softmax, and 0 (not NaN, as -inf would give) in the entropy's sum of p * logits."""
    if not suppressed:
        return logits
    return logits.index_fill_(-1, torch.tensor(list(suppressed), device=logits.device), torch.finfo(logits.dtype).min)
