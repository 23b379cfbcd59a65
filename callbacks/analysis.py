"""Why forgetting happens: per training stage, how far each part of the model moved, how much reward variance
drove the policy gradient, and how far the model drifted from the base on every task's prompts.

Hooks (every rank runs them; only rank 0 writes):
  on_train_start       fixes each task's probe set (its first `probe_size` evaluation prompts), samples one
                       completion per prompt from the base model (temperature 1, seeded) and keeps the base
                       log-probabilities of its tokens;
  on_train_epoch_start copies the trainable parameters (the local shards under FSDP);
  on_train_batch_end   collects `reward/group_var` from `pl_module.step_metrics` (RFT: the mean within-group
                       reward variance, which scales the policy gradient; SFT has none);
  on_train_epoch_end   measures the stage and writes `analysis.json` and `analysis.png` to the run directory, and
                       logs `analysis/...` metrics.

Per stage `analysis.json` holds:
  update_norm  per module group (vision, attention, mlp, embeddings_head, other; LoRA adapters count with the
               module they adapt) the norm of the stage's change of the trainable parameters ||theta_end -
               theta_start|| (`abs`) and that divided by ||theta_start|| (`rel`; null when theta_start is 0).
               Groups without trainable parameters are left out; under LoRA theta is the adapters' weights;
  reward_var   the mean of `reward/group_var` over the stage's steps, null without rewards;
  kl_to_base   per task, KL(base || current) on the probe prompts: for completions y sampled from the base,
               log p_base(y) - log p_current(y) estimated per token with k3 (never negative, exactly 0 while the
               model is unchanged; capped at 10 per token as in training), summed over each completion's tokens
               and averaged over the prompts (`kl_unit`).
The base is measured once, so no copy of it is kept; a resumed run takes the base's samples and log-probs from
the checkpoint (a stage resumed midway measures its update from the resume point).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.distributed.tensor import DTensor

from cpt.atomic import replacing, write_json
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.tasks import Task
from cpt.methods.base import CPTModule
from cpt.model.backbone import local_part, reshard
from cpt.model.generation import Sampling, generate_ids
from cpt.rl.log_probs import token_log_probs
from cpt.rl.policy_loss import kl_estimate
from cpt.rl.rollouts import Rollouts

GROUPS = ("vision", "attention", "mlp", "embeddings_head", "other")
KL_UNIT = ("nats per completion: k3 estimate of KL(base || current) summed over the tokens of a completion "
           "sampled from the base (up to its end-of-turn token), averaged over the probe prompts")
PROBE_TEMPERATURE = 1.0  # the base's own distribution: the KL estimate needs samples from it


def module_group(name: str) -> str:
    """The group of a parameter, by its name; a LoRA adapter's name contains the module it adapts."""
    if "visual" in name:
        return "vision"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings_head"
    if "self_attn" in name:
        return "attention"
    if "mlp" in name:
        return "mlp"
    return "other"


@dataclass
class Probe:
    """A task's probe prompts with one completion each, sampled from the base (not scored)."""

    rollouts: Rollouts
    base_logp: torch.Tensor  # (prompts, tokens) log p_base of each completion token


class ForgettingAnalysis(Callback):
    def __init__(self, run_dir: str | Path, probe_size: int = 16, max_new_tokens: int = 16,
                 seed: int = 0):
        if probe_size < 1:
            raise ValueError(f"probe_size is {probe_size}; the KL to the base needs at least 1 prompt per task")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is {max_new_tokens}; probe completions need at least 1 token")
        self.run_dir = Path(run_dir)
        self.probe_size, self.max_new_tokens, self.seed = probe_size, max_new_tokens, seed
        self.stages: list[dict] = []
        self.probes: dict[str, Probe] = {}
        self.templates: dict[str, str] = {}  # each task's prompt template, which its probes use
        self.restored_probes: dict[str, dict[str, torch.Tensor]] = {}  # the base's samples, from a checkpoint
        self.start: dict[str, torch.Tensor] = {}  # trainable parameters (local shards) as the stage began
        self.reward_var_sum, self.reward_var_steps = 0.0, 0

    # --- state for a resumed run ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        probes = {name: {"ids": p.rollouts.completion_ids.cpu(), "base_logp": p.base_logp.cpu()}
                  for name, p in self.probes.items()}
        return {"stages": self.stages, "probes": probes, "reward_var_sum": self.reward_var_sum,
                "reward_var_steps": self.reward_var_steps}

    def load_state_dict(self, state: dict) -> None:
        self.stages = list(state["stages"])
        self.restored_probes = dict(state["probes"])
        self.reward_var_sum, self.reward_var_steps = state["reward_var_sum"], state["reward_var_steps"]

    # --- hooks ------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, CPTModule) or not pl_module.tasks:
            raise ValueError(f"ForgettingAnalysis probes the tasks of a CPT module (pl_module.tasks); "
                             f"{type(pl_module).__name__} has none")
        self.probes = {task.name: self.make_probe(trainer, pl_module, task) for task in pl_module.tasks}
        self.templates = {task.name: task.template for task in pl_module.tasks}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reshard(pl_module.backbone)  # read the shards, not a gathered copy FSDP2 left behind
        self.start = {name: local_part(p).detach().clone() for name, p in pl_module.backbone.named_parameters()
                      if p.requires_grad}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        value = pl_module.step_metrics.get("reward/group_var")
        if value is not None:
            self.reward_var_sum += float(value)
            self.reward_var_steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.task_index
        record = {"stage": stage + 1, "name": pl_module.stages[stage].name,
                  "update_norm": self.update_norms(trainer, pl_module),
                  "reward_var": self.stage_reward_var(trainer, pl_module), "kl_to_base": self.kl_to_base(pl_module)}
        self.stages.append(record)
        self.start, self.reward_var_sum, self.reward_var_steps = {}, 0.0, 0
        if trainer.is_global_zero:
            self.write()
            if trainer.logger is not None:
                trainer.logger.log_metrics(stage_metrics(record), step=trainer.global_step)

    # --- measurements -----------------------------------------------------------------------------------------

    def make_probe(self, trainer: L.Trainer, pl_module: L.LightningModule, task: Task) -> Probe:
        """The task's probe prompts and a base completion for each: sampled now, or the checkpoint's."""
        examples = [task.eval[i] for i in range(min(self.probe_size, len(task.eval)))]
        dataset = EncodedDataset(examples, pl_module.processor, task.template, with_response=False)
        collate = Collator(pl_module.processor.pad_id)
        prompts = collate([dataset[i] for i in range(len(examples))]).to(pl_module.device)
        restored = self.restored_probes.get(task.name)
        model = pl_module.backbone
        with probing(model):
            if restored is None:
                # Seeded apart from the training stream and alike on every rank, so all ranks run the same passes.
                devices = [pl_module.device] if pl_module.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.seed)
                    ids = generate_ids(model, pl_module.processor, prompts, self.max_new_tokens,
                                       synced=trainer.world_size > 1, sampling=Sampling(temperature=PROBE_TEMPERATURE))
            else:
                ids = restored["ids"].to(pl_module.device)
            rollouts = Rollouts.sampled(prompts, ids, pl_module.processor.eos_id, group_size=1)
            base_logp = (token_log_probs(model, prompts, ids, rollouts.mask, PROBE_TEMPERATURE)[0]
                         if restored is None else restored["base_logp"].to(pl_module.device))
            return Probe(rollouts, base_logp)

    def kl_to_base(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Per task, the mean over probe prompts of the completion's summed per-token k3 KL(base || current)."""
        kl = {}
        with probing(pl_module.backbone):
            for name, probe in self.probes.items():
                rollouts = probe.rollouts
                current = token_log_probs(pl_module.backbone, rollouts.prompts, rollouts.completion_ids, rollouts.mask,
                                          PROBE_TEMPERATURE)[0]
                # Samples come from the base, so the base plays the policy in Schulman's estimator.
                per_token = kl_estimate(probe.base_logp, current, "k3") * rollouts.mask.float()
                kl[name] = float(per_token.sum(1).mean())
        return kl

    @torch.no_grad()
    def update_norms(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, float | None]]:
        """Per group with trainable parameters, ||theta_end - theta_start|| and its ratio to ||theta_start||."""
        if not self.start:
            raise RuntimeError("ForgettingAnalysis has no parameters from the start of the stage: on_train_epoch_start "
                               "did not run before on_train_epoch_end")
        reshard(pl_module.backbone)
        groups = sorted({module_group(name) for name in self.start}, key=GROUPS.index)
        # Per group, row 0: squared norm of the change, row 1: of the start (float64: many squares add up).
        sums = torch.zeros(2, len(groups), dtype=torch.float64, device=pl_module.device)
        sharded = False
        for name, param in pl_module.backbone.named_parameters():
            if name in self.start:
                sharded |= isinstance(param, DTensor)
                start, column = self.start[name].float(), groups.index(module_group(name))
                sums[0, column] += (local_part(param).detach().float() - start).square().sum(dtype=torch.float64)
                sums[1, column] += start.square().sum(dtype=torch.float64)
        if sharded:  # each rank summed its own shards
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        moved, size = sums.sqrt().tolist()
        return {g: {"abs": m, "rel": m / s if s > 0 else None} for g, m, s in zip(groups, moved, size)}

    def stage_reward_var(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """The stage's mean `reward/group_var` over all ranks' steps; None when no step reported one."""
        totals = torch.tensor([self.reward_var_sum, float(self.reward_var_steps)], dtype=torch.float64,
                              device=pl_module.device)
        total, steps = trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        return total / steps if steps > 0 else None

    # --- output -----------------------------------------------------------------------------------------------

    def write(self) -> None:
        content = {"kl_unit": KL_UNIT, "kl_estimator": "k3", "probe_size": self.probe_size,
                   "max_new_tokens": self.max_new_tokens, "templates": self.templates, "stages": self.stages}
        write_json(self.run_dir / "analysis.json", content)
        plot_analysis(self.stages, self.run_dir / "analysis.png")


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout in adapters) without gradient; afterwards the mode it had, and under FSDP the
    shards back in place (a forward without backward leaves the root gathered)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        reshard(model)
        model.train(was_training)


def stage_metrics(record: dict) -> dict[str, float]:
    """A stage's record as flat `analysis/...` metrics for the logger."""
    metrics = {}
    for group, norm in record["update_norm"].items():
        metrics[f"analysis/update_norm/{group}"] = norm["abs"]
        if norm["rel"] is not None:
            metrics[f"analysis/update_rel/{group}"] = norm["rel"]
    if record["reward_var"] is not None:
        metrics["analysis/reward_var"] = record["reward_var"]
    for task, kl in record["kl_to_base"].items():
        metrics[f"analysis/kl_to_base/{task}"] = kl
    return metrics


def plot_analysis(stages: list[dict], path: Path) -> None:
    """Three panels across stages: update norm per module group, reward variance, KL to the base per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s['stage']}:{s['name']}" for s in stages]
    x = list(range(1, len(stages) + 1))
    fig, (norms, rewards, kls) = plt.subplots(1, 3, figsize=(15, 4.2))

    groups = [g for g in GROUPS if any(g in s["update_norm"] for s in stages)]
    width = 0.8 / max(1, len(groups))
    for i, group in enumerate(groups):
        values = [s["update_norm"].get(group, {}).get("abs", 0.0) for s in stages]
        norms.bar([k + (i - (len(groups) - 1) / 2) * width for k in x], values, width, label=group)
    norms.set_title("Update norm per stage")
    norms.set_ylabel("||theta_end - theta_start||")
    norms.legend(fontsize=8)

    variances = [s["reward_var"] for s in stages]
    if any(v is not None for v in variances):
        rewards.plot(x, [float("nan") if v is None else v for v in variances], marker="o")
    else:
        rewards.text(0.5, 0.5, "no rewards (SFT)", ha="center", va="center", transform=rewards.transAxes)
    rewards.set_title("Reward variance within groups")
    rewards.set_ylabel("mean Var[reward]")

    # The base is at KL 0 by definition: each line starts there.
    for task in stages[0]["kl_to_base"] if stages else []:
        kls.plot([0, *x], [0.0, *(s["kl_to_base"].get(task, float("nan")) for s in stages)], marker="o", label=task)
    kls.set_title("KL(base || current) on each task's prompts")
    kls.set_ylabel("nats per completion")
    kls.legend(fontsize=8)

    for ax in (norms, rewards):
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.set_xlabel("stage")
    kls.set_xticks([0, *x], ["base", *labels], rotation=30, ha="right")
    kls.set_xlabel("after stage")
    fig.tight_layout()
    with replacing(path) as staging:
        fig.savefig(staging, dpi=100, format="png")
    plt.close(fig)
