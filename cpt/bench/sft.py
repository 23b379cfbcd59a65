"""`python -m cpt bench sft`: seconds per SFT step of our SFTModule and of TRL's SFTTrainer, in alternating rounds.

Both train the same checkpoint (full fine-tuning, float32, CPU) on the same examples of a synthetic task (one
image each), formatted identically: our chat prompt (system prompt, the image, the question), then the answer
closed by the end-of-turn token, the loss the mean cross-entropy over the answer tokens only. The same batch
size, AdamW (lr constant, weight decay, betas and eps at their defaults), and gradient clipping. TRL reads the
examples as a prompt-completion dataset with images (its vision-language collator), and its chat template (the
one in cpt.bench.trl_processor) renders them to our exact tokens (tests/bench/test_sft.py checks it).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from cpt.bench.clock import quiet, time_ours, timed_steps, trainer_clock
from cpt.bench.report import RoundsTable, machine_line, plural, say, version, versions_line
from cpt.bench.rounds import alternate
from cpt.bench.trl_processor import trl_completion, trl_processor, trl_prompt
from cpt.config import load_config
from cpt.data.batches import IGNORE_INDEX, EncodedDataset
from cpt.data.examples import Example
from cpt.data.tasks import build_tasks
from cpt.model.families import family_of_checkpoint
from cpt.model.presets import resolve_checkpoint
from cpt.model.processor import VisionTextProcessor

# The shared settings; users change them with key=value like any run.
SFT_BENCH_DEFAULTS = ["method=sft", "tasks=[colour]", "model.finetune=full", "model.dtype=float32",
                      "data.batch_size=16", "optim.lr=1e-5", "optim.weight_decay=0.0", "optim.warmup_ratio=0",
                      "optim.min_lr_ratio=1.0", "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=1",
                      "trainer.accelerator=cpu", "trainer.devices=1", "eval.general=false", "data.eval_size=1",
                      "save_checkpoints=false", "logger=none", "trainer.enable_progress_bar=false"]


def sft_config(overrides: list[str], steps: int, warmup: int) -> DictConfig:
    """SFT_BENCH_DEFAULTS and the user's keys; `steps + warmup + 1` steps on as many batches of examples."""
    cfg = load_config(None, [*SFT_BENCH_DEFAULTS, *overrides])
    total = steps + warmup + 1
    cfg.steps_per_task, cfg.data.train_size = total, cfg.data.batch_size * total
    return cfg


def train_examples(cfg: DictConfig) -> list[Example]:
    return list(build_tasks(cfg)[0].train)


def sft_dataset(cfg: DictConfig, examples: list[Example]):
    """Our examples as TRL's prompt-completion dataset with images."""
    from datasets import Dataset

    template = cfg.data.template
    return Dataset.from_dict({
        "prompt": [trl_prompt(template, e) for e in examples],
        "completion": [trl_completion(template, e) for e in examples],
        "images": [e.images for e in examples],
    })


def trl_sft_trainer(cfg: DictConfig, checkpoint: Path, output_dir: str, callbacks=()):
    """TRL's SFTTrainer with `cfg`'s model, data, batch, optimizer and clipping (not yet trained)."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, per_device_train_batch_size=cfg.data.batch_size,
        gradient_accumulation_steps=cfg.trainer.accumulate_grad_batches, max_steps=cfg.steps_per_task,
        learning_rate=cfg.optim.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.trainer.gradient_clip_val, optim="adamw_torch",
        gradient_checkpointing=cfg.model.gradient_checkpointing, max_length=None, packing=False, padding_free=False,
        completion_only_loss=True, assistant_only_loss=False, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed,
    )
    model = family_of_checkpoint(checkpoint).model_class.from_pretrained(checkpoint, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(cfg, train_examples(cfg)),
                         processing_class=trl_processor(checkpoint, cfg.model.min_pixels, cfg.model.max_pixels),
                         callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


def time_trl(cfg: DictConfig, checkpoint: Path, warmup: int):
    clock = trainer_clock()
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out, quiet():
        trainer = trl_sft_trainer(cfg, checkpoint, out, [clock])
        trainer.train()
    return timed_steps(clock.ends, clock.values, warmup)


def token_counts(cfg: DictConfig, checkpoint: Path, examples: list[Example]) -> tuple[float, float, float]:
    """Mean tokens per example as our SFT encodes it: prompt, of which image, and answer (end-of-turn included)."""
    processor = VisionTextProcessor.from_pretrained(checkpoint, cfg.model.min_pixels, cfg.model.max_pixels)
    dataset = EncodedDataset(examples, processor, cfg.data.template, with_response=True)
    items = [dataset[i] for i in range(len(dataset))]
    answer = [sum(label != IGNORE_INDEX for label in item.labels) for item in items]
    prompt = [len(item.input_ids) - a for item, a in zip(items, answer)]
    image = [item.input_ids.count(processor.image_pad_id) for item in items]
    return statistics.mean(prompt), statistics.mean(image), statistics.mean(answer)


def describe(cfg: DictConfig, checkpoint: Path, examples: list[Example], steps: int, warmup: int,
             rounds: int) -> list[str]:
    with quiet():
        prompt, image, answer = token_counts(cfg, checkpoint, examples)
    width, height = examples[0].images[0].size
    optim = cfg.optim
    return [
        f"SFT step time: cpt SFTModule against TRL {version('trl')} SFTTrainer, same model, examples, loss and update",
        f"model     {cfg.model.name_or_path} ({checkpoint}), {cfg.model.finetune} fine-tuning, {cfg.model.dtype}, CPU",
        f"step      {cfg.data.batch_size} examples of task {cfg.tasks[0]} (template {cfg.data.template}, one "
        f"{width} x {height} image each): prompt {prompt:.0f} tokens ({image:.0f} of them image tokens), answer "
        f"{answer:.0f} tokens with the end-of-turn token",
        f"update    mean cross-entropy over the answer tokens only; AdamW lr {optim.lr:g} constant, weight decay "
        f"{optim.weight_decay:g}; gradient clipping {cfg.trainer.gradient_clip_val}",
        f"timing    {plural(rounds, 'round')}, the two sides in turn (the order rotated each round), each a "
        f"fresh run: {plural(warmup, 'warm-up step')}, then the median of {plural(steps, 'step')}; a step = one "
        f"finished optimizer step to the next (data, forward, backward, update)",
        machine_line(),
        versions_line(),
    ]


def bench_sft(overrides: list[str], steps: int = 10, warmup: int = 2, rounds: int = 5) -> dict:
    """Runs the rounds, printing each as it ends; returns the rounds and the summary ratio."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("the SFT benchmark compares with TRL: pip install -e \".[bench]\"") from None
    cfg = sft_config(overrides, steps, warmup)
    with quiet():
        checkpoint = resolve_checkpoint(cfg)
        examples = train_examples(cfg)
    say("\n".join(describe(cfg, checkpoint, examples, steps, warmup, rounds)))
    say()
    table = RoundsTable([("cpt", "cpt SFTModule"), ("trl", f"TRL {version('trl')}")], [("TRL/cpt", "trl", "cpt")])
    say(table.header())
    done = alternate({"cpt": lambda: time_ours(cfg, warmup), "trl": lambda: time_trl(cfg, checkpoint, warmup)},
                     rounds, on_round=lambda i, r: say(table.row(i, r)))
    say(table.footer(done))
    for line in table.conclusion(done):
        say(line)
    return {"rounds": done, "ratios": dict(table.summary_ratios(done))}
