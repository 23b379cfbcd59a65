"""The loss-term extension point: the targets and shares a term is handed, worked by hand, the terms summed and
named, and a user's own term, named by import path in a config, in the training loss of every method."""

import json
from types import SimpleNamespace

import pytest
import torch

from cpt.commands.fit import run
from cpt.config import load_config
from cpt.data.batches import IGNORE_INDEX, Batch
from cpt.methods.base import CPTModule
from cpt.methods.loss_terms import TrainingStep, answer_targets, micro_batch_shares
from tests.helpers import metric_rows

X = IGNORE_INDEX  # an unlabelled position


def test_an_sft_batchs_targets_are_its_answers():
    """Left-padded rows end with their answers: the targets are the last n columns, n the longest answer."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])
    labels = torch.tensor([[X, X, X, X, 7], [X, X, 7, 8, 9]])
    batch = Batch(ids, torch.ones_like(ids), labels, torch.arange(2), torch.zeros(2), torch.zeros(2), [None] * 2)
    n, target_ids, mask = answer_targets(batch)
    assert n == 3 and target_ids.tolist() == [[5, 6, 7], [7, 8, 9]]
    assert mask.tolist() == [[False, False, True], [True, True, True]]


def test_micro_batch_shares():
    counted = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]])  # 2, 1, 3, 0, 1 tokens of 7
    assert micro_batch_shares(counted, 2) == pytest.approx([3 / 7, 3 / 7, 1 / 7])
    assert micro_batch_shares(counted, 5) == [1.0]
    assert micro_batch_shares(torch.zeros(5, 3), 2) == pytest.approx([2 / 5, 2 / 5, 1 / 5])  # none counts: rows


class Fixed:
    """A term that gives what it was made with."""

    def __init__(self, name, value, metrics=None, needs_logits=False):
        self.name, self.value, self.metrics, self.needs_logits = name, value, metrics or {}, needs_logits

    def loss(self, step):
        return (None if self.value is None else torch.tensor(self.value) * step.share), self.metrics


def test_the_terms_are_summed_and_logged_one_by_one():
    module = SimpleNamespace(loss_terms=[])
    add = CPTModule.add_loss_term.__get__(module)
    first, second = Fixed("a", 2.0, {"a/seen": 1.0}), Fixed("b", 0.5, needs_logits=True)
    for term in (first, second, first, Fixed("idle", None, {"idle/seen": 0.0})):
        add(term)
    assert [t.name for t in module.loss_terms] == ["a", "b", "idle"]  # added once
    assert CPTModule.terms_need_logits(module)
    total, metrics = CPTModule.loss_terms_on(module, TrainingStep(module, None, None, None, None, share=0.5))
    assert float(total) == 1.25
    assert {k: float(v) for k, v in metrics.items()} == {"loss/a": 1.0, "a/seen": 1.0, "loss/b": 0.25,
                                                         "idle/seen": 0.0}
    module.loss_terms = []
    assert CPTModule.loss_terms_on(module, None) == (None, {}) and not CPTModule.terms_need_logits(module)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "rft"])
def test_a_users_loss_term_by_import_path_joins_every_step(method, tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(None, [*quick_cfg, f"output_dir={tmp_path}", f"method={method}", "tasks=[colour,count]",
                             "steps_per_task=2", "data.batch_size=2", "rft.group_size=2", "rft.max_new_tokens=4",
                             "eval.general=false", "data.eval_size=4", "save_checkpoints=false",
                             "callbacks=[{class: 'tests.helpers.plugins:TargetLogitPull', weight: 0.01}]"])
    run(cfg)
    targets = json.loads((tmp_path / "target_logit_pull.json").read_text())
    rows = metric_rows(tmp_path, "loss/target_logit_pull")
    assert len(targets) == len(rows) == 4 and all(t > 0 for t in targets)
    assert [float(r["pull/targets"]) for r in rows] == targets  # the targets it was handed, logged
    assert all(float(r["loss/target_logit_pull"]) > 0 and r["train/loss"] for r in rows)
