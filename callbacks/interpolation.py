"""Weight interpolation with the previous stage: after each stage the weights are interpolated with those the stage
started from,

    theta <- (1 - weight) * theta_before + weight * theta_after,

so each stage keeps only `weight` of its update (weight 1 keeps the trained model; 0.5 is the midpoint). The
interpolated model is the one evaluated, saved and trained on by the next stage. Averaging fine-tuned weights with
the weights they came from is the continual-learning use of WiSE-FT (Wortsman et al., 2022), one kind of model
merging. It is not MLLM-CTBench's merging baseline, MagMaX (Marczak et al., 2024), which keeps training from the
unmerged weights and evaluates the base plus the element-wise largest of the task vectors.

`on_train_epoch_start` keeps a copy of the trainable parameters (each process its own shards under FSDP; one copy
of the trainable weights in memory); `on_train_epoch_end` interpolates them in place, before the evaluation and
the stage checkpoint (fit puts it before them). A resumed run starts a stage from its saved, interpolated weights, so
nothing else needs keeping.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cpt.model.backbone import local_part, reshard
from cpt.model.fisher import trainable_parameters


class StageInterpolation(Callback):
    def __init__(self, weight: float = 0.5):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise ValueError(f"interpolation weight must be a number in [0, 1], got {weight!r}")
        self.weight = float(weight)
        self.before: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reshard(pl_module.backbone)  # read the shards, not a gathered copy
        self.before = {name: local_part(param.detach()).clone()
                       for name, param in trainable_parameters(pl_module.backbone).items()}

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reshard(pl_module.backbone)  # write the shards, not a gathered copy FSDP2 would discard
        for name, param in trainable_parameters(pl_module.backbone).items():
            local_part(param).lerp_(self.before[name], 1 - self.weight)  # after + (1 - w) * (before - after)
        self.before = {}
