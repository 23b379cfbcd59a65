"""The base LightningModule shared by every training paradigm: backbone, processor, optimizer, schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from cpt.config import MIXED_PRECISIONS
from cpt.data.tasks import Task, build_stages
from cpt.methods.loss_terms import LossTerm, TrainingStep
from cpt.model.backbone import DTYPES, load_backbone, processor_source
from cpt.model.processor import VisionTextProcessor
from cpt.model.sharded_load import load_sharded_backbone
from cpt.model.stage_adapters import is_adapter_weight


def per_task_schedule(steps_per_task: int, warmup_ratio: float, min_lr_ratio: float):
    """LR multiplier for optimizer step s: linear warmup then cosine decay, restarting with every task."""
    warmup = min(math.ceil(warmup_ratio * steps_per_task), steps_per_task - 1) if steps_per_task > 1 else 0

    def multiplier(step: int) -> float:
        s = step % steps_per_task
        if s < warmup:
            return (s + 1) / warmup
        progress = (s - warmup) / max(1, steps_per_task - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


class CPTModule(L.LightningModule):
    """Holds the backbone and the task sequence; subclasses define `training_step`.

    The backbone is built in `configure_model`, so that under FSDP each rank loads it and shards it at once.

    What callbacks read and call:
      task_index      the position in the sequence of stages (one task each, or all tasks under multitask);
      start_stage(k)  called by the TaskSwitching callback as stage k begins;
      step_metrics    the latest training step's metrics by name (RFT fills it, e.g. `reward/group_var`; SFT
                      leaves it empty);
      add_loss_term(t) a term added to every method's training loss (cpt.methods.loss_terms);
      tasks, stages, processor, backbone, trains_on_answers.
    """

    trains_on_answers = True  # whether training batches carry the target answers (SFT) or prompts only (RFT)
    strict_loading = False  # checkpoints hold the trainable weights only; the frozen ones come from the base

    def __init__(self, cfg: DictConfig, checkpoint: Path, tasks: Sequence[Task] = ()):
        super().__init__()
        self.cfg = cfg
        self.tasks = list(tasks)
        self.stages = build_stages(cfg)
        self.checkpoint = Path(checkpoint)
        self.processor = VisionTextProcessor.from_pretrained(processor_source(self.checkpoint), cfg.model.min_pixels,
                                                             cfg.model.max_pixels)
        self.backbone: torch.nn.Module | None = None
        self.task_index = 0
        self.step_metrics: dict[str, float] = {}
        self.loss_terms: list[LossTerm] = []

    def start_stage(self, index: int) -> None:
        self.task_index = index

    def add_loss_term(self, term: LossTerm) -> None:
        """Add `term.loss(step)` to the training loss of every step from now on (cpt.methods.loss_terms)."""
        if term not in self.loss_terms:
            self.loss_terms.append(term)

    def terms_need_logits(self) -> bool:
        return any(term.needs_logits for term in self.loss_terms)

    def loss_terms_before(self, step: TrainingStep) -> None:
        """Every loss term's optional `before(step)`, ahead of the forward that computes the step's logits."""
        for term in self.loss_terms:
            if hasattr(term, "before"):
                term.before(step)

    def loss_terms_on(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, torch.Tensor | float]]:
        """The loss terms' sum on `step` (None without any), and what to log: `loss/<name>` for each term that gave
        a loss, and the terms' own metrics."""
        total, metrics = None, {}
        for term in self.loss_terms:
            loss, found = term.loss(step)
            if loss is not None:
                total = loss if total is None else total + loss
                metrics[f"loss/{term.name}"] = loss.detach()
            metrics.update(found)
        return total, metrics

    def configure_model(self) -> None:
        if self.backbone is None:
            self.backbone = self.build_backbone(self.cfg.model)
            self.backbone.train()  # from_pretrained returns eval mode; dropout in adapters must be live

    def adapters(self) -> int:
        """LoRA adapters the backbone is built with: one per stage for O-LoRA (callbacks/olora.py), else one."""
        return len(self.stages) if self.cfg.olora.enabled else 1

    def build_backbone(self, model_cfg: DictConfig) -> torch.nn.Module:
        """The checkpoint as `model_cfg` asks, sharded when the strategy is FSDP: then each process builds it on
        the meta device and reads only its own shards (cpt.model.sharded_load), never the whole model."""
        mesh = self.device_mesh
        if mesh is None:
            return load_backbone(model_cfg, self.checkpoint, seed=self.cfg.seed, adapters=self.adapters(),
                                 experts=self.cfg.moe_lora.experts if self.cfg.moe_lora.enabled else None)
        # ModelParallelStrategy, i.e. trainer.strategy=fsdp
        dtype = DTYPES[model_cfg.dtype]
        return load_sharded_backbone(model_cfg, self.checkpoint, mesh["data_parallel"], seed=self.cfg.seed,
                                     param_dtype=None if dtype == torch.float32 else dtype)

    # --- the training state a stopped run resumes from (checkpoints/last.ckpt) ------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # LoRA/QLoRA or a frozen vision tower: the frozen weights are the base checkpoint's, no need to save them.
        # Under FSDP each process writes its own shards, and the distributed loader wants every key back.
        if self.device_mesh is not None:
            return
        # Every adapter weight is kept: one per stage (O-LoRA) keeps the earlier stages' frozen ones.
        trainable = {name for name, param in self.named_parameters()
                     if param.requires_grad or is_adapter_weight(name)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def check_finite_loss(self, loss: torch.Tensor, method: str) -> None:
        """Stops the run on a NaN or infinite loss. The ranks first agree whether any of them has one, so they
        stop together: a rank raising alone would leave the others waiting in the next collective."""
        bad = int(self.trainer.strategy.reduce((~torch.isfinite(loss.detach())).float(), reduce_op="sum"))
        if bad:
            world = self.trainer.world_size
            value = (f"not finite on {bad} of {world} processes (this one: {loss.item()})" if world > 1
                     else str(loss.item()))
            raise FloatingPointError(
                f"{method} loss is {value} at step {self.global_step} (task {self.task_index + 1}); "
                "lower optim.lr or use model.dtype=float32. Results of finished tasks are in the run directory.")

    def optimizer_steps_per_stage(self) -> int:
        return self.cfg.steps_per_task * len(self.stages[0].tasks)  # every stage has as many tasks

    def configure_optimizers(self):
        optim = self.cfg.optim
        params = [p for p in self.parameters() if p.requires_grad]
        # The fused kernel updates all parameters in one pass (about 4x faster than the per-tensor loop on CPU,
        # and the fastest on CUDA); torch has it for floating-point parameters on these devices. Under a mixed
        # precision Lightning clips the gradients itself, which it refuses to do for an optimizer that unscales
        # them inside its step (a fused one): the loop then.
        mixed = self.cfg.trainer.precision in MIXED_PRECISIONS
        fused = not mixed and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused or None)
        schedule = per_task_schedule(self.optimizer_steps_per_stage(), optim.warmup_ratio, optim.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
