"""`python -m cpt bench memory`: peak memory of one RFT update at Qwen2.5-VL's vocabulary (152,064 tokens), with
the full log-probability path (every completion token's logits over the whole vocabulary at once:
`rft.log_prob_chunk=null`, the only path before chunking) and with the chunked one (`chunk` tokens' logits at a
time, recomputed in the backward pass).

The model is a random Qwen2.5-VL with the real vocabulary and a small body (hidden 64, 2 layers, a one-block
vision tower): at this vocabulary the logits dominate an update's memory, and the body hardly matters. One update
is what the RFT step does per micro-batch: `token_log_probs` with entropy, with gradient, a scalar loss (minus
the mean log-probability of the completion tokens) and its backward pass, on text prompts followed by random
completions.

Each measurement runs in a fresh Python process (`python -m cpt.bench.memory SPEC`), since CPU tensors are not
visible to tracemalloc: the figure is the peak resident set size (ru_maxrss) after the update minus its value just
before, with the absolute peak beside it. The full path needs rollouts x tokens x vocabulary x 4 bytes per logits
tensor, and several such tensors: 64 rollouts x 256 tokens is 9.3 GiB each, more than a shared 24 GB machine can
hold. It is measured at sizes that fit and extrapolated (linearly in rollouts x tokens) to the target size, and
the table says which figures were measured and which extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, replace

from cpt import flags

QWEN_VOCAB = 152064
GIB = 1024**3


@dataclass
class Spec:
    """One measurement: the path, the rollout batch and the model's size."""

    path: str  # full | chunked
    rollouts: int
    tokens: int  # completion tokens per rollout
    prompt_tokens: int = 16
    vocab: int = QWEN_VOCAB
    hidden: int = 64
    layers: int = 2
    chunk: int = 1024  # the chunked path's tokens per chunk
    threads: int = 2
    seed: int = 0


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollouts", type=flags.COUNTS, default=[2, 4],
                        help="rollout counts at which the full path is measured, comma-separated (default 2,4; "
                             "each GiB of logits needs several GiB of memory)")
    parser.add_argument("--chunked-rollouts", type=flags.COUNTS, default=[4, 64],
                        help="rollout counts at which the chunked path is measured (default 4,64)")
    parser.add_argument("--target", type=flags.COUNT, default=64,
                        help="rollouts of the size the full path is extrapolated to, when not measured (default 64)")
    parser.add_argument("--tokens", type=flags.COUNT, default=256, help="completion tokens per rollout (default 256)")
    parser.add_argument("--prompt-tokens", type=flags.COUNT, default=16, help="prompt tokens per rollout (default 16)")
    parser.add_argument("--vocab", type=flags.Number("[16, inf)", integer=True), default=QWEN_VOCAB,
                        help=f"vocabulary size (default {QWEN_VOCAB})")
    parser.add_argument("--hidden", type=flags.Number("[32, inf)", multiple_of=32), default=64,
                        help="hidden size, a multiple of 32 (default 64)")
    parser.add_argument("--layers", type=flags.COUNT, default=2, help="decoder layers (default 2)")
    parser.add_argument("--chunk", type=flags.COUNT, default=1024,
                        help="the chunked path's tokens per chunk (default 1024)")
    parser.add_argument("--threads", type=flags.COUNT, default=2,
                        help="torch threads in each measuring process (default 2)")


def random_model(spec: Spec):
    """A random Qwen2.5-VL with `spec`'s vocabulary and body, float32, the vision markers at the vocabulary's end."""
    import torch

    from cpt.model.families import family_named

    if spec.hidden % 32:
        raise ValueError("--hidden must be a multiple of 32 (heads of 32 dimensions)")
    text = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=2 * spec.hidden,
                num_hidden_layers=spec.layers, num_attention_heads=spec.hidden // 32, num_key_value_heads=1,
                max_position_embeddings=max(1024, spec.prompt_tokens + spec.tokens + 8),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                pad_token_id=0, eos_token_id=1, bos_token_id=0)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=1, out_hidden_size=spec.hidden,
                  patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=64, fullatt_block_indexes=[0])
    markers = dict(image_token_id=spec.vocab - 1, video_token_id=spec.vocab - 2, vision_start_token_id=spec.vocab - 3,
                   vision_end_token_id=spec.vocab - 4)
    torch.manual_seed(spec.seed)
    family = family_named("qwen2.5-vl")
    config = family.config_class(text_config=text, vision_config=vision, tie_word_embeddings=False, **markers)
    return family.model_class(config).float().train()


def rollout_batch(spec: Spec):
    """(prompts, completion_ids, mask): random text prompts and full-length random completions."""
    import torch

    from cpt.data.batches import Batch

    generator = torch.Generator().manual_seed(spec.seed)
    rows, top = spec.rollouts, spec.vocab - 8  # clear of the vision markers
    prompts = Batch(input_ids=torch.randint(2, top, (rows, spec.prompt_tokens), generator=generator),
                    attention_mask=torch.ones(rows, spec.prompt_tokens, dtype=torch.long), labels=None,
                    index=torch.arange(rows), task=torch.zeros(rows, dtype=torch.long),
                    image_counts=torch.zeros(rows, dtype=torch.long), examples=[None] * rows)
    ids = torch.randint(2, top, (rows, spec.tokens), generator=generator)
    return prompts, ids, torch.ones(rows, spec.tokens, dtype=torch.bool)


def update(model, prompts, ids, mask, chunk: int | None) -> float:
    """One RFT update's memory-relevant work: log-probabilities and entropy with gradient, a scalar loss, backward."""
    from cpt.rl.log_probs import token_log_probs

    logp, _ = token_log_probs(model, prompts, ids, mask, temperature=1.0, with_entropy=True, chunk=chunk)
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    return float(loss.detach())


def max_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_bytes() -> int | None:
    """The resident set size now, where /proc tells it."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def measure(spec: Spec) -> dict:
    """In this process: build the model and the batch, then one update; the peak RSS it added. Meant for a fresh
    process (`measure_in_subprocess`): an earlier, higher peak would hide the update's."""
    import gc

    import torch

    torch.set_num_threads(spec.threads)
    chunk = spec.chunk if spec.path == "chunked" else None
    if spec.path not in ("full", "chunked"):
        raise ValueError(f"unknown path {spec.path!r}: full | chunked")
    model = random_model(spec)
    # A first update on one short rollout loads the code, thread pools and scratch buffers every update uses, so
    # that the measured growth is the update's tensors; its own peak is far below the measured one.
    update(model, *rollout_batch(replace(spec, rollouts=1, tokens=min(spec.tokens, 8))), chunk)
    model.zero_grad(set_to_none=True)
    prompts, ids, mask = rollout_batch(spec)
    gc.collect()
    before, rss_before = max_rss_bytes(), rss_bytes()
    loss = update(model, prompts, ids, mask, chunk)
    after = max_rss_bytes()
    return {**asdict(spec), "peak_growth_bytes": after - before, "peak_bytes": after, "max_rss_before_bytes": before,
            "rss_before_bytes": rss_before, "chunk_used": chunk is not None,
            "parameters": sum(p.numel() for p in model.parameters()), "loss": loss}


def measure_in_subprocess(spec: Spec, timeout: float | None = None) -> dict:
    """`measure(spec)` in a fresh Python process."""
    done = subprocess.run([sys.executable, "-m", "cpt.bench.memory", json.dumps(asdict(spec))], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": str(spec.threads)})
    if done.returncode != 0:
        raise RuntimeError(f"the memory measurement of {spec.path} at {spec.rollouts} x {spec.tokens} failed "
                           f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def logits_bytes(rollouts: int, tokens: int, vocab: int) -> int:
    """One float32 logits tensor over the whole vocabulary for every completion token."""
    return rollouts * tokens * vocab * 4


def extrapolate(points: list[tuple[int, int]], elements: int) -> float:
    """Peak growth at `elements` rollouts x tokens, from measured (elements, bytes): the line through the two
    largest measurements, or proportional from one."""
    points = sorted(points)
    if len(points) == 1:
        (x, y), = points
        return y * elements / x
    (x0, y0), (x1, y1) = points[-2:]
    slope = (y1 - y0) / (x1 - x0)
    return y1 + slope * (elements - x1)


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


COLUMNS = f"{'path':<24}{'rollouts':>9}{'tokens':>8}{'logits tensor':>15}{'peak growth':>14}{'peak RSS':>12}  figure"


def table_row(row: dict) -> str:
    """One row of the table: a measured or extrapolated figure."""
    peak = "-" if row.get("peak_bytes") is None else gib(row["peak_bytes"])
    return (f"{row['label']:<24}{row['rollouts']:>9}{row['tokens']:>8}"
            f"{gib(logits_bytes(row['rollouts'], row['tokens'], row['vocab'])):>15}"
            f"{gib(row['peak_growth_bytes']):>14}{peak:>12}  {row['figure']}")


def conclusion(rows: list[dict], target: int, tokens: int, vocab: int, chunk: int) -> list[str]:
    """The answer at the target size, each figure labelled measured or extrapolated, and how each path scales."""
    full = [r for r in rows if r["label"].startswith("full")]
    chunked = [r for r in rows if r.get("chunk_used")]
    lines = []
    at_target = [r for r in full if r["rollouts"] == target]
    chunked_target = [r for r in chunked if r["rollouts"] == target]
    if at_target and chunked_target:
        a, b = at_target[0], chunked_target[0]
        lines.append(f"At {target} rollouts x {tokens} tokens: the full path {gib(a['peak_growth_bytes'])} "
                     f"({a['figure'].split(' ')[0].lower()}), chunked {gib(b['peak_growth_bytes'])} (measured): "
                     f"{a['peak_growth_bytes'] / b['peak_growth_bytes']:.1f}x less.")
    measured = [r for r in full if r["figure"] == "measured"]
    if measured:
        largest = max(measured, key=lambda r: r["rollouts"])
        held = largest["peak_growth_bytes"] / logits_bytes(largest["rollouts"], tokens, vocab)
        lines.append(f"Full path: peak growth linear in rollouts x tokens, about {held:.1f} logits-sized tensors "
                     f"at its peak (measured at {largest['rollouts']} rollouts).")
    if chunked:
        per_chunk = chunk * vocab * 4
        sizes = ", ".join(f"{r['rollouts']} rollouts: {r['peak_growth_bytes'] / per_chunk:.1f}" for r in chunked)
        lines.append(f"Chunked path: bounded by the chunk, not the rollouts; peak growth in chunk-sized tensors "
                     f"({gib(per_chunk)} each): {sizes}.")
    return lines


def bench_memory(args: argparse.Namespace) -> list[dict]:
    from cpt.bench.report import machine_line, say, versions_line

    base = dict(tokens=args.tokens, prompt_tokens=args.prompt_tokens, vocab=args.vocab, hidden=args.hidden,
                layers=args.layers, chunk=args.chunk, threads=args.threads)
    full_sizes, chunked_sizes = args.rollouts, args.chunked_rollouts
    chunked_label = f"chunked (chunk={args.chunk})"
    say(f"RFT update peak memory: token_log_probs with entropy and gradient, loss = -mean log p, backward; "
        f"vocabulary {args.vocab:,}")
    say(f"model     random Qwen2.5-VL: vocabulary {args.vocab:,}, hidden {args.hidden}, {args.layers} layers, "
        f"one-block vision tower (unused: text prompts), float32, CPU")
    say(f"batch     rollouts x ({args.prompt_tokens} prompt + {args.tokens} completion tokens), the prompt on every "
        f"row, every completion token in the loss")
    say("paths     full (chunk=None) = the logits of every completion token at once (rft.log_prob_chunk=null); "
        f"chunked = {args.chunk} tokens' logits at a time ({gib(args.chunk * args.vocab * 4)} each), recomputed "
        "in the backward pass")
    say("measure   each row in a fresh Python process: peak RSS (ru_maxrss) after the update minus just before it "
        "(peak growth), and the peak itself")
    say(machine_line(threads=args.threads))
    say(versions_line(("torch", "transformers")))
    say()
    say(COLUMNS)
    say("-" * (len(COLUMNS) + 30))
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        say(table_row(row))

    for rollouts in full_sizes:
        result = measure_in_subprocess(Spec("full", rollouts, **base))
        record({**result, "label": "full (chunk=None)", "figure": "measured"})
    target = args.target
    if target not in full_sizes:
        points = [(r["rollouts"] * r["tokens"], r["peak_growth_bytes"]) for r in rows]
        growth = extrapolate(points, target * args.tokens)
        record({"rollouts": target, "tokens": args.tokens, "vocab": args.vocab, "peak_growth_bytes": growth,
                "peak_bytes": None, "label": "full (chunk=None)",
                "figure": f"EXTRAPOLATED from {', '.join(str(r) for r in full_sizes)} rollouts (linear)"})
    for rollouts in chunked_sizes:
        result = measure_in_subprocess(Spec("chunked", rollouts, **base))
        figure = "measured" if result["chunk_used"] else "measured, the full path (no chunk in this build)"
        record({**result, "label": chunked_label, "figure": figure})
    say()
    for line in conclusion(rows, args.target, args.tokens, args.vocab, args.chunk):
        say(line)
    return rows


if __name__ == "__main__":  # the measuring process: one Spec as JSON in, one JSON line out
    print(json.dumps(measure(Spec(**json.loads(sys.argv[1])))))
