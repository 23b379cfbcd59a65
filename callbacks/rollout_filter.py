"""Rollout-based instance filtering (RIF-RFT): before a task is trained, the current policy samples k rollouts for
each candidate training instance, and instances that cannot teach anything are dropped.

Rules (the study's exact rule is not published; these are the readings in use):
  all_wrong  drop an instance none of whose rollouts is right ("incompetent" instances);
  all_equal  drop an instance whose rollouts all get the same reward (all wrong or all right: zero advantage);
  range      drop an instance whose mean reward is outside [low, high] (EasyR1's online_filtering bounds).
A rollout is right when its `accuracy` reward component (the total reward if there is none) reaches
`correct_threshold`.

Hooks: on_fit_start filters the first stage's tasks, on_train_epoch_end the next stage's (with the policy as the
finished stage left it), before the data module builds that stage's loader. The kept instances go to the data
module (`TaskSequenceData.keep_instances`); the rollouts come from `RolloutModule.roll_out`. Writes `filtering.json`
(per task: candidates, kept, dropped by reason) and `filtering/<stage>-<task>.csv` (every candidate's rewards and
decision). If a rule keeps nothing, the task trains on all candidates and the record says so (`fallback`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

from cpt.atomic import replacing, write_json
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.datamodule import TaskSequenceData
from cpt.eval.evaluate import shard_indices
from cpt.methods.rollout_module import RolloutModule

log = logging.getLogger(__name__)
RULES = ("all_wrong", "all_equal", "range")


def drop_reason(rewards: torch.Tensor, right: torch.Tensor, rule: str, low: float = 0.0,
                high: float = 1.0) -> str | None:
    """Why an instance with these k rollout rewards (and which of them are right) is dropped; None keeps it."""
    if rule == "all_wrong":
        return "all_wrong" if not right.any() else None
    if rule == "all_equal":
        if rewards.max() > rewards.min():
            return None
        return "all_right" if right.all() else "all_wrong" if not right.any() else "all_equal"
    mean = float(rewards.mean())
    return "below_low" if mean < low else "above_high" if mean > high else None


class RolloutFiltering(Callback):
    def __init__(self, run_dir: str | Path, rule: str = "all_equal", k: int = 8, low: float = 0.01, high: float = 0.99,
                 pool_size: int | None = 512, correct_threshold: float = 0.5, prompts_per_batch: int = 8,
                 seed: int = 0, progress: bool = True, resuming: bool = False):
        if rule not in RULES:
            raise ValueError(f"filter rule {rule!r} is not one of {', '.join(RULES)}")
        self.run_dir, self.rule, self.k, self.low, self.high = Path(run_dir), rule, k, low, high
        self.pool_size, self.correct_threshold, self.prompts_per_batch = pool_size, correct_threshold, prompts_per_batch
        self.seed, self.progress = seed, progress
        self.resuming = resuming  # the first stage of a resumed run was filtered before it stopped
        self.records: list[dict] = []

    @property
    def kept_fraction(self) -> float | None:
        """The share of candidate instances training draws from, over the tasks filtered so far."""
        pool = sum(r["pool"] for r in self.records)
        return sum(r["trained_on"] for r in self.records) / pool if pool else None

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = list(state["records"])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, RolloutModule):
            raise ValueError(f"RolloutFiltering samples rollouts with an RFT module; {type(pl_module).__name__} "
                             "has none")
        if not self.resuming:  # a resumed run's kept instances come with its checkpoint (the data module's state)
            self.filter_stage(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 < len(trainer.datamodule.stages):
            self.filter_stage(trainer, pl_module, trainer.current_epoch + 1)

    def filter_stage(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: int) -> None:
        data = trainer.datamodule
        for task_index in data.stages[stage].tasks:
            pool = self.candidates(len(data.tasks[task_index].train), task_index)
            rewards, right = self.roll_out(trainer, pl_module, data, task_index, pool, stage)
            reasons = [drop_reason(r, ok, self.rule, self.low, self.high) for r, ok in zip(rewards, right)]
            kept = [i for i, reason in zip(pool, reasons) if reason is None]
            record = {"stage": stage + 1, "task": data.tasks[task_index].name, "pool": len(pool), "kept": len(kept),
                      "dropped": {}, "fallback": not kept, "trained_on": len(kept or pool)}
            for reason in reasons:
                if reason is not None:
                    record["dropped"][reason] = record["dropped"].get(reason, 0) + 1
            if not kept:
                log.warning("rollout filter (%s) kept none of %d instances of task %s; training on all of them",
                            self.rule, len(pool), record["task"])
            data.keep_instances(task_index, kept or pool)
            self.records.append(record)
            if trainer.is_global_zero:
                self.write(record, pool, rewards, right, reasons)
        trainer.strategy.barrier()

    def candidates(self, size: int, task_index: int) -> list[int]:
        """The instances examined: a seeded subset of `pool_size`, or all."""
        if self.pool_size is None or self.pool_size >= size:
            return list(range(size))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed * 1000 + task_index))
        return sorted(order[: self.pool_size].tolist())

    @torch.no_grad()
    def roll_out(self, trainer: L.Trainer, pl_module: RolloutModule, data: TaskSequenceData, task_index: int,
                 pool: list[int], stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, right), each (len(pool), k), over all ranks: each rank rolls out its share of the pool."""
        task = data.tasks[task_index]
        dataset = EncodedDataset(task.train, pl_module.processor, task.template, with_response=False,
                                 task=task_index)
        collate = Collator(pl_module.processor.pad_id)
        rank, world = trainer.global_rank, trainer.world_size
        mine, weights = shard_indices(len(pool), rank, world)
        rewards = torch.zeros(len(mine), self.k, device=pl_module.device)
        right = torch.zeros(len(mine), self.k, dtype=torch.bool, device=pl_module.device)
        starts = range(0, len(mine), self.prompts_per_batch)
        bar = tqdm(starts, desc=f"Filtering {task.name} ({self.k} rollouts x {len(pool)} instances)", leave=False,
                   disable=not (self.progress and trainer.is_global_zero))
        for start in bar:
            rows = slice(start, start + self.prompts_per_batch)
            batch = collate([dataset[pool[i]] for i in mine[rows]]).to(pl_module.device)
            rollouts = pl_module.roll_out(batch, self.k)
            rewards[rows] = rollouts.group_rewards().to(rewards.device)
            right[rows] = rollouts.right(self.correct_threshold).view(-1, self.k).to(right.device)
        if world > 1:
            order = torch.tensor(mine, device=rewards.device)
            valid = torch.tensor(weights, device=rewards.device)
            gathered = [trainer.strategy.all_gather(t) for t in (order, valid, rewards, right.to(torch.uint8))]
            order, valid, rewards, right = (t.flatten(0, 1) for t in gathered)
            valid = valid > 0
            position = torch.empty(len(pool), dtype=torch.long, device=rewards.device)
            position[order[valid]] = torch.nonzero(valid).flatten()
            return rewards[position].cpu(), right[position].bool().cpu()
        return rewards[: len(pool)].cpu(), right[: len(pool)].cpu()

    def write(self, record: dict, pool: list[int], rewards: torch.Tensor, right: torch.Tensor, reasons: list) -> None:
        path = self.run_dir / "filtering" / f"{record['stage']}-{record['task']}.csv"
        with replacing(path) as staging, open(staging, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["instance", "mean_reward", "right", "kept", "reason", "rewards"])
            for i, r, ok, reason in zip(pool, rewards, right, reasons):
                writer.writerow([i, f"{float(r.mean()):.4f}", int(ok.sum()), int(reason is None), reason or "",
                                 " ".join(f"{float(v):.3g}" for v in r)])
        summary = {"rule": self.rule, "k": self.k, "low": self.low, "high": self.high,
                   "correct_threshold": self.correct_threshold, "kept_fraction": self.kept_fraction,
                   "stages": self.records}
        write_json(self.run_dir / "filtering.json", summary)
