"""Greedy decoding of a task's evaluation split and its accuracy, shared out over ranks.

Under FSDP every rank must run the same number of forward passes (each one gathers shards), so ranks get
equally many batches (the last padded with repeats that carry zero weight) and generation runs synced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from cpt.data.batches import Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.tasks import Task
from cpt.model.generation import generate
from cpt.model.processor import VisionTextProcessor


def shard_indices(n: int, rank: int, world: int, batch_size: int) -> tuple[list[int], list[float]]:
    """This rank's indices and weights, padded so that every rank makes the same number of batches."""
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    padded = -(-per_rank // batch_size) * batch_size if n else 0
    weights = [1.0] * len(mine) + [0.0] * (padded - len(mine))
    fill = mine[:1] or [0]
    return mine + fill * (padded - len(mine)), weights


@torch.no_grad()
def evaluate_by_category(model: nn.Module, processor: VisionTextProcessor, task: Task, batch_size: int,
                         max_new_tokens: int, device: torch.device, rank: int = 0,
                         world: int = 1) -> tuple[float, dict[str, float]]:
    """Accuracy (percent) of greedy answers on `task.eval` (prompted with the task's template) over all `world`
    ranks (this one is `rank`), and per category when the task has `categories` (else an empty dict). The
    metrics synchronise over the ranks themselves (torchmetrics)."""
    examples: Sequence[Example] = task.eval
    dataset = EncodedDataset(examples, processor, task.template, with_response=False)
    collate = Collator(processor.pad_id)
    indices, weights = shard_indices(len(examples), rank, world, batch_size)
    accuracy = MeanMetric().to(device)
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
            for name, metric in per_category.items():  # every rank updates every category: the sync needs it
                in_category = torch.tensor([float(task.categories[i] == name) for i, _ in chunk], device=device)
                metric.update(correct, weight * in_category)
    finally:
        model.train(was_training)
    if not indices and world == 1:
        return float("nan"), {}
    return 100.0 * accuracy.compute().item(), {name: 100.0 * m.compute().item() for name, m in per_category.items()}
