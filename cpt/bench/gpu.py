"""`python -m cpt bench gpu`: one RFT step and one SFT step at the size users run, on one GPU, in one command.

For each shape (default `qwen2.5-vl-7b` and `qwen3-vl-8b`, random weights in bfloat16) and each fine-tuning mode
(LoRA; QLoRA, whose 4-bit base is quantized from random weights saved once to a temporary directory):
  - one RFT step of `--prompts` prompts x G = `--group` rollouts, one `--image` x `--image` image each, exactly
    `--new-tokens` new tokens per rollout (the end of turn is held back: a random model would end at random), with
    the KL term's reference pass (the adapters switched off) and the update in micro-batches of one prompt's group,
    gradient checkpointing on (on a GPU): with the shared prompt (a prompt cache for the rollouts, one prompt pass
    per group in the update) against the prompt repeated on every row; with SDPA, and with flash-attention 2 where
    installed;
  - one SFT step of `--sft-batch` examples of the same kind.
Each is timed over `--rounds` rounds (the sides take turns within a round) and reported as the median and range,
with the peak GPU memory, the rollout tokens per second and the step's seconds. One table is printed and the
rows are written as JSON (`--out`).

Without a GPU it runs on the families' tiny shapes (random weights, float32) with small settings and LoRA only
(bitsandbytes' CPU 4-bit path fails in the update's backward), which is how its test runs it; the figures then say
nothing about a GPU.

It needs torch, transformers, peft, lightning, omegaconf and bitsandbytes (QLoRA), and runs with transformers 5.17
(whose model outputs call the KV cache `past_key_values`), which GPU images ship today.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from cpt.bench.report import plural, say, version, versions_line

# Without --shapes (the help of `python -m cpt bench gpu` names them too).
GPU_SHAPES = ("qwen2.5-vl-7b", "qwen3-vl-8b")
CPU_SHAPES = ("tiny", "tiny-qwen3-vl", "tiny-qwen3.5")
PACKAGES = ("torch", "transformers", "peft", "lightning", "bitsandbytes", "flash-attn")


@dataclass
class Settings:
    shapes: list[str]
    finetunes: list[str]
    prompts: int
    group: int
    new_tokens: int
    image: int
    sft_batch: int
    rounds: int
    device: str
    dtype: torch.dtype
    checkpointing: bool = True  # on a GPU, as users train at these shapes
    seed: int = 0


@dataclass
class Row:
    """One measured configuration: its seconds per round, and what a round measured."""

    shape: str
    finetune: str
    attention: str
    step: str  # `RFT shared prompt`, `RFT repeated prompt`, `SFT`
    step_s: list[float] = field(default_factory=list)
    rollout_s: list[float] = field(default_factory=list)
    rollout_tokens: int = 0
    peak_gib: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return statistics.median(self.rollout_tokens / s for s in self.rollout_s) if self.rollout_s else None

    def record(self) -> dict:
        return {**asdict(self), "step_s_median": statistics.median(self.step_s), "tokens_per_s": self.tokens_per_s}


def settings_from(args: argparse.Namespace) -> Settings:
    gpu = torch.cuda.is_available()

    def pick(value, on_gpu, on_cpu):
        return value if value is not None else on_gpu if gpu else on_cpu

    shapes = args.shapes.split(",") if args.shapes else list(GPU_SHAPES if gpu else CPU_SHAPES)
    # QLoRA's figures are its GPU kernels'; bitsandbytes' CPU 4-bit path fails in the RFT step's backward.
    finetunes = pick(args.finetune, "lora,qlora", "lora").split(",")
    if unknown := [f for f in finetunes if f not in ("lora", "qlora")]:
        raise SystemExit(f"--finetune takes lora and qlora, not {', '.join(unknown)}")
    return Settings(shapes=shapes, finetunes=finetunes, prompts=pick(args.prompts, 4, 2),
                    group=pick(args.group, 8, 2), new_tokens=pick(args.new_tokens, 256, 8),
                    image=pick(args.image, 448, 64), sft_batch=pick(args.sft_batch, 8, 2), rounds=args.rounds,
                    device="cuda" if gpu else "cpu", dtype=torch.bfloat16 if gpu else torch.float32,
                    checkpointing=gpu)


# --- the model ------------------------------------------------------------------------------------------------------

def checkpoint_for(shape: str, directory: Path, image: int) -> Path:
    """A weightless checkpoint of preset `shape` (a published shape, or a tiny architecture) under `directory`,
    its image processor taking `image` x `image` images whole."""
    from cpt.config import load_config
    from cpt.model.families import preset_families
    from cpt.model.presets import write_shape_preset

    family = preset_families().get(shape)
    if family is None:
        raise SystemExit(f"--shapes: {shape!r} is not a preset; choose from {', '.join(preset_families())}")
    seed = load_config(None, []).foundation.seed
    target = directory / shape
    architecture = family.toys[shape].shape if shape in family.toys else family.shapes[shape]
    return write_shape_preset(target, family, architecture, seed, 64, max_pixels=max(image * image, 128 * 128))


def model_config(finetune: str, settings: Settings, attention: str):
    from cpt.config import load_config

    name = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[settings.dtype]
    return load_config(None, [f"model.finetune={finetune}", f"model.dtype={name}",
                              f"model.attn_implementation={attention}",
                              f"model.gradient_checkpointing={str(settings.checkpointing).lower()}"]).model


def random_weights(checkpoint: Path, settings: Settings, attention: str) -> nn.Module:
    """The whole model of a weightless checkpoint, random from the seed, built on the device in its dtype."""
    from cpt.model.families import family_of_checkpoint

    family = family_of_checkpoint(checkpoint)
    config = family.config_class.from_pretrained(checkpoint)
    torch.manual_seed(settings.seed)
    with torch.device(settings.device):
        model = family.model_class._from_config(config, dtype=settings.dtype, attn_implementation=attention)
    model.name_or_path = model.config._name_or_path = str(checkpoint)
    return model


def backbone(checkpoint: Path, finetune: str, settings: Settings, attention: str, weights: Path | None) -> nn.Module:
    """LoRA on random weights built in place; QLoRA loaded from `weights` (random weights saved once), quantized
    while loading, as a user's checkpoint is."""
    from cpt.model.backbone import apply_finetune, load_backbone
    from cpt.model.positions import require_token_types

    cfg = model_config(finetune, settings, attention)
    if finetune == "qlora":
        model = load_backbone(cfg, weights)
    else:
        base = random_weights(checkpoint, settings, attention)
        require_token_types(base)
        model = apply_finetune(base, cfg)
    return model.to(settings.device) if finetune != "qlora" else model


def save_random_weights(checkpoint: Path, settings: Settings, directory: Path) -> Path:
    """The checkpoint with random weights on disk (a QLoRA base quantizes while it loads)."""
    import shutil

    target = directory / f"{checkpoint.name}-weights"
    shutil.copytree(checkpoint, target, dirs_exist_ok=True)
    model = random_weights(checkpoint, settings, "sdpa")
    model.save_pretrained(target)
    del model
    release()
    return target


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the steps -----------------------------------------------------------------------------------------------------

def batches(checkpoint: Path, settings: Settings):
    """The processor, the RFT prompts and the SFT examples: synthetic questions about one image each."""
    from cpt.data.batches import Collator, EncodedDataset
    from cpt.data.synthetic import TASKS, make_example
    from cpt.model.processor import VisionTextProcessor

    processor = VisionTextProcessor.from_pretrained(checkpoint)
    task = next(iter(TASKS))
    examples = [make_example(task, "bench", i, settings.seed, settings.image) for i in range(max(settings.prompts,
                                                                                                 settings.sft_batch))]

    def collate(count: int, with_response: bool):
        dataset = EncodedDataset(examples[:count], processor, "direct", with_response=with_response)
        return Collator(processor.pad_id)([dataset[i] for i in range(count)]).to(settings.device)

    return processor, collate(settings.prompts, False), collate(settings.sft_batch, True)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """The GPU's peak allocation since the last reset; on the CPU, the process's peak resident memory so far."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rft_step(model: nn.Module, processor, prompts, settings: Settings, shared: bool,
             optimizer: torch.optim.Optimizer) -> tuple[float, float, int]:
    """(step seconds, rollout seconds, rollout tokens) of one RFT step: rollouts, the reference pass, the update."""
    from cpt.model.generation import PromptCache, Sampling, generate_ids
    from cpt.rl.log_probs import token_log_probs
    from cpt.rl.policy_loss import kl_estimate
    from cpt.rl.reference import Reference
    from cpt.rl.rollouts import completion_mask

    synchronize()
    start = time.perf_counter()
    model.eval()
    prefix = PromptCache.prefill(model, prompts) if shared else None
    ids = generate_ids(model, processor, prompts, settings.new_tokens, sampling=Sampling(1.0), repeats=settings.group,
                       prefix=prefix, min_new_tokens=settings.new_tokens)
    synchronize()
    rollout_s = time.perf_counter() - start
    mask, _ = completion_mask(ids, processor.eos_id)
    model.train()
    advantages = torch.linspace(-1, 1, len(ids), device=ids.device)  # any fixed advantages: the cost is the same
    reference = Reference(model, "base", build_copy=None)  # the adapters switched off
    suppressed = processor.placeholder_ids
    for first in range(0, len(ids), settings.group):  # one prompt's group per micro-batch
        rows = slice(first, first + settings.group)
        prompt = prompts.rows(first // settings.group, first // settings.group + 1).repeat(settings.group)
        groups = torch.zeros(settings.group, dtype=torch.long) if shared else None
        with torch.no_grad(), reference.model(model) as scorer:
            ref_logp, _ = token_log_probs(scorer, prompt, ids[rows], mask[rows], 1.0, groups=groups, chunk=1024,
                                          suppressed=suppressed)
        logp, _ = token_log_probs(model, prompt, ids[rows], mask[rows], 1.0, groups=groups, chunk=1024,
                                  suppressed=suppressed)
        ratio = (logp - logp.detach()).exp()
        per_token = -ratio * advantages[rows, None] + 0.01 * kl_estimate(logp, ref_logp, "k3")
        loss = (per_token * mask[rows]).sum() / mask.sum()
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start, rollout_s, int(mask.sum())


def sft_step(model: nn.Module, examples, optimizer: torch.optim.Optimizer) -> float:
    from cpt.model.answer_loss import sft_loss

    synchronize()
    start = time.perf_counter()
    model.train()
    sft_loss(model, examples).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start


def attentions() -> list[str]:
    import importlib.util

    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return ["sdpa", "flash_attention_2"] if flash else ["sdpa"]


def measure(model: nn.Module, processor, prompts, examples, settings: Settings, shape: str, finetune: str,
            attention: str) -> list[Row]:
    """The RFT step with the shared and the repeated prompt in turns, then the SFT step, over the rounds."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = {name: Row(shape, finetune, attention, name) for name in ("RFT shared prompt", "RFT repeated prompt", "SFT")}
    # One untimed step each: kernels chosen, optimizer state made.
    rft_step(model, processor, prompts.rows(0, 1), replace_group(settings, 2, 2), True, optimizer)
    sft_step(model, examples.rows(0, 1), optimizer)
    for index in range(settings.rounds):
        order = ["RFT shared prompt", "RFT repeated prompt"]
        for name in order if index % 2 == 0 else order[::-1]:
            reset_peak()
            step_s, rollout_s, tokens = rft_step(model, processor, prompts, settings, name.endswith("shared prompt"),
                                                 optimizer)
            row = rows[name]
            row.step_s.append(step_s)
            row.rollout_s.append(rollout_s)
            row.rollout_tokens = tokens
            row.peak_gib = max(row.peak_gib, peak_gib())
        reset_peak()
        rows["SFT"].step_s.append(sft_step(model, examples, optimizer))
        rows["SFT"].peak_gib = max(rows["SFT"].peak_gib, peak_gib())
    del optimizer
    return list(rows.values())


def replace_group(settings: Settings, group: int, new_tokens: int) -> Settings:
    from dataclasses import replace

    return replace(settings, group=group, new_tokens=new_tokens)


# --- the command ---------------------------------------------------------------------------------------------------

def header(settings: Settings) -> list[str]:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU: tiny shapes, the figures "\
                                                                               "say nothing about a GPU)"
    return [f"device    {device}", versions_line(PACKAGES),
            f"step      RFT: {settings.prompts} prompts x G = {settings.group}, one {settings.image} x "
            f"{settings.image} image each, {settings.new_tokens} new tokens forced, KL reference pass, update in "
            f"micro-batches of one group{', gradient checkpointing' if settings.checkpointing else ''}; "
            f"SFT: {settings.sft_batch} examples; "
            f"{str(settings.dtype).removeprefix('torch.')}, {plural(settings.rounds, 'round')}"]


def table(rows: list[Row]) -> str:
    head = (f"{'shape':<16}{'finetune':<10}{'attention':<19}{'step':<21}{'peak GiB':>9}{'rollout tok/s':>15}"
            f"{'step s (median)':>17}{'range':>15}")
    lines = [head, "-" * len(head)]
    for row in rows:
        tokens = "-" if row.tokens_per_s is None else f"{row.tokens_per_s:,.0f}"
        spread = f"{min(row.step_s):.2f}-{max(row.step_s):.2f}"
        lines.append(f"{row.shape:<16}{row.finetune:<10}{row.attention:<19}{row.step:<21}{row.peak_gib:>9.1f}"
                     f"{tokens:>15}{statistics.median(row.step_s):>17.2f}{spread:>15}")
    return "\n".join(lines)


def bench_gpu(args: argparse.Namespace, progress: Callable[[str], None] = say) -> list[Row]:
    settings = settings_from(args)
    for line in header(settings):
        say(line)
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cpt-bench-gpu-") as scratch:
        for shape in settings.shapes:
            checkpoint = checkpoint_for(shape, Path(scratch), settings.image)
            processor, prompts, examples = batches(checkpoint, settings)
            weights = (save_random_weights(checkpoint, settings, Path(scratch)) if "qlora" in settings.finetunes
                       else None)
            for finetune in settings.finetunes:
                for attention in attentions() if finetune == "lora" else ["sdpa"]:
                    progress(f"... {shape} {finetune} {attention} ({time.perf_counter() - started:.0f} s so far)")
                    model = backbone(checkpoint, finetune, settings, attention, weights)
                    rows += measure(model, processor, prompts, examples, settings, shape, finetune, attention)
                    del model
                    release()
    say()
    say(table(rows))
    say(f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s; written to {args.out}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "device": header(settings)[0].removeprefix("device    "),
        "versions": {name: version(name) for name in PACKAGES},
        "settings": {**asdict(settings), "dtype": str(settings.dtype)},
        "rows": [row.record() for row in rows]}, indent=2))
    return rows
