"""O-LoRA (Wang et al., 2023, "Orthogonal Subspace Learning for Language Model Continual Learning"): a new LoRA
adapter for every stage, the earlier ones frozen, and a penalty keeping the new adapter's subspace orthogonal to
theirs.

The backbone is built with one peft adapter per stage (`olora.enabled`, cpt.model.stage_adapters); at each stage
start this callback puts the adapters of the stages so far in the forward and lets only the stage's own train, so
the model after stage t is the base plus the adapters of stages 1..t. From the second stage on every step adds

    orthogonal * sum over LoRA layers of sum_ij |(A_old A_new^T)_ij|  +  l2 * sum over the new adapter's matrices
                                                                         of their L2 (Frobenius) norm

with A_new (r, in) the stage's adapter's down-projection and A_old its predecessors' stacked (O-LoRA's
lambda1 = 0.5 and lambda2 = 0 by default, as in its scripts). Nothing but the weights is kept: a resumed run's
backbone has every adapter and the checkpoint their values.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.arguments import finite_number
from cpt.methods.loss_terms import TrainingStep
from cpt.model.backbone import has_adapters
from cpt.model.stage_adapters import activate, stage_adapter


def lora_layers(model: torch.nn.Module, adapter: str) -> list[torch.nn.Module]:
    """The modules holding `adapter`'s LoRA matrices (peft's lora_A / lora_B per wrapped layer)."""
    return [m for m in model.modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)
            and adapter in m.lora_A]


def orthogonality(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """sum |old new^T| for down-projections old (r_old, in) and new (r, in)."""
    return (old @ new.T).abs().sum()


class OrthogonalLoRA(Callback):
    name, needs_logits = "olora", False  # a loss term (cpt.methods.loss_terms), logged as loss/olora

    def __init__(self, orthogonal: float = 0.5, l2: float = 0.0):
        self.orthogonal = finite_number("olora orthogonal", orthogonal)
        self.l2 = finite_number("olora l2", l2)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.add_loss_term(self)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.backbone
        if not has_adapters(model) or len(model.peft_config) != len(pl_module.stages):
            raise ValueError("O-LoRA needs a backbone with a LoRA adapter per stage: set olora.enabled=true in the "
                             "config (with model.finetune=lora or qlora)")
        activate(model, trainer.current_epoch)

    def loss(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        stage = step.module.task_index
        if stage == 0:
            return None, {}
        new = stage_adapter(stage)
        earlier = [stage_adapter(k) for k in range(stage)]
        overlap, norms = None, None
        for layer in lora_layers(step.module.backbone, new):
            old = torch.cat([layer.lora_A[name].weight for name in earlier])
            term = orthogonality(old, layer.lora_A[new].weight)
            size = layer.lora_A[new].weight.norm() + layer.lora_B[new].weight.norm()
            overlap = term if overlap is None else overlap + term
            norms = size if norms is None else norms + size
        loss = step.share * (self.orthogonal * overlap + self.l2 * norms)
        return loss, {"olora/overlap": overlap.detach()}
