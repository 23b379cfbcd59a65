"""MagMaX (Marczak et al., ECCV 2024), the model-merging baseline of MLLM-CTBench: train the tasks one after another
as plain sequential fine-tuning does, and evaluate, after each task, the base plus the element-wise largest of the
task vectors so far,

    tau_t = theta_t - theta_0,    merged = the entry of largest magnitude over tau_1..tau_t (its sign kept),
    model after task t = theta_0 + scale * merged,

where theta_t are the weights sequential training reached after task t and theta_0 the weights the run started
from. As the authors' code (`danielm1405/magmax`: sequential fine-tuning, `merge_max_abs`, `apply_to` with
scaling coefficient 0.5) does, the next task trains from theta_t, not from the merged model; a tie goes to the later
task. Max-magnitude merging is associative, so one running merged vector gives what merging all of them at once
would.

Hooks: `on_train_start` keeps theta_0 (the trainable parameters; each process its own shards under FSDP);
`on_train_epoch_end` (first among the callbacks, so that the evaluation, the analysis and the stage checkpoint see
the merged model) keeps theta_t, adds tau_t to the running merge and writes the merged weights into the model;
`on_train_epoch_start` of the next stage puts theta_t back. The analysis (callbacks/analysis.py) therefore measures
a stage's update from theta_{t-1} to the merged model it evaluates. Memory: three copies of the trainable weights
(theta_0, the merge, theta_t), all in `state_dict`, so a resumed run continues exactly.

Full fine-tuning only (`cpt.config` refuses LoRA): the merged task vectors are dense weight deltas, which a low-rank
adapter cannot hold; MLLM-CTBench's LoRA learner takes the signed maximum of the A and B matrices separately,
which is not MagMaX.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.arguments import finite_number
from cpt.model.backbone import local_part, reshard
from cpt.model.fisher import trainable_parameters


def max_magnitude(merged: torch.Tensor | None, task_vector: torch.Tensor) -> torch.Tensor:
    """Element-wise, the entry of larger magnitude of the two, the new task vector's on a tie."""
    if merged is None:
        return task_vector.clone()
    return torch.where(task_vector.abs() >= merged.abs(), task_vector, merged)


class MagMaX(Callback):
    def __init__(self, scale: float = 0.5):
        self.scale = finite_number("magmax scale", scale, positive=True)
        self.base: dict[str, torch.Tensor] = {}  # theta_0
        self.merged: dict[str, torch.Tensor] = {}  # the running max-magnitude task vector
        self.trained: dict[str, torch.Tensor] = {}  # theta_t, which the next stage trains from

    def local_parameters(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        reshard(pl_module.backbone)  # the shards, not a gathered copy FSDP2 would discard
        return {name: local_part(param) for name, param in trainable_parameters(pl_module.backbone).items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.base:  # a resumed run has it from its checkpoint
            self.base = {name: value.detach().clone() for name, value in self.local_parameters(pl_module).items()}

    @torch.no_grad()
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in self.local_parameters(pl_module).items() if self.trained else ():
            value.copy_(self.trained[name])
        self.trained = {}

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in self.local_parameters(pl_module).items():
            self.trained[name] = value.detach().clone()
            self.merged[name] = max_magnitude(self.merged.get(name), value - self.base[name])
            value.copy_(self.base[name] + self.scale * self.merged[name])

    def state_dict(self) -> dict:
        return {"base": self.base, "merged": self.merged, "trained": self.trained}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base, self.merged = dict(state_dict["base"]), dict(state_dict["merged"])
        self.trained = dict(state_dict["trained"])
