"""Dark Experience Replay, DER and DER++ (Buzzega et al., 2020): a reservoir buffer of the training stream's
examples, each stored with the logits the model gave it as it entered the buffer, and a pull of the model's
logits on a replayed sample towards those stored ones.

As the reference code (mammoth's `models/der.py`, `models/derpp.py`) does, every training step

1. draws `batch_size` examples from the buffer (without replacement; none while it is empty) and adds

       weight * mean over their answer tokens and the whole output of (z_model - z_stored)^2

   with z the logits predicting each answer token: the MSE of `F.mse_loss(model(x_buf), z_buf)`, averaged over
   every logit of every answer token;
2. for DER++ (`label_weight` > 0), draws a second, independent sample and adds `label_weight` times the SFT
   cross-entropy on its stored answers;
3. offers every example of the step's own batch to the buffer by reservoir sampling (Vitter's algorithm R, over
   all examples seen so far, every task's): with the step's own logits, detached, from the forward pass the step's
   loss came from. So an example keeps the outputs of the model that was learning it, not those of a later model.

The buffer spans the whole run: from the first task's second step on it replays what the run has seen, the
current task's examples included, as the original does. Its examples are stored as (task, index) and encoded
again when drawn; the logits take 4 bytes per vocabulary entry and answer token (the tiny model's 525 entries:
2 KB a token). At a 152k vocabulary that is 600 KB a token, 3 GB for 500 examples of ten answer tokens:
`top_k` then keeps each token's k largest logits and their ids, and the penalty compares only those, divided by
the whole vocabulary as before. Each kept logit is pulled as hard as under the whole-output MSE at the same
weight; the others are not pulled. (Dividing by k instead would pull each kept logit vocabulary/k times harder.)

The buffer, its count of examples seen and its random generator are in `state_dict`, so a resumed run replays and
keeps exactly what it would have. DER is defined on examples with answers: it runs under SFT (`cpt.config`
refuses it with RFT and on-policy SFT).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.arguments import finite_number, positive_integer
from cpt.data.batches import Batch, Collator
from cpt.methods.loss_terms import TrainingStep, answer_targets
from cpt.model.answer_loss import mean_answer_loss
from cpt.rl.log_probs import target_logits


class DarkExperienceReplay(Callback):
    name, needs_logits = "der", True  # a loss term (cpt.methods.loss_terms), logged as loss/der

    def __init__(self, weight: float = 0.5, label_weight: float = 0.0, buffer_size: int = 500, batch_size: int = 16,
                 top_k: int | None = None, seed: int = 0):
        self.weight = finite_number("der weight", weight, positive=True)
        self.label_weight = finite_number("der label_weight", label_weight)
        self.buffer_size = positive_integer("der buffer_size", buffer_size)
        self.batch_size = positive_integer("der batch_size", batch_size)
        self.top_k = None if top_k is None else positive_integer("der top_k", top_k)
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0  # examples offered to the buffer so far
        # One entry per buffer slot: {"task", "index", "logits": (answer tokens, vocab or k) float32, and with
        # top_k "ids": (answer tokens, k) int64}.
        self.buffer: list[dict] = []
        self.data = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.data = trainer.datamodule
        pl_module.add_loss_term(self)

    # --- the reservoir ----------------------------------------------------------------------------------------

    def slot(self) -> int | None:
        """Where the next example of the stream goes: the next free slot while there is one, then slot r for a
        uniform r in [0, seen] when r falls inside the buffer (each example seen stays with equal chance)."""
        if self.seen < self.buffer_size:
            return self.seen
        r = int(torch.randint(self.seen + 1, (), generator=self.generator))
        return r if r < self.buffer_size else None

    def offer(self, step: TrainingStep) -> None:
        """Every row of the step's batch, with the logits it was trained with, offered to the buffer."""
        n = step.logits.shape[1]
        for row in range(len(step.target_ids)):
            where = self.slot()
            self.seen += 1
            if where is None:
                continue
            length = int(step.target_mask[row].sum())  # the answer is the row's last `length` targets
            logits = step.logits[row, n - length:].detach().float().cpu()
            entry = {"task": int(step.sequences.task[row]), "index": int(step.sequences.index[row])}
            if self.top_k is None:
                entry["logits"] = logits
            else:
                top = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1)
                entry.update(logits=top.values, ids=top.indices)
            if where == len(self.buffer):
                self.buffer.append(entry)
            else:
                self.buffer[where] = entry

    def draw(self) -> list[dict]:
        """`batch_size` distinct buffer entries (all of them while it holds fewer)."""
        order = torch.randperm(len(self.buffer), generator=self.generator)[: self.batch_size]
        return [self.buffer[i] for i in order.tolist()]

    def batch(self, entries: list[dict], device: torch.device) -> Batch:
        items = [self.data.encoded(e["task"], self.data.instances(e["task"]))[e["index"]] for e in entries]
        return Collator(self.data.processor.pad_id)(items).to(device)

    # --- the loss term ----------------------------------------------------------------------------------------

    def logit_penalty(self, step: TrainingStep, entries: list[dict]) -> torch.Tensor:
        """The MSE between the model's logits on the entries' answers and the stored ones, over every answer token
        and every vocabulary entry (kept entries only with top_k, still divided by the whole vocabulary)."""
        batch = self.batch(entries, step.logits.device)
        n, _, counted = answer_targets(batch)
        logits = target_logits(step.module.backbone, batch, n)
        squared, tokens = logits.new_zeros(()), 0
        for row, entry in enumerate(entries):
            length = int(counted[row].sum())
            model = logits[row, n - length:]
            stored = entry["logits"].to(model.device)
            if "ids" in entry:
                model = model.gather(-1, entry["ids"].to(model.device))
            squared = squared + (model - stored).square().sum()
            tokens += length
        return squared / (tokens * logits.shape[-1])

    def loss(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The replay terms on samples drawn before this step's batch joins the buffer (None while it is empty);
        then the batch is offered to it."""
        total, metrics = None, {}
        if self.buffer:
            penalty = self.logit_penalty(step, self.draw())
            total, metrics["der/logit_mse"] = self.weight * penalty, penalty.detach()
            if self.label_weight > 0:
                replayed = self.batch(self.draw(), step.logits.device)
                cross_entropy = mean_answer_loss(step.module.backbone(**replayed.model_inputs()).logits,
                                                 replayed.labels)
                total = total + self.label_weight * cross_entropy
                metrics["der/label_loss"] = cross_entropy.detach()
            total = total * step.share
        self.offer(step)
        return total, metrics

    def state_dict(self) -> dict:
        return {"buffer": self.buffer, "seen": self.seen, "generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.buffer, self.seen = list(state_dict["buffer"]), int(state_dict["seen"])
        self.generator.set_state(state_dict["generator"])
