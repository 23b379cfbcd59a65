"""Fills the accuracy matrix: every task's evaluation split (and the general set) is greedy-decoded and
scored before the first task (row 0, the base model) and after each task (row k).

After every row it writes results.json, accuracy_matrix.csv and accuracy_matrix.png to the run directory and
logs `eval/<task>`, `eval/general` and `eval/avg_acc`; at the end it prints the table.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

from cpt.evaluation import evaluate
from cpt.results import format_table, summarize, write_results
from cpt.tasks import Task


class MultiTaskEvaluation(Callback):
    def __init__(self, tasks: list[Task], run_dir: str | Path, template: str, batch_size: int = 64,
                 max_new_tokens: int = 12, general: Task | None = None, progress: bool = True):
        self.tasks, self.general = tasks, general
        self.run_dir = Path(run_dir)
        self.template, self.batch_size, self.max_new_tokens, self.progress = template, batch_size, max_new_tokens, progress
        self.rows: list[list[float]] = []
        self.general_scores: list[float | None] = []

    @property
    def summary(self) -> dict:
        return summarize([t.name for t in self.tasks], self.rows, self.general_scores, [t.chance for t in self.tasks])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate_row(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate_row(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            print("\n" + format_table(self.summary) + f"\n\nResults in {self.run_dir}")

    def evaluate_row(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        label = "base model" if not self.rows else f"after task {len(self.rows)}"
        sets = self.tasks + ([self.general] if self.general is not None else [])
        bar = tqdm(sets, desc=f"Evaluating the {label}", leave=False,
                   disable=not (self.progress and trainer.is_global_zero))
        scores = {}
        for task in bar:
            scores[task.name] = evaluate(pl_module.backbone, pl_module.processor, task, self.template,
                                         self.batch_size, self.max_new_tokens, pl_module.device)
        self.rows.append([scores[t.name] for t in self.tasks])
        self.general_scores.append(scores[self.general.name] if self.general is not None else None)
        summary = self.summary
        if trainer.is_global_zero:
            write_results(self.run_dir, summary)
            if trainer.logger is not None:
                metrics = {f"eval/{name}": value for name, value in scores.items()}
                metrics["eval/avg_acc"] = summary["avg_acc"]
                trainer.logger.log_metrics(metrics, step=trainer.global_step)
        trainer.strategy.barrier()
