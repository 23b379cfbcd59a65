"""`python -m cpt bench rft`: seconds per RFT step of our RFTModule and of TRL's GRPOTrainer, side by side.

Both train the same tiny checkpoint (full fine-tuning, float32, CPU) on the same prompts (a synthetic task, one
image each, the configured template), with the same group size, prompts per step, max new tokens, sampling
(temperature 1, top_p 1), KL coefficient (k3 in the loss), learning rate, gradient clipping and reward (the
task reward: 0.9 accuracy + 0.1 format). A step is measured end to end, from one finished optimizer step to
the next, so data preparation, generation, scoring, reference pass and update all count; warm-up steps are
dropped and the median is reported. The two sides alternate `rounds` times in one process.

TRL is an optional dependency: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from cpt.commands.fit import run
from cpt.config import load_config
from cpt.data.examples import Example
from cpt.data.prompts import render_prompt
from cpt.data.tasks import build_tasks
from cpt.model.presets import resolve_checkpoint
from cpt.model.processor import SYSTEM_PROMPT
from cpt.rl.rewards import Rewards

# The shared settings; users change them with key=value like any run.
BENCH_DEFAULTS = ["method=rft", "tasks=[colour]", "model.finetune=full", "model.dtype=float32", "rft.group_size=8",
                  "data.batch_size=4", "rft.max_new_tokens=16", "rft.temperature=1.0", "rft.top_p=1.0",
                  "rft.kl.coef=0.01", "rft.kl.estimator=k3", "rft.kl.placement=loss", "optim.lr=1e-5",
                  "optim.warmup_ratio=0", "optim.min_lr_ratio=1.0", "trainer.gradient_clip_val=1.0",
                  "trainer.accelerator=cpu", "trainer.devices=1", "eval.general=false", "data.eval_size=1",
                  "save_checkpoints=false", "logger=none", "trainer.enable_progress_bar=false"]


class StepClock(Callback):
    """Wall time between consecutive finished training steps."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


def time_ours(cfg: DictConfig, steps: int, warmup: int) -> list[float]:
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="cpt-bench-") as out, contextlib.redirect_stdout(io.StringIO()):
        cfg = cfg.copy()
        cfg.output_dir = out
        run(cfg, extra_callbacks=[clock])  # its accuracy table is of no interest here
    return [b - a for a, b in zip(clock.ends, clock.ends[1:])][warmup:]


def trl_processor(checkpoint: Path):
    """A Qwen2.5-VL processor for TRL without the video processor (which needs torchvision), and with the chat
    template our prompts use (system prompt, then the images before the text)."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    template = (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT +
        "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return ImageOnlyProcessor(Qwen2VLImageProcessorPil.from_pretrained(checkpoint),
                              AutoTokenizer.from_pretrained(checkpoint), chat_template=template)


def time_trl(cfg: DictConfig, checkpoint: Path, steps: int, warmup: int) -> list[float]:
    from datasets import Dataset
    from transformers import PrinterCallback, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    task = build_tasks(cfg)[0]
    rft, total = cfg.rft, cfg.steps_per_task
    examples = list(task.train)
    dataset = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": [{"type": "image"},
                                                  {"type": "text", "text": render_prompt(cfg.data.template, e)}]}]
                   for e in examples],
        "images": [e.images for e in examples],
        "answer": [e.answer for e in examples],
    })
    rewards = Rewards.from_config(cfg.rft.reward)

    def reward(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return rewards(texts, [Example("", gold) for gold in answer], task.scorer, cfg.data.template).total.tolist()

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            ends.append(time.perf_counter())

    config_args = dict(
        use_cpu=True, bf16=False, fp16=False, per_device_train_batch_size=cfg.data.batch_size * rft.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=rft.group_size, num_iterations=1,
        max_steps=total, max_completion_length=rft.max_new_tokens, temperature=rft.temperature, top_p=rft.top_p,
        top_k=0, use_vllm=False, beta=rft.kl.coef, learning_rate=cfg.optim.lr, lr_scheduler_type="constant",
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.trainer.gradient_clip_val, optim="adamw_torch",
        gradient_checkpointing=False, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed,
    )
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(output_dir=out, **config_args),
                              train_dataset=dataset, processing_class=trl_processor(checkpoint), callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return [b - a for a, b in zip(ends, ends[1:])][warmup:]


def bench_rft(overrides: list[str], steps: int = 10, warmup: int = 2, rounds: int = 2) -> dict:
    try:
        import trl
    except ImportError:
        raise SystemExit("the RFT benchmark compares with TRL: pip install -e \".[bench]\"") from None
    total = steps + warmup + 1
    cfg = load_config(None, [*BENCH_DEFAULTS, *overrides])
    # Both sides draw from the same prompts: the first batch_size * total examples of the task.
    cfg.steps_per_task, cfg.data.train_size = total, cfg.data.batch_size * total
    checkpoint = resolve_checkpoint(cfg)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    ours, theirs = [], []
    for _ in range(rounds):
        ours += time_ours(cfg, steps, warmup)
        theirs += time_trl(cfg, checkpoint, steps, warmup)
    result = {"cpt": statistics.median(ours), "trl": statistics.median(theirs), "trl_version": trl.__version__,
              "steps": len(ours), "rollouts_per_step": cfg.data.batch_size * cfg.rft.group_size,
              "max_new_tokens": cfg.rft.max_new_tokens, "threads": torch.get_num_threads()}
    result["ratio"] = result["trl"] / result["cpt"]
    return result


def format_bench(result: dict) -> str:
    return "\n".join([
        f"RFT step, {result['rollouts_per_step']} rollouts of up to {result['max_new_tokens']} tokens, "
        f"median of {result['steps']} steps per side, {result['threads']} threads",
        f"  cpt RFTModule          {result['cpt']:.3f} s/step",
        f"  TRL {result['trl_version']:<7} GRPOTrainer {result['trl']:.3f} s/step",
        f"  TRL / cpt              {result['ratio']:.2f}x",
    ])


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpt bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["rft"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs, alternating")
    known, overrides = parser.parse_known_args(args)
    print(format_bench(bench_rft(overrides, known.steps, known.warmup, known.rounds)))
    return 0
