"""`python -m cpt bench rft`: seconds per RFT step of our RFTModule, with a shared prompt prefix and with the
prompt repeated on every rollout, and of TRL's GRPOTrainer, in alternating rounds, per case.

All three train the same checkpoint (full fine-tuning, float32, CPU) on the same prompts (a synthetic task, one
image each, the configured template), with the same group size, prompts per step, max new tokens, sampling
(temperature 1, top_p 1), KL coefficient (k3 in the loss), learning rate, gradient clipping and reward (the task
reward: 0.9 accuracy + 0.1 format). Cases: `current`, the default run's 64 x 64 images (a prompt about three
times the longest completion), and `long`, 224 x 224 images (a prompt of hundreds of tokens, more than ten
times the completion), where encoding the prompt once per group matters.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from cpt.bench.clock import quiet, time_ours, timed_steps, trainer_clock
from cpt.bench.report import RoundsTable, machine_line, plural, say, version, versions_line
from cpt.bench.rounds import Round, SideRun, alternate
from cpt.bench.trl_processor import trl_processor, trl_prompt
from cpt.config import load_config
from cpt.data.examples import Example
from cpt.data.prompts import render_prompt
from cpt.data.tasks import build_tasks
from cpt.model.families import family_of_checkpoint, preset_families
from cpt.model.presets import resolve_checkpoint
from cpt.model.processor import VisionTextProcessor
from cpt.rl.rewards import Rewards

# The shared settings; users change them with key=value like any run.
BENCH_DEFAULTS = ["method=rft", "tasks=[colour]", "model.finetune=full", "model.dtype=float32", "rft.group_size=8",
                  "data.batch_size=4", "rft.max_new_tokens=16", "rft.temperature=1.0", "rft.top_p=1.0",
                  "rft.kl.coef=0.01", "rft.kl.estimator=k3", "rft.kl.placement=loss", "optim.lr=1e-5",
                  "optim.warmup_ratio=0", "optim.min_lr_ratio=1.0", "trainer.gradient_clip_val=1.0",
                  "trainer.accelerator=cpu", "trainer.devices=1", "eval.general=false", "data.eval_size=1",
                  "save_checkpoints=false", "logger=none", "trainer.enable_progress_bar=false"]

# Each case's settings on top of BENCH_DEFAULTS (the user's key=value come after them and win).
# The cases differ in the image only; model.max_pixels=224*224 keeps the tiny checkpoint's processor (128 x 128 at
# most) from scaling the long case's images down.
CASES = {
    "current": [],
    "long": ["data.image_size=224", f"model.max_pixels={224 * 224}"],
}

# Our two sides differ in one switch; TRL is the third side.
SIDES = {"shared": "rft.shared_prefix=true", "repeated": "rft.shared_prefix=false"}


@dataclass
class PromptLength:
    """Mean tokens of the prompts a case trains on, as our processor and as TRL's encode them."""

    tokens: float
    image_tokens: float
    image_size: tuple[int, int]
    trl_tokens: float | None = None


def case_config(case: str, overrides: list[str], checkpoint: Path, steps: int, warmup: int) -> DictConfig:
    """The case's config: BENCH_DEFAULTS, the case's keys, the user's; `steps + warmup + 1` steps on as many
    batches of prompts (the first step is never timed). A toy preset keeps the checkpoint pre-trained on the
    default images (it would otherwise pre-train one per image size)."""
    cfg = load_config(None, [*BENCH_DEFAULTS, *CASES[case], *overrides])
    family = preset_families().get(cfg.model.name_or_path)
    if family is not None and cfg.model.name_or_path in family.toys:
        cfg.model.name_or_path = str(checkpoint)
    total = steps + warmup + 1
    cfg.steps_per_task, cfg.data.train_size = total, cfg.data.batch_size * total
    return cfg


def prompt_examples(cfg: DictConfig) -> list[Example]:
    """The examples both sides draw their prompts from: the task's first `data.train_size`."""
    return list(build_tasks(cfg)[0].train)


def prompt_length(cfg: DictConfig, checkpoint: Path, examples: list[Example], with_trl: bool = True) -> PromptLength:
    """The prompts' mean length in tokens (and in image tokens) as our RFTModule encodes them, and as TRL's
    processor does."""
    processor = VisionTextProcessor.from_pretrained(checkpoint, cfg.model.min_pixels, cfg.model.max_pixels)
    encoded = [processor.encode_prompt(render_prompt(cfg.data.template, e), e.images) for e in examples]
    tokens = statistics.mean(len(p.input_ids) for p in encoded)
    images = statistics.mean(p.input_ids.count(processor.image_pad_id) for p in encoded)
    result = PromptLength(tokens, images, examples[0].images[0].size)
    if with_trl:
        theirs = trl_processor(checkpoint, cfg.model.min_pixels, cfg.model.max_pixels)
        template = cfg.data.template
        texts = [theirs.apply_chat_template(trl_prompt(template, e), add_generation_prompt=True, tokenize=False)
                 for e in examples]
        ids = theirs(text=texts, images=[e.images for e in examples], padding=True)["attention_mask"]
        result.trl_tokens = statistics.mean(sum(row) for row in ids)
    return result


def time_trl(cfg: DictConfig, checkpoint: Path, warmup: int) -> SideRun:
    """One GRPOTrainer run on the case's prompts, settings translated from `cfg`, its steps timed."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    task = build_tasks(cfg)[0]
    rft = cfg.rft
    examples = list(task.train)
    dataset = Dataset.from_dict({
        "prompt": [trl_prompt(cfg.data.template, e) for e in examples],
        "images": [e.images for e in examples],
        "answer": [e.answer for e in examples],
    })
    rewards = Rewards.from_config(cfg.rft.reward)

    def reward(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return rewards(texts, [Example("", gold) for gold in answer], task.scorer, cfg.data.template).total.tolist()

    config_args = dict(
        use_cpu=True, bf16=False, fp16=False, per_device_train_batch_size=cfg.data.batch_size * rft.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=rft.group_size, num_iterations=1,
        max_steps=cfg.steps_per_task, max_completion_length=rft.max_new_tokens, temperature=rft.temperature,
        top_p=rft.top_p, top_k=0, use_vllm=False, beta=rft.kl.coef, learning_rate=cfg.optim.lr,
        lr_scheduler_type="constant", weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.trainer.gradient_clip_val,
        optim="adamw_torch", gradient_checkpointing=False, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed,
    )
    clock = trainer_clock("completions/mean_length")
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out, quiet():
        model = family_of_checkpoint(checkpoint).model_class.from_pretrained(checkpoint, dtype=torch.float32)
        processor = trl_processor(checkpoint, cfg.model.min_pixels, cfg.model.max_pixels)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(output_dir=out, **config_args),
                              train_dataset=dataset, processing_class=processor, callbacks=[clock])
        clock.trainer = trainer
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return timed_steps(clock.ends, clock.values, warmup)


def describe(cfg: DictConfig, checkpoint: Path, steps: int, warmup: int, rounds: int) -> list[str]:
    """The settings every case shares, the machine and the versions."""
    rft, trl_version = cfg.rft, version("trl")
    chunk = rft.get("log_prob_chunk", None)
    lines = [
        f"RFT step time: cpt RFTModule against TRL {trl_version} GRPOTrainer, same model, prompts, sampling, "
        f"reward and update",
        f"model     {cfg.model.name_or_path} ({checkpoint}), {cfg.model.finetune} fine-tuning, "
        f"{cfg.model.dtype}, CPU",
        f"step      G = {rft.group_size} rollouts per prompt, at most {rft.max_new_tokens} new tokens, temperature "
        f"{rft.temperature}, top_p {rft.top_p}, KL {rft.kl.coef} ({rft.kl.estimator}, in the {rft.kl.placement}), "
        f"AdamW lr {cfg.optim.lr:g}, gradient clipping {cfg.trainer.gradient_clip_val}; task "
        f"{cfg.tasks[0]}, template {cfg.data.template}",
        "sides     cpt shared = rft.shared_prefix=true (one prompt forward per group), cpt repeated = "
        "rft.shared_prefix=false (the prompt on every rollout)" + (f", both rft.log_prob_chunk={chunk}"
                                                                   if "log_prob_chunk" in rft else "")
        + f"; TRL = GRPOTrainer {trl_version}" + unpacked_note(checkpoint),
        f"timing    {plural(rounds, 'round')}, the three sides in turn (the order rotated each round), each a "
        f"fresh run: {plural(warmup, 'warm-up step')}, then the median of {plural(steps, 'step')}; a step = one "
        f"finished optimizer step to the next (data, generation, reward, reference pass, update)",
        machine_line(),
        versions_line(),
    ]
    return lines


def unpacked_note(checkpoint: Path) -> str:
    """How the shared side shares a prompt where the family cannot pack a group behind it."""
    family = family_of_checkpoint(checkpoint)
    if family.packable:
        return ""
    return (f" ({family.display_name}: a recurrence cannot be packed, so cpt shared continues every rollout from "
            "its prompt's forked cache instead)")


def case_line(case: str, cfg: DictConfig, length: PromptLength) -> str:
    width, height = length.image_size
    trl = "" if length.trl_tokens is None or round(length.trl_tokens) == round(length.tokens) else (
        f"; TRL's processor: {length.trl_tokens:.0f}")
    prompts, group = cfg.data.batch_size, cfg.rft.group_size
    return (f"case {case}: {prompts} prompts x {group} = {prompts * group} rollouts per step; {width} x {height} "
            f"images; prompt {length.tokens:.0f} tokens ({length.image_tokens:.0f} of them image tokens){trl}; "
            f"completion at most {cfg.rft.max_new_tokens} tokens (prompt / longest completion "
            f"{length.tokens / cfg.rft.max_new_tokens:.1f}x)")


def bench_rft(overrides: list[str], steps: int = 3, warmup: int = 1, rounds: int = 3,
              cases: list[str] = ("current", "long")) -> dict[str, dict]:
    """Runs every case's rounds, printing each round as it ends; returns per case its rounds, prompt length
    and summary ratios."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("the RFT benchmark compares with TRL: pip install -e \".[bench]\"") from None
    base = load_config(None, [*BENCH_DEFAULTS, *overrides])
    with quiet():
        checkpoint = resolve_checkpoint(base)
    # Per case, our two sides' configs (they differ in the one switch, which wins over the user's keys); TRL
    # reads the same settings.
    configs = {case: {name: case_config(case, [*overrides, switch], checkpoint, steps, warmup)
                      for name, switch in SIDES.items()} for case in cases}
    say("\n".join(describe(base, checkpoint, steps, warmup, rounds)))
    table = RoundsTable([("shared", "cpt shared"), ("repeated", "cpt repeated"), ("trl", f"TRL {version('trl')}")],
                        [("TRL/shared", "trl", "shared"), ("repeated/shared", "repeated", "shared")])
    results = {}
    for case, side_configs in configs.items():
        cfg = side_configs["shared"]
        with quiet():
            case_checkpoint = resolve_checkpoint(cfg)
            length = prompt_length(cfg, case_checkpoint, prompt_examples(cfg))
        say()
        say(case_line(case, cfg, length))
        say(table.header())
        sides = {name: (lambda c=c: time_ours(c, warmup)) for name, c in side_configs.items()}
        sides["trl"] = lambda cfg=cfg, checkpoint=case_checkpoint: time_trl(cfg, checkpoint, warmup)
        done: list[Round] = alternate(sides, rounds, on_round=lambda i, r: say(table.row(i, r)))
        say(table.footer(done))
        for line in table.conclusion(done):
            say(line)
        results[case] = {"rounds": done, "prompt": length, "ratios": dict(table.summary_ratios(done))}
    return results

