"""Online filtering of RFT rollout groups (dynamic sampling): a group whose G rewards are all equal has zero
advantage everywhere and teaches nothing, so it is dropped from the batch and replaced by fresh prompts of the
same stage, sampled and scored by the same policy, for at most `max_retries` rounds. Groups still missing after
that are filled with dropped ones, so every rank trains on a batch of the same size.

Installs itself as the RFT module's `group_filter` at setup. Each stage draws refill prompts from its own
stream of the data module (independent of the training batches). All ranks run the same number of refill rounds
(generation under FSDP is collective). Logs `filter/dropped_groups` (share of the drawn batch's groups),
`filter/refill_rounds` and `filter/unfilled_groups`; writes per-stage totals to `filtering_online.json` at the end
of every stage.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from cpt.data import concat_rows, select_rows, to_device
from cpt.results import write_json
from cpt.rewards import ScoredRollouts


def varied_groups(total: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups' rewards are not all equal."""
    groups = total.view(-1, group_size)
    return groups.max(1).values > groups.min(1).values


def take_groups(prompts: dict, ids: torch.Tensor, scored: ScoredRollouts, groups: list[int],
                group_size: int) -> tuple[dict, torch.Tensor, ScoredRollouts]:
    rows = [g * group_size + i for g in groups for i in range(group_size)]
    index = torch.tensor(rows, dtype=torch.long)
    picked = ScoredRollouts(scored.total[index], {k: v[index] for k, v in scored.components.items()}, 0)
    return select_rows(prompts, rows), ids[index.to(ids.device)], picked


def concat_rollouts(parts: list[tuple[dict, torch.Tensor, ScoredRollouts]], pad_id: int):
    """Rollouts of several rounds as one batch: prompts re-padded on the left, completions on the right."""
    width = max(ids.shape[1] for _, ids, _ in parts)
    ids = torch.cat([torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad_id) for _, ids, _ in parts])
    scored = ScoredRollouts(torch.cat([s.total for _, _, s in parts]),
                            {k: torch.cat([s.components[k] for _, _, s in parts]) for k in parts[0][2].components},
                            sum(s.errors for _, _, s in parts))
    return concat_rows([p for p, _, _ in parts], pad_id), ids, scored


def any_rank(flag: bool, device: torch.device) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


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
        if not hasattr(pl_module, "group_filter"):
            raise ValueError(f"OnlineFiltering filters RFT rollout groups; {type(pl_module).__name__} has none")
        pl_module.group_filter = self

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refill = iter(trainer.datamodule.train_loader(trainer.current_epoch, trainer.global_rank, stream=1))
        self.totals.append({"stage": trainer.current_epoch + 1, "groups": 0, "dropped": 0, "refill_rounds": 0,
                            "unfilled": 0})

    def next_prompts(self, pl_module: L.LightningModule) -> dict:
        try:
            batch = next(self.refill)
        except StopIteration:  # a stage's stream is as long as its training; start it over
            trainer = pl_module.trainer
            self.refill = iter(trainer.datamodule.train_loader(trainer.current_epoch, trainer.global_rank, stream=2))
            batch = next(self.refill)
        return to_device(batch, pl_module.device)

    def select(self, pl_module: L.LightningModule, prompts: dict, ids: torch.Tensor, scored: ScoredRollouts):
        """The batch to train on: groups with varied rewards, refilled up to the drawn number of groups."""
        size = pl_module.cfg.rft.group_size
        wanted = len(ids) // size
        kept, dropped = [], []
        rounds = 0
        while True:
            varied = varied_groups(scored.total, size).tolist()
            if rounds == 0:
                first_dropped = varied.count(False)
            keep = [g for g, v in enumerate(varied) if v]
            if keep:
                kept.append(take_groups(prompts, ids, scored, keep, size))
            if len(keep) < len(varied):
                dropped.append(take_groups(prompts, ids, scored, [g for g, v in enumerate(varied) if not v], size))
            have = sum(len(p[1]) for p in kept) // size
            if rounds == self.max_retries or not any_rank(have < wanted, pl_module.device):
                break
            prompts, ids, scored = pl_module.rollouts(self.next_prompts(pl_module))
            rounds += 1
        parts, missing = self.fill(kept, dropped, wanted, size)
        total = self.totals[-1]
        total["groups"] += wanted
        total["dropped"] += first_dropped
        total["refill_rounds"] += rounds
        total["unfilled"] += missing
        stats = {"filter/dropped_groups": first_dropped / wanted, "filter/refill_rounds": float(rounds),
                 "filter/unfilled_groups": float(missing)}
        return (*concat_rollouts(parts, pl_module.processor.pad_id), stats)

    @staticmethod
    def fill(kept: list, dropped: list, wanted: int, size: int) -> tuple[list, int]:
        """`wanted` groups, kept ones first, then dropped ones if too few were kept; and how many are dropped ones."""
        parts, have = [], 0
        for pool in (kept, dropped):
            for prompts, ids, scored in pool:
                take = min(len(ids) // size, wanted - have)
                if take > 0:
                    parts.append(take_groups(prompts, ids, scored, list(range(take)), size))
                    have += take
        kept_groups = sum(len(ids) for _, ids, _ in kept) // size
        return parts, max(0, wanted - kept_groups)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        write_json(self.run_dir / "filtering_online.json", {"max_retries": self.max_retries, "stages": self.totals})
