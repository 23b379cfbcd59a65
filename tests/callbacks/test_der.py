"""Dark Experience Replay as Buzzega et al. define it: the reservoir buffer filled by hand, its penalty (the MSE over
the whole output, and top-k divided by the whole vocabulary) worked by hand, DER++'s label term logged, the bad settings
refused, and a run in which the stored logits are the ones each example was trained with, not the model's at its
task's end, and the pull starts within the first task."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cpt.callbacks.der import DarkExperienceReplay
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.errors import ConfigError
from cpt.methods.loss_terms import TrainingStep, answer_targets
from tests.helpers import REPO, metric_rows


def stream_step(logits: torch.Tensor, lengths: list[int], task: int = 0, first: int = 0) -> TrainingStep:
    """A step of len(lengths) rows whose answers are their last `lengths` targets, with these logits."""
    n = logits.shape[1]
    mask = torch.tensor([[column >= n - length for column in range(n)] for length in lengths])
    sequences = SimpleNamespace(task=torch.full((len(lengths),), task), index=torch.arange(first, first + len(lengths)))
    return TrainingStep(None, sequences, torch.zeros(len(lengths), n, dtype=torch.long), mask, logits)


def test_the_reservoir_keeps_each_example_with_the_logits_it_was_trained_with():
    der = DarkExperienceReplay(buffer_size=3, seed=0)
    logits = torch.arange(2 * 2 * 3, dtype=torch.float).view(2, 2, 3)
    der.offer(stream_step(logits, [2, 1]))  # row 1's answer is its last target only
    assert der.seen == 2 and [(e["task"], e["index"]) for e in der.buffer] == [(0, 0), (0, 1)]
    assert torch.equal(der.buffer[0]["logits"], logits[0]) and torch.equal(der.buffer[1]["logits"], logits[1, 1:])
    # A third example fills the last slot; from the fourth on each lands in slot r (r uniform in [0, seen]) or nowhere.
    der.offer(stream_step(torch.ones(1, 2, 3), [1], task=1))
    assert der.seen == 3 and (der.buffer[2]["task"], der.buffer[2]["index"]) == (1, 0)
    for k in range(200):
        der.offer(stream_step(torch.full((1, 2, 3), float(k)), [1], task=2, first=k))
    assert der.seen == 203 and len(der.buffer) == 3
    # Each of the 203 examples stays with chance 3/203: most of the first three are gone, and what stays is whole.
    assert sum(e["task"] == 2 for e in der.buffer) >= 2
    for entry in der.buffer:
        if entry["task"] == 2:
            assert torch.equal(entry["logits"], torch.full((1, 3), float(entry["index"])))
    # The draw is without replacement: a batch larger than the buffer takes each entry once.
    der.batch_size = 5
    assert sorted(id(e) for e in der.draw()) == sorted(id(e) for e in der.buffer)


class TableModel(torch.nn.Module):
    """Logits at a position = its token's row of a table (3 entries): the penalty's gradient by hand."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(6, 3)
        with torch.no_grad():
            self.table.weight.copy_(torch.arange(18.0).view(6, 3))

    def forward(self, input_ids, attention_mask, logits_to_keep=0):
        return SimpleNamespace(logits=self.table(input_ids)[:, -logits_to_keep:])


def replay_batch() -> Batch:
    """Two replayed rows: row 0 answers with tokens 4, 5 (predicted from tokens 3, 4), row 1 with token 2 (from 1)."""
    X = IGNORE_INDEX
    ids = torch.tensor([[2, 3, 4, 5], [0, 0, 1, 2]])
    labels = torch.tensor([[X, X, 4, 5], [X, X, X, 2]])
    return Batch(ids, torch.ones_like(ids), labels, torch.arange(2), torch.zeros(2), torch.zeros(2), [None] * 2)


def test_the_penalty_by_hand():
    """Stored logits: row 0's two answer tokens [3, 4, 5] and [0, 0, 0], row 1's one [3, 4, 6]. The model's: rows 3
    and 4 of the table ([9, 10, 11], [12, 13, 14]) and row 1 ([3, 4, 5]). Squared differences: 36 * 3, then
    144 + 169 + 196, then 0 + 0 + 1: 618 over 3 tokens x 3 entries."""
    model = TableModel()
    der = DarkExperienceReplay(weight=0.5, batch_size=2, seed=0)
    der.buffer = [{"task": 0, "index": 0, "logits": torch.tensor([[3.0, 4.0, 5.0], [0.0, 0.0, 0.0]])},
                  {"task": 0, "index": 1, "logits": torch.tensor([[3.0, 4.0, 6.0]])}]
    der.batch = lambda entries, device: replay_batch().select([e["index"] for e in entries])
    step = SimpleNamespace(logits=torch.zeros(1), module=SimpleNamespace(backbone=model))
    penalty = der.logit_penalty(step, der.buffer)
    assert float(penalty.detach()) == pytest.approx(618 / 9)
    penalty.backward()
    # d/dz (z - s)^2 / 9 = 2 (z - s) / 9 on the table rows read.
    expected = torch.zeros(6, 3)
    expected[3] = 2 * torch.tensor([6.0, 6.0, 6.0]) / 9
    expected[4] = 2 * torch.tensor([12.0, 13.0, 14.0]) / 9
    expected[1] = 2 * torch.tensor([0.0, 0.0, -1.0]) / 9
    torch.testing.assert_close(model.table.weight.grad, expected)

    # top_k = 1 keeps each token's largest logit (the last entry): 36 + 196 + 1 = 233, still over 9 entries.
    kept = [{**e, "logits": e["logits"][:, -1:], "ids": torch.full((len(e["logits"]), 1), 2)} for e in der.buffer]
    assert float(der.logit_penalty(step, kept).detach()) == pytest.approx(233 / 9)


def test_logits_are_recorded_with_the_answer_targets_of_sft():
    """`offer` reads the answer as the row's last counted targets, as SFT builds them (answer_targets)."""
    batch = replay_batch()
    n, targets, mask = answer_targets(batch)
    logits = torch.randn(2, n, 3)
    der = DarkExperienceReplay(buffer_size=4)
    der.offer(TrainingStep(None, batch, targets, mask, logits))
    assert torch.equal(der.buffer[0]["logits"], logits[0]) and torch.equal(der.buffer[1]["logits"], logits[1, 1:])


def test_bad_settings():
    with pytest.raises(ValueError, match="der weight must be a finite number > 0"):
        DarkExperienceReplay(weight=0)
    with pytest.raises(ValueError, match="der top_k must be a positive integer"):
        DarkExperienceReplay(top_k=0)
    with pytest.raises(ValueError, match="der buffer_size must be a positive integer"):
        DarkExperienceReplay(buffer_size=0)
    with pytest.raises(ConfigError, match="use it with method=sft"):
        load_config(None, ["method=rft", "der.weight=0.5"])
    with pytest.raises(ConfigError, match="set der.weight too"):
        load_config(None, ["der.label_weight=0.5"])


@pytest.mark.slow
def test_stored_logits_are_those_each_example_was_trained_with(tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(REPO / "configs" / "experiments" / "sft_der.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=3",
                       "data.batch_size=4", "der.buffer_size=100", "der.label_weight=0.5", "eval.general=false",
                       "data.eval_size=4", "save_checkpoints=false"])
    trained_with: dict[tuple[int, int], list[torch.Tensor]] = {}
    found = []

    class Spy(Callback):  # a loss term that sees every step's logits, as DER does; and the run's own DER callback
        name, needs_logits = "spy", True

        def setup(self, trainer, pl_module, stage):
            pl_module.loss_terms.insert(0, self)

        def loss(self, step):
            for row in range(len(step.target_ids)):
                length = int(step.target_mask[row].sum())
                key = (int(step.sequences.task[row]), int(step.sequences.index[row]))
                trained_with.setdefault(key, []).append(step.logits[row, -length:].detach().clone())
            return None, {}

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:  # the model as the first task ended, on the buffer's first-task examples
                der = next(c for c in trainer.callbacks if isinstance(c, DarkExperienceReplay))
                first = [e for e in der.buffer if e["task"] == 0]
                batch = der.batch(first, pl_module.device)
                n, _, counted = answer_targets(batch)
                with torch.no_grad():
                    logits = pl_module.backbone(**batch.model_inputs()).logits[:, -n - 1:-1].float()
                found.append((first, [logits[r, n - int(counted[r].sum()):] for r in range(len(first))]))

    run(cfg, extra_callbacks=[Spy()])
    [(first, at_task_end)] = found
    assert len(first) == 12  # 3 steps x 4 rows of the first task, all kept (buffer of 100)
    for entry, end in zip(first, at_task_end):
        assert any(torch.equal(entry["logits"], seen) for seen in trained_with[(entry["task"], entry["index"])])
        assert not torch.allclose(entry["logits"], end, atol=1e-4)  # the model moved on since
    rows = metric_rows(tmp_path, "loss/der")
    # The pull starts at the first task's second step (the buffer is not empty any more), as in the original.
    assert [r["train/task"] for r in rows][:2] == ["1.0", "1.0"] and len(rows) == 5
    assert all(float(r["der/label_loss"]) > 0 for r in rows)
