"""The toy foundation models behind the toy presets (`tiny`: Qwen2.5-VL, `tiny-qwen3-vl`: Qwen3-VL, `tiny-qwen3.5`:
Qwen3.5; `small`, `small-qwen3-vl` and `small-qwen3.5`, 5 to 7 times their size, for a second model size).

The study starts from a model that already has general skills and some zero-shot ability on the new tasks
(RFT needs a non-zero reward to learn from). A random network has neither, so the package pre-trains one:
full fine-tuning of a random tiny model of the family on the synthetic general pool, with a share of examples in the
downstream tasks' format. The result is cached under a key made from the whole recipe, so a changed recipe
never reuses a stale model.

Pre-training is seeded but not bit-reproducible across CPUs (their float kernels differ), so the package ships
the default recipe's weights of the toys a study uses (cpt.model.family.Toy.shipped): every machine starts from the
same base and sees the same base row. `foundation.use_shipped=false` rebuilds them from the recipe instead, into
the cache; a toy without shipped weights is pre-trained on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler
from tqdm.auto import tqdm

from cpt.data.batches import Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.prompts import TEMPLATES
from cpt.data.synthetic import GENERAL_NAME, PRIMITIVES_NAME, TASKS, SyntheticSplit
from cpt.model.answer_loss import sft_loss
from cpt.model.backbone import has_weights
from cpt.model.family import Family
from cpt.model.positions import require_token_types
from cpt.model.tiny import build_tiny_processor

log = logging.getLogger(__name__)

# Bump when the synthetic benchmark, the prompt templates, the tokenizer corpus, the tiny architecture or the way
# its inputs are placed changes (4: image tokens at the model's M-RoPE positions, not 1D ones).
RECIPE_VERSION = 4
POOL_SIZE = 20_000
FIRST_STAGE_SHARE = 0.4
# The default recipe's weights, built once and shipped (a directory per family); recipe.json says which recipe.
SHIPPED_ROOT = Path(__file__).parent


def cache_root(configured: str | None) -> Path:
    """Where the package caches what it builds (the foundation model, shape presets)."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("CPT_CACHE_DIR", Path.home() / ".cache" / "cpt"))


def recipe(cfg: DictConfig, image_size: int, family: Family, preset: str | None = None) -> dict:
    """What makes a toy foundation model: its family and architecture (`preset`, the default toy if None) and the
    pre-training recipe (`foundation.*`, the image size)."""
    preset = preset or family.tiny_preset
    shape = family.toys[preset].shape
    return {"family": family.name, "preset": preset, "version": RECIPE_VERSION, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "task_share": cfg.task_share, "seed": cfg.seed,
            "image_size": image_size, "architecture": {"text": shape.text, "vision": shape.vision}}


def foundation_dir(cfg: DictConfig, image_size: int, family: Family, preset: str | None = None) -> Path:
    made_of = recipe(cfg, image_size, family, preset)
    key = hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cfg.cache_dir) / "foundation" / key


def shipped_foundation(cfg: DictConfig, image_size: int, family: Family, preset: str | None = None) -> Path | None:
    """The toy's shipped weights' directory when it has some and the config asks for exactly their recipe, else
    None."""
    toy = family.toys[preset or family.tiny_preset]
    if toy.shipped is None or not cfg.use_shipped:
        return None
    shipped = SHIPPED_ROOT / toy.shipped
    if not (shipped / "recipe.json").is_file() or not has_weights(shipped):
        return None
    wanted = recipe(cfg, image_size, family, preset)
    return shipped if json.loads((shipped / "recipe.json").read_text()) == wanted else None


def ensure_foundation(cfg: DictConfig, image_size: int, family: Family, preset: str | None = None) -> Path:
    """The toy foundation model's directory (`preset` of the family, its default toy if None): the shipped weights
    for their recipe, else the cached model of the configured recipe, pre-training it first if it is not there."""
    shipped = shipped_foundation(cfg, image_size, family, preset)
    if shipped is not None:
        return shipped
    directory = foundation_dir(cfg, image_size, family, preset)
    if (directory / "config.json").is_file() and has_weights(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the final place and rename: an interrupted run never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        pretrain(cfg, image_size, family, staging, preset)
        try:
            staging.rename(directory)
        except OSError:  # another process finished first
            if not has_weights(directory):
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


class MixedSplit(Sequence):
    """Several splits interleaved by a seeded permutation of all their indices."""

    def __init__(self, parts: Sequence[Sequence[Example]], seed: int):
        self.index = [(p, i) for p, part in enumerate(parts) for i in range(len(part))]
        order = torch.randperm(len(self.index), generator=torch.Generator().manual_seed(seed)).tolist()
        self.index = [self.index[k] for k in order]
        self.parts = parts

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Example:
        part, i = self.index[index]
        return self.parts[part][i]


def pretraining_stages(cfg: DictConfig, image_size: int) -> list[tuple[int, MixedSplit]]:
    """(steps, pool) per stage. A random network first has to find visual features at all, and in a wide
    mixture of hard questions it barely starts; so the first stage asks open questions, half about the
    primitives (colour, shape, count, digits) and half in the downstream tasks' format. The second stage
    is the general multiple-choice pool with the primitives, plus `task_share` of the tasks' format."""
    primitives = SyntheticSplit(PRIMITIVES_NAME, "train", POOL_SIZE, cfg.seed, image_size)
    tasks = [SyntheticSplit(name, "pretrain", POOL_SIZE // len(TASKS), cfg.seed, image_size) for name in TASKS]
    task_examples = int(POOL_SIZE * cfg.task_share)
    general = SyntheticSplit(GENERAL_NAME, "train", POOL_SIZE - task_examples, cfg.seed, image_size)
    tasks_share = [SyntheticSplit(name, "pretrain", task_examples // len(TASKS), cfg.seed, image_size)
                   for name in TASKS]
    first = int(cfg.steps * FIRST_STAGE_SHARE)
    stages = [(first, MixedSplit([primitives, *tasks], cfg.seed)),
              (cfg.steps - first, MixedSplit([general, primitives, *tasks_share], cfg.seed))]
    return [(steps, pool) for steps, pool in stages if steps > 0]


def pretrain(cfg: DictConfig, image_size: int, family: Family, directory: Path, preset: str | None = None) -> None:
    preset = preset or family.tiny_preset
    torch.manual_seed(cfg.seed)
    processor = build_tiny_processor(cfg.seed, image_size, family)
    model = family.model_class(family.toy_config(processor.tokenizer, preset))
    require_token_types(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    size = sum(p.numel() for p in model.parameters()) / 1e6
    progress = tqdm(desc=f"Pre-training the {preset} {family.display_name} foundation model ({size:.1f}M "
                         "parameters; cached afterwards)", total=cfg.steps)
    for stage, (steps, pool) in enumerate(pretraining_stages(cfg, image_size)):
        # Both prompt templates, so the base can answer directly or reason first, whichever a run asks for.
        dataset = ConcatDataset([EncodedDataset(pool, processor, template) for template in TEMPLATES])
        sampler = RandomSampler(dataset, replacement=True, num_samples=steps * cfg.batch_size,
                                generator=torch.Generator().manual_seed(cfg.seed + stage))
        for batch in DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                collate_fn=Collator(processor.pad_id)):
            loss = sft_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"foundation pre-training loss became {loss.item()}; lower foundation.lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update()
            progress.set_postfix(stage=stage + 1, loss=f"{loss.item():.3f}")
    progress.close()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / "recipe.json").write_text(json.dumps(recipe(cfg, image_size, family, preset), indent=2))
