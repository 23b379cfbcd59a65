"""A user's own plugins, named by import path in a config: callbacks that use the module's and the data module's
extension points (a rollout filter, an extra data source, a loss term), and a reward function."""

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from cpt.data.datamodule import TaskSequenceData
from cpt.methods.rollout_module import RolloutModule
from cpt.rl.rollouts import Rollouts


class GroupCounter(Callback):
    """Trains on every rollout batch unchanged, and records what it saw: groups and their size, per step."""

    def __init__(self):
        self.seen: list[dict] = []

    def setup(self, trainer, pl_module, stage):
        if not isinstance(pl_module, RolloutModule):
            raise ValueError("GroupCounter counts RFT rollout groups")
        pl_module.add_rollout_filter(self)

    def select(self, module: RolloutModule, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        groups = len(rollouts) // rollouts.group_size
        varied = int(rollouts.varied_groups().sum())
        self.seen.append({"groups": groups, "group_size": rollouts.group_size, "varied": varied})
        return rollouts, {"custom/groups": float(groups)}

    def on_train_end(self, trainer, pl_module):
        (Path(trainer.default_root_dir) / "group_counter.json").write_text(json.dumps(self.seen))


class FirstTaskRehearsal(Callback):
    """Every batch from the second stage on has `fraction` of its rows from the first task's training data."""

    def __init__(self, fraction: float = 0.25):
        self.fraction = fraction

    def setup(self, trainer, pl_module, stage):
        trainer.datamodule.add_source(self)

    def examples(self, data: TaskSequenceData, stage: int):
        return [(0, data.tasks[0].train)] if stage > 0 else []


def odd_length_reward(completion: str, example, **_) -> dict[str, float]:
    """Right when the completion has an odd number of characters: sampled completions of one prompt then differ in
    reward, so short RFT and on-policy SFT runs of a barely trained model still update it."""
    return {"accuracy": float(len(completion) % 2)}


class TargetLogitPull(Callback):
    """A loss term of one's own: `weight` times the mean square of the logits predicting every target that counts,
    for any method. It records each step's targets, so a test can check what it was handed."""

    name, needs_logits = "target_logit_pull", True

    def __init__(self, weight: float = 1e-3):
        self.weight, self.targets = weight, []

    def setup(self, trainer, pl_module, stage):
        pl_module.add_loss_term(self)

    def loss(self, step):
        counted = step.target_mask.float()
        per_target = step.logits.square().mean(-1)  # (rows, n)
        self.targets.append(int(counted.sum()))
        mean = (per_target * counted).sum() / counted.sum().clamp(min=1)
        return self.weight * mean * step.share, {"pull/targets": float(counted.sum())}

    def on_train_end(self, trainer, pl_module):
        (Path(trainer.default_root_dir) / "target_logit_pull.json").write_text(json.dumps(self.targets))
