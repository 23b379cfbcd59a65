"""Online filtering of RFT rollout groups (dynamic sampling): a group whose G rewards are all equal has zero
advantage everywhere and teaches nothing, so it is dropped from the batch and replaced by fresh prompts of the
same stage, sampled and scored by the same policy, for at most `max_retries` rounds. Groups still missing after
that are filled with dropped ones, so every rank trains on a batch of the same size.

Registers itself with the RFT module at setup (`RolloutModule.add_rollout_filter`), which calls `select` on every
rollout batch. Each stage draws refill prompts from its own stream of the data module (independent of the
training batches). All ranks run the same number of refill rounds (generation under FSDP is collective). Logs
`filter/dropped_groups` (share of the drawn batch's groups), `filter/refill_rounds` and `filter/unfilled_groups`;
writes per-stage totals to `filtering_online.json` at the end of every stage.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from cpt.atomic import write_json
from cpt.data.batches import Batch
from cpt.methods.rollout_module import RolloutModule
from cpt.rl.rollouts import Rollouts


class OnlineFiltering(Callback):
    def __init__(self, run_dir: str | Path, max_retries: int = 3):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.run_dir, self.max_retries = Path(run_dir), max_retries
        self.refill = None
        self.totals: list[dict] = []

    def state_dict(self) -> dict:
        return {"totals": self.totals}

    def load_state_dict(self, state: dict) -> None:
        self.totals = list(state["totals"])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, RolloutModule):
            raise ValueError(f"OnlineFiltering filters RFT rollout groups; {type(pl_module).__name__} has none")
        pl_module.add_rollout_filter(self)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refill = iter(trainer.datamodule.train_loader(trainer.current_epoch, trainer.global_rank, stream=1))
        self.totals.append({"stage": trainer.current_epoch + 1, "groups": 0, "dropped": 0, "refill_rounds": 0,
                            "unfilled": 0})

    def next_prompts(self, module: RolloutModule) -> Batch:
        try:
            batch = next(self.refill)
        except StopIteration:  # a stage's stream is as long as its training; start it over
            trainer = module.trainer
            self.refill = iter(trainer.datamodule.train_loader(trainer.current_epoch, trainer.global_rank, stream=2))
            batch = next(self.refill)
        return batch.to(module.device)

    def select(self, module: RolloutModule, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        """The batch to train on: groups with varied rewards, refilled up to the drawn number of groups."""
        wanted = len(rollouts) // rollouts.group_size
        kept, dropped = [], []
        rounds = 0
        while True:
            varied = rollouts.varied_groups().tolist()
            if rounds == 0:
                first_dropped = varied.count(False)
            keep = [g for g, v in enumerate(varied) if v]
            if keep:
                kept.append(rollouts.take_groups(keep))
            if len(keep) < len(varied):
                dropped.append(rollouts.take_groups([g for g, v in enumerate(varied) if not v]))
            have = sum(len(part) for part in kept) // rollouts.group_size
            if rounds == self.max_retries or not self.short_anywhere(module, have < wanted):
                break
            rollouts = module.roll_out(self.next_prompts(module))
            rounds += 1
        parts, missing = self.fill(kept, dropped, wanted)
        total = self.totals[-1]
        total["groups"] += wanted
        total["dropped"] += first_dropped
        total["refill_rounds"] += rounds
        total["unfilled"] += missing
        stats = {"filter/dropped_groups": first_dropped / wanted, "filter/refill_rounds": float(rounds),
                 "filter/unfilled_groups": float(missing)}
        return Rollouts.concat(parts, module.processor.pad_id), stats

    @staticmethod
    def short_anywhere(module: RolloutModule, short: bool) -> bool:
        """Whether any process still lacks groups: all refill together, as generation under FSDP is collective."""
        return module.trainer.strategy.reduce_boolean_decision(short, all=False)

    @staticmethod
    def fill(kept: list[Rollouts], dropped: list[Rollouts], wanted: int) -> tuple[list[Rollouts], int]:
        """`wanted` groups, kept ones first, then dropped ones if too few were kept; and how many are dropped ones."""
        parts, have = [], 0
        for pool in (kept, dropped):
            for rollouts in pool:
                take = min(len(rollouts) // rollouts.group_size, wanted - have)
                if take > 0:
                    parts.append(rollouts.take_groups(list(range(take))))
                    have += take
        kept_groups = sum(len(rollouts) // rollouts.group_size for rollouts in kept)
        return parts, max(0, wanted - kept_groups)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        write_json(self.run_dir / "filtering_online.json", {"max_retries": self.max_retries, "stages": self.totals})
