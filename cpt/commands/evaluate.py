"""`python -m cpt eval [CONFIG.yaml] checkpoint=PATH [out=DIR] [key=value ...]`: one accuracy row for a checkpoint
(a stage directory, an exported model, a local checkpoint, or the config's own model when no checkpoint is named)
on the config's tasks and general benchmarks, with nothing trained.

The row is evaluated as `fit` evaluates (same examples, greedy decoding, batch size and lengths, a LoRA stage with
its adapters on top of its base), so a stage's row comes back exactly. It is printed and written as a run directory
with one row (`results.json`, `accuracy_matrix.csv`, `config.yaml`, `versions.json`), which `cpt compare` puts
beside runs.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from cpt import flags
from cpt.atomic import write_json
from cpt.commands.fit import general_benchmarks
from cpt.commands.run_dir import held_run, versions
from cpt.config import config_from_args, save_config
from cpt.data.synthetic import GENERAL_NAME
from cpt.data.tasks import build_tasks
from cpt.errors import ConfigError
from cpt.eval.evaluate import evaluate_by_category
from cpt.eval.results import format_table, summarize, write_results
from cpt.model.backbone import load_for_inference, processor_source
from cpt.model.families import preset_families
from cpt.model.presets import resolve_checkpoint
from cpt.model.processor import VisionTextProcessor

# This command's own keys and their types (the rest are the config's); the checkpoint may be a preset's name, so
# main checks that it names one or an existing path, and resolve_checkpoint what the path holds.
KEYS = {"checkpoint": flags.TEXT, "out": flags.OUTPUT_DIR}


def device_for(cfg: DictConfig) -> torch.device:
    if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def model_for_inference(cfg: DictConfig) -> tuple[Path, torch.nn.Module, VisionTextProcessor, torch.device]:
    """cfg.model.name_or_path resolved, and its model (in eval mode, on the device) and processor as its run used
    them: what `cpt eval` and `cpt generate` answer with."""
    checkpoint = resolve_checkpoint(cfg)
    device = device_for(cfg)
    processor = VisionTextProcessor.from_pretrained(processor_source(checkpoint), cfg.model.min_pixels,
                                                    cfg.model.max_pixels)
    model = load_for_inference(cfg.model, checkpoint, seed=cfg.seed).to(device).eval()
    return checkpoint, model, processor, device


def evaluate_checkpoint(cfg: DictConfig, progress: bool = True) -> dict:
    """The summary (results.json's content) of one row: the checkpoint cfg.model.name_or_path on cfg's tasks and
    general benchmarks."""
    tasks = build_tasks(cfg)
    benchmarks = general_benchmarks(cfg)
    checkpoint, model, processor, device = model_for_inference(cfg)
    scores = {}
    for task in tqdm([*tasks, *benchmarks], desc=f"Evaluating {checkpoint.name}", disable=not progress):
        scores[task.name] = evaluate_by_category(model, processor, task, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                                                 device)
    results = {b.name: [{"accuracy": scores[b.name].accuracy, "categories": scores[b.name].categories}]
               for b in benchmarks}
    general = results.get(GENERAL_NAME, [None])[0]
    return summarize([t.name for t in tasks], [[scores[t.name].accuracy for t in tasks]],
                     [general and general["accuracy"]], [t.chance for t in tasks], stages=[], benchmarks=results,
                     name=f"eval {cfg.model.name_or_path}", method="eval", schedule="eval",
                     checkpoint=str(checkpoint))


def main(args: list[str]) -> int:
    if "-h" in args or "--help" in args:
        print(__doc__ + "\nThe config keys are fit's: python -m cpt fit --help lists them.")
        return 0
    own, rest = flags.key_values(args, KEYS, others=True)
    for arg in rest:  # a misspelt key of this command, which the config would take for a misspelt config key
        key = arg.partition("=")[0]
        close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.8)
        if close and "." not in key:
            raise ConfigError(f"unknown key {key!r}; did you mean {close[0]}=?")
    checkpoint = own.get("checkpoint")
    if checkpoint and checkpoint not in preset_families() and not Path(checkpoint).expanduser().exists():
        raise ConfigError(f"checkpoint={checkpoint!r} does not exist; give a stage directory "
                          f"(<run>/checkpoints/<k>-<task>), an exported model, a local checkpoint, or a preset "
                          f"({', '.join(preset_families())})")
    cfg = config_from_args(rest)
    if "checkpoint" in own:
        cfg.model.name_or_path = own["checkpoint"]
    out = own.get("out") or Path(f"runs/eval-{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and out.resolve() == Path(cfg.model.name_or_path).expanduser().resolve():
        raise ConfigError(f"out={str(out)!r} is the checkpoint evaluated; name a new directory")
    if held_run(out):  # a run's results.json would be replaced by this one row
        raise ConfigError(f"out={str(out)!r} already holds results ({', '.join(held_run(out))}); name a new "
                          "directory")
    summary = evaluate_checkpoint(cfg, progress=cfg.trainer.enable_progress_bar)
    save_config(cfg, out / "config.yaml")
    write_json(out / "versions.json", versions())
    write_results(out, summary)
    print(format_table(summary, first_row="eval") + f"\n\nResults in {out}")
    return 0
