"""Dark Experience Replay (Buzzega et al., 2020): replay, plus a pull of the model's outputs on the replayed
examples towards the outputs it gave them when it had just learnt them.

It replays as `callbacks/replay.py` does (a share of every batch from a buffer of each finished task's examples)
and adds, on the replayed rows of every training step,

    weight * mean over their answer tokens and recorded entries of (z_model - z_recorded)^2

with z the logits predicting each answer token. This is DER's logit-matching term (MLLM-CTBench's variant for
language models: the MSE on the label tokens of replayed examples).

What is recorded, and when: at the end of each stage but the last, the model runs once over the buffer of every
task that stage trained, the model that has just learnt them, and keeps, per answer token, the `top_k` largest
logits and their vocabulary ids. The original stores whole logit vectors; at a 152k vocabulary that is 300 KB per
token in float16, about 1.5 GB for 500 examples of ten answer tokens each, per task. The largest logits are the
ones that carry the model's answer (the softmax puts almost all its mass on them), and 32 of them take 192 bytes
per token (float16 values, int32 ids): 1 MB for the same buffer. The penalty then compares the model's logits at
the recorded ids only.

The recorded logits are in `state_dict`, so a resumed run replays against the same targets. DER is defined on
examples with answers: it runs under SFT (`cpt.config` refuses it with RFT and on-policy SFT).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from cpt.callbacks.arguments import finite_number
from cpt.callbacks.replay import ExperienceReplay
from cpt.data.batches import Collator
from cpt.methods.loss_terms import TrainingStep, answer_targets
from cpt.rl.log_probs import target_logits


class DarkExperienceReplay(ExperienceReplay):
    name, needs_logits = "der", True  # a loss term (cpt.methods.loss_terms), logged as loss/der

    def __init__(self, weight: float = 0.5, top_k: int = 32, fraction: float = 0.2, buffer_per_task: int = 500,
                 seed: int = 0):
        super().__init__(fraction, buffer_per_task, seed)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"der top_k must be a positive integer, got {top_k!r}")
        self.weight, self.top_k = finite_number("der weight", weight, positive=True), top_k
        # task -> {"ids": (examples, tokens, k) int32, "values": (examples, tokens, k) float16, "lengths":
        # (examples,)}: per buffer example (by its place in the buffer), its answer tokens' largest logits.
        self.recorded: dict[int, dict[str, torch.Tensor]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        pl_module.add_loss_term(self)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = trainer.current_epoch
        if stage + 1 >= trainer.max_epochs:
            return  # nothing is replayed after the last stage
        data = trainer.datamodule
        finished = set(data.stages[stage].tasks)
        for task, examples in self.examples(data, stage + 1):
            if task in finished and task not in self.recorded:
                self.recorded[task] = self.record(trainer, pl_module, data.encoded(task, examples))

    @torch.no_grad()
    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, dataset) -> dict[str, torch.Tensor]:
        """The `top_k` largest logits (and their ids) predicting every answer token of every example in `dataset`,
        in its order; each example's tokens from the first of its answer, padded to the longest answer."""
        model = pl_module.backbone
        was_training = model.training
        model.eval()  # the outputs the model gives, without dropout
        ids, values, lengths = [], [], []
        loader = DataLoader(dataset, batch_size=trainer.datamodule.cfg.data.batch_size,
                            collate_fn=Collator(trainer.datamodule.processor.pad_id))
        try:
            for batch in loader:
                batch = batch.to(pl_module.device)
                n, _, counted = answer_targets(batch)
                with trainer.precision_plugin.forward_context():
                    logits = target_logits(model, batch, n)
                top = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1)
                for row in range(len(batch)):
                    length = int(counted[row].sum())  # the answer is the row's last `length` tokens
                    ids.append(top.indices[row, n - length:].to(torch.int32).cpu())
                    values.append(top.values[row, n - length:].to(torch.float16).cpu())
                    lengths.append(length)
        finally:
            model.train(was_training)
        return {"ids": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True),
                "values": torch.nn.utils.rnn.pad_sequence(values, batch_first=True),
                "lengths": torch.tensor(lengths)}

    def loss(self, step: TrainingStep) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The penalty on the step's replayed rows (rows of a task with recorded logits); None if it has none."""
        rows = [r for r, task in enumerate(step.sequences.task.tolist()) if task in self.recorded]
        if not rows:
            return None, {}
        n = step.logits.shape[1]
        squared, count = step.logits.new_zeros(()), 0
        for r in rows:
            record = self.recorded[int(step.sequences.task[r])]
            example = int(step.sequences.index[r])
            length = int(record["lengths"][example])
            ids = record["ids"][example, :length].to(step.logits.device, torch.long)
            target = record["values"][example, :length].to(step.logits.device, step.logits.dtype)
            model = step.logits[r, n - length:].gather(-1, ids)  # (length, k): the model's logits at the ids
            squared = squared + (model - target).square().sum()
            count += target.numel()
        return self.weight * step.share * squared / count, {}

    def state_dict(self) -> dict:
        return {"recorded": self.recorded}

    def load_state_dict(self, state_dict: dict) -> None:
        self.recorded = {int(task): dict(record) for task, record in state_dict["recorded"].items()}
