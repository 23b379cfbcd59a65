"""Why forgetting happens: per training stage, the quantities behind the competing explanations, side by side
for every method: how far each part of the model moved and how sparsely, how much reward variance drove the
policy gradient, how much the update weighed on earlier tasks' Fisher, how far the model drifted from the base on
every task's prompts (the new task's included), and which evaluation examples the stage broke or mended.

Hooks (every rank runs them; only rank 0 writes). The callback must come after the AccuracyMatrix it is given, so
that at a stage's end that stage's accuracy row already exists:
  on_train_start       fixes each task's probe set (its first `probe_size` evaluation prompts), samples one
                       completion per prompt from the base model (temperature 1, seeded) and keeps the base
                       log-probabilities of its tokens;
  on_train_epoch_start copies the trainable parameters (the local shards under FSDP) and, from the second stage
                       on, estimates the diagonal Fisher of the earlier tasks at these parameters;
  on_train_batch_end   collects `reward/group_var` from `pl_module.step_metrics` (RFT: the mean within-group
                       reward variance, which scales the policy gradient; SFT has none);
  on_train_epoch_end   measures the stage and writes `analysis.json` and `analysis.png` to the run directory, and
                       logs `analysis/...` metrics.

Per stage `analysis.json` holds:
  update_norm    per module group (vision, attention, mlp, embeddings_head, other; LoRA adapters count with the
                 module they adapt) the norm of the stage's change of the trainable parameters ||theta_end -
                 theta_start|| (`abs`) and that divided by ||theta_start|| (`rel`; null when theta_start is 0).
                 Groups without trainable parameters are left out; under LoRA theta is the adapters' weights;
  updated        the share of trainable parameters whose bfloat16 value the stage changed by more than 1e-5, over all
                 (`all`) and per module group: how sparse the update was, measured as Mukherjee et al. (2025)
                 measure it (their `check_sparsity.py`: both checkpoints in bfloat16, a parameter unchanged when
                 their difference is within an absolute 1e-5; RL is reported to move 5-30% of the parameters).
                 Rounding to bfloat16 is what makes a small step count as none: a weight stored in bfloat16 that
                 moves by less than half a bfloat16 step keeps its value. A float32 weight between two bfloat16
                 values may cross a rounding boundary with any move, with a chance of about the move over the step
                 (0.4-0.8% of its value);
  reward_var     the mean of `reward/group_var` over the stage's steps, null without rewards;
  fisher_update  d theta^T F_prev d theta with d theta the stage's update and F_prev the diagonal empirical Fisher
                 of the earlier tasks at the stage's start: the squared gradient of the SFT loss on each earlier
                 task's probe examples (with their answers; one batch per task), averaged over those tasks. The
                 study's proposition: for RFT it is about reward_var times SFT's. Null in the first stage;
  kl_to_base     per task, KL(base || current) on the probe prompts: for completions y sampled from the base,
                 log p_base(y) - log p_current(y) estimated per token with k3 (never negative, exactly 0 while the
                 model is unchanged; capped at 10 per token as in training), summed over each completion's tokens
                 and averaged over the prompts (`kl_unit`);
  kl_new_task    kl_to_base on the prompts of the stage's own task(s) (their mean under multitask): RL's Razor
                 says this predicts forgetting, whatever the method;
  forgetting     what the stage cost the earlier tasks: their mean accuracy in the row before less in this row
                 (points; null in the first stage); `general_change` the general set's change over the stage
                 (null when either row did not evaluate it);
  examples       per evaluated set, how many evaluation examples went from right to wrong (`right_to_wrong`)
                 and from wrong to right (`wrong_to_right`) over the stage (from the AccuracyMatrix's per-example
                 correctness).
The base is measured once, so no copy of it is kept; a resumed run takes the base's samples and log-probs from
the checkpoint (a stage resumed midway measures its update, and its Fisher, from the resume point). While a stage
trains the callback holds two copies of the trainable parameters (the start and the Fisher), sharded under FSDP.
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
from cpt.callbacks.accuracy_matrix import AccuracyMatrix
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.synthetic import GENERAL_NAME
from cpt.data.tasks import Task
from cpt.methods.base import CPTModule
from cpt.model.answer_loss import answer_nll
from cpt.model.backbone import local_part, reshard
from cpt.model.families import family_of_model
from cpt.model.fisher import diagonal_fisher, sum_over_shards
from cpt.model.generation import Sampling, generate_ids
from cpt.rl.log_probs import token_log_probs
from cpt.rl.policy_loss import kl_estimate
from cpt.rl.rollouts import Rollouts

GROUPS = ("vision", "attention", "mlp", "embeddings_head", "other")  # cpt.model.family.Family.module_group
KL_UNIT = ("nats per completion: k3 estimate of KL(base || current) summed over the tokens of a completion "
           "sampled from the base (up to its end-of-turn token), averaged over the probe prompts")
PROBE_TEMPERATURE = 1.0  # the base's own distribution: the KL estimate needs samples from it
UNCHANGED_WITHIN = 1e-5  # Mukherjee et al.'s tolerance on the bfloat16 values' difference


@dataclass
class Probe:
    """A task's probe prompts with one completion each, sampled from the base (not scored)."""

    rollouts: Rollouts
    base_logp: torch.Tensor  # (prompts, tokens) log p_base of each completion token


class ForgettingAnalysis(Callback):
    def __init__(self, run_dir: str | Path, probe_size: int = 16, max_new_tokens: int = 16,
                 seed: int = 0, evaluation: AccuracyMatrix | None = None):
        if probe_size < 1:
            raise ValueError(f"probe_size is {probe_size}; the KL to the base needs at least 1 prompt per task")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is {max_new_tokens}; probe completions need at least 1 token")
        self.run_dir = Path(run_dir)
        self.probe_size, self.max_new_tokens, self.seed = probe_size, max_new_tokens, seed
        self.evaluation = evaluation  # without an AccuracyMatrix: no forgetting fields
        self.fisher: dict[str, torch.Tensor] = {}  # the earlier tasks' diagonal Fisher at the stage's start
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
        earlier = [task for stage in pl_module.stages[:pl_module.task_index] for task in stage.tasks]
        self.fisher = self.earlier_fisher(trainer, pl_module, [pl_module.tasks[k] for k in earlier])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        value = pl_module.step_metrics.get("reward/group_var")
        if value is not None:
            self.reward_var_sum += float(value)
            self.reward_var_steps += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = pl_module.task_index
        kl = self.kl_to_base(pl_module)
        own = [pl_module.tasks[k].name for k in pl_module.stages[stage].tasks]
        record = {"stage": stage + 1, "name": pl_module.stages[stage].name,
                  "update_norm": self.update_norms(trainer, pl_module),
                  "updated": self.updated_share(trainer, pl_module),
                  "reward_var": self.stage_reward_var(trainer, pl_module),
                  "fisher_update": self.fisher_update(trainer, pl_module),
                  "kl_to_base": kl, "kl_new_task": sum(kl[name] for name in own) / len(own),
                  **self.stage_forgetting(stage + 1, pl_module)}
        self.stages.append(record)
        self.start, self.fisher, self.reward_var_sum, self.reward_var_steps = {}, {}, 0.0, 0
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
            base_logp = (token_log_probs(model, prompts, ids, rollouts.mask, PROBE_TEMPERATURE,
                                         suppressed=pl_module.processor.placeholder_ids)[0]
                         if restored is None else restored["base_logp"].to(pl_module.device))
            return Probe(rollouts, base_logp)

    def kl_to_base(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Per task, the mean over probe prompts of the completion's summed per-token k3 KL(base || current)."""
        kl = {}
        with probing(pl_module.backbone):
            for name, probe in self.probes.items():
                rollouts = probe.rollouts
                current = token_log_probs(pl_module.backbone, rollouts.prompts, rollouts.completion_ids, rollouts.mask,
                                          PROBE_TEMPERATURE, suppressed=pl_module.processor.placeholder_ids)[0]
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
        module_group = family_of_model(pl_module.backbone).module_group
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

    @torch.no_grad()
    def updated_share(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The share of trainable parameters whose bfloat16 value changed by more than UNCHANGED_WITHIN over the
        stage: over all (`all`) and per module group."""
        parts: dict[str, list[tuple[nn.Parameter, torch.Tensor]]] = {}  # per group: (parameter, moved here)
        sizes: dict[str, int] = {}
        module_group = family_of_model(pl_module.backbone).module_group
        for name, param in pl_module.backbone.named_parameters():
            if name in self.start:
                group, start = module_group(name), self.start[name]
                end = local_part(param.detach()).to(torch.bfloat16).float()
                moved = (end - start.to(torch.bfloat16).float()).abs() > UNCHANGED_WITHIN
                parts.setdefault(group, []).append((param, moved.sum()))
                sizes[group] = sizes.get(group, 0) + param.numel()  # a DTensor's numel is its global size
        moved = {group: float(sum_over_shards(found, trainer.strategy)) for group, found in parts.items()}
        shares = {group: moved[group] / sizes[group] for group in sorted(moved, key=GROUPS.index)}
        return {"all": sum(moved.values()) / sum(sizes.values()), **shares}

    def earlier_fisher(self, trainer: L.Trainer, pl_module: L.LightningModule,
                       earlier: list[Task]) -> dict[str, torch.Tensor]:
        """The diagonal empirical Fisher of `earlier` tasks at the current parameters: one batch of each task's
        probe examples with their answers, SFT loss. Every rank uses the same batches, so the gradients FSDP
        averages are already the whole Fisher's. Empty without earlier tasks."""
        if not earlier:
            return {}
        collate = Collator(pl_module.processor.pad_id)
        batches = []
        for task in earlier:
            examples = [task.eval[i] for i in range(min(self.probe_size, len(task.eval)))]
            dataset = EncodedDataset(examples, pl_module.processor, task.template, with_response=True)
            batches.append(collate([dataset[i] for i in range(len(examples))]))

        def loss(model: nn.Module, batch) -> torch.Tensor:
            with trainer.precision_plugin.forward_context():
                return answer_nll(model, batch.to(pl_module.device))

        fisher = diagonal_fisher(pl_module.backbone, batches, loss)
        reshard(pl_module.backbone)
        return fisher

    @torch.no_grad()
    def fisher_update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """d theta^T F_prev d theta over the trainable parameters; None without earlier tasks."""
        if not self.fisher:
            return None
        parts = [(param, (local_part(self.fisher[name]).float()
                          * (local_part(param.detach()).float() - self.start[name].float()).square()).sum())
                 for name, param in pl_module.backbone.named_parameters() if name in self.fisher]
        return float(sum_over_shards(parts, trainer.strategy))

    def stage_forgetting(self, row: int, pl_module: L.LightningModule) -> dict:
        """From the accuracy rows before and after the stage: the mean drop on the earlier tasks, the general set's
        change, and per set the examples that turned right to wrong and wrong to right."""
        evaluation = self.evaluation
        if evaluation is None:
            return {}
        if len(evaluation.rows) <= row:
            raise RuntimeError("ForgettingAnalysis found no accuracy row for this stage: it must come after the "
                               "AccuracyMatrix in the trainer's callbacks")
        before, after = evaluation.rows[row - 1], evaluation.rows[row]
        earlier = [k for stage in pl_module.stages[:row - 1] for k in stage.tasks]
        general = evaluation.benchmark_rows.get(GENERAL_NAME, [])
        general_change = (general[row]["accuracy"] - general[row - 1]["accuracy"]
                          if len(general) > row and general[row] and general[row - 1] else None)
        return {"forgetting": sum(before[k] - after[k] for k in earlier) / len(earlier) if earlier else None,
                "general_change": general_change,
                "examples": example_changes(evaluation.correct[row - 1], evaluation.correct[row])}

    def stage_reward_var(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """The stage's mean `reward/group_var` over all ranks' steps; None when no step reported one."""
        totals = torch.tensor([self.reward_var_sum, float(self.reward_var_steps)], dtype=torch.float64,
                              device=pl_module.device)
        total, steps = trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        return total / steps if steps > 0 else None

    # --- output -----------------------------------------------------------------------------------------------

    def write(self) -> None:
        content = {"kl_unit": KL_UNIT, "kl_estimator": "k3", "probe_size": self.probe_size,
                   "max_new_tokens": self.max_new_tokens,
                   "updated": f"bfloat16 value changed by more than {UNCHANGED_WITHIN:g}",
                   "templates": self.templates, "stages": self.stages}
        write_json(self.run_dir / "analysis.json", content)
        plot_analysis(self.stages, self.run_dir / "analysis.png")


def example_changes(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    """Per set evaluated in both rows, the examples right before and wrong after, and the other way round."""
    return {name: {"right_to_wrong": sum(b and not a for b, a in zip(before[name], after[name])),
                   "wrong_to_right": sum(a and not b for b, a in zip(before[name], after[name]))}
            for name in before if name in after and len(before[name]) == len(after[name])}


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
    for group, share in record["updated"].items():
        metrics[f"analysis/updated/{group}"] = share
    for name in ("reward_var", "fisher_update", "kl_new_task", "forgetting", "general_change"):
        if record.get(name) is not None:
            metrics[f"analysis/{name}"] = record[name]
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
