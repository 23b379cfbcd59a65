"""Greedy decoding of a task's evaluation split and its accuracy, shared out over ranks.

Under FSDP every rank must run the same number of forward passes (each one gathers shards), so ranks get
equally many examples (the short ones padded with a repeat that carries zero weight), hence equally many batches,
and generation runs synced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torchmetrics.aggregation import CatMetric, MeanMetric

from cpt.data.batches import Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.tasks import Task
from cpt.model.generation import generate
from cpt.model.processor import VisionTextProcessor


def shard_indices(n: int, rank: int, world: int) -> tuple[list[int], list[float]]:
    """This rank's indices and weights, padded to as many as the fullest rank's (with a repeat of weight 0), so
    that every rank makes the same number of batches; the last batch may be smaller than the others."""
    mine = list(range(rank, n, world))
    padded = -(-n // world)
    weights = [1.0] * len(mine) + [0.0] * (padded - len(mine))
    fill = mine[:1] or [0]
    return mine + fill * (padded - len(mine)), weights


class Evaluation(NamedTuple):
    accuracy: float  # percent
    categories: dict[str, float]  # percent per category; empty for a task without categories
    correct: list[int]  # 1 or 0 per evaluation example, in the order of task.eval


@torch.no_grad()
def evaluate_by_category(model: nn.Module, processor: VisionTextProcessor, task: Task, batch_size: int,
                         max_new_tokens: int, device: torch.device, rank: int = 0, world: int = 1) -> Evaluation:
    """Accuracy (percent) of greedy answers on `task.eval` (prompted with the task's template) over all `world`
    ranks (this one is `rank`), per category when the task has `categories`, and each example's correctness. The
    metrics synchronise over the ranks themselves (torchmetrics)."""
    examples: Sequence[Example] = task.eval
    dataset = EncodedDataset(examples, processor, task.template, with_response=False)
    collate = Collator(processor.pad_id)
    indices, weights = shard_indices(len(examples), rank, world)
    accuracy = MeanMetric().to(device)
    # Each example's (index, correct), gathered from every rank: which examples a stage broke or mended.
    scored_index, scored_correct = CatMetric().to(device), CatMetric().to(device)
    names = sorted(set(task.categories)) if task.categories else []
    per_category = {name: MeanMetric().to(device) for name in names}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(indices), batch_size):
            chunk = [(i, examples[i]) for i in indices[start:start + batch_size]]
            batch = collate([dataset.encode(ex, i) for i, ex in chunk]).to(device)
            completions = generate(model, processor, batch, max_new_tokens, synced=world > 1)
            correct = torch.tensor([float(task.scorer(text, ex)) for text, (_, ex) in zip(completions, chunk)],
                                   device=device)
            weight = torch.tensor(weights[start:start + batch_size], device=device)
            accuracy.update(correct, weight)
            real = weight > 0  # the padding repeats carry weight 0
            index = torch.tensor([i for i, _ in chunk], dtype=torch.float, device=device)
            scored_index.update(index[real])
            scored_correct.update(correct[real])
            for name, metric in per_category.items():  # every rank updates every category: the sync needs it
                in_category = torch.tensor([float(task.categories[i] == name) for i, _ in chunk], device=device)
                metric.update(correct, weight * in_category)
    finally:
        model.train(was_training)
    if not indices and world == 1:
        return Evaluation(float("nan"), {}, [])
    by_index = dict(zip(as_list(scored_index.compute()), as_list(scored_correct.compute())))
    return Evaluation(100.0 * accuracy.compute().item(), {name: 100.0 * m.compute().item()
                                                          for name, m in per_category.items()},
                      [int(by_index[float(i)]) for i in range(len(examples))])


def as_list(values: torch.Tensor | list) -> list[float]:
    """CatMetric's result as floats: a tensor, or an empty list when nothing was added on any rank."""
    return values.flatten().tolist() if isinstance(values, torch.Tensor) else []
