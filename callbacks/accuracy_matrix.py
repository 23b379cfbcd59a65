"""Fills the accuracy matrix, under every schedule: every task's evaluation split is greedy-decoded and scored
before the first stage (row 0, the base model) and after each stage (row k). General-knowledge benchmarks (the
synthetic general set, MMMU, MMLU-Pro) run before the sequence, after every `general_every`-th stage and after the
last.

After every row it writes results.json (with each benchmark's accuracy overall and per category),
accuracy_matrix.csv, accuracy_matrix.png and correctness.json (every row's 1/0 per evaluation example of every set
evaluated, for sample-level forgetting: `correct[k][name]`) to the run directory and logs `eval/<task>`,
`eval/<benchmark>` and `eval/avg_acc`; at the end it prints the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

from cpt.atomic import write_json
from cpt.data.synthetic import GENERAL_NAME
from cpt.data.tasks import Task
from cpt.errors import ConfigError
from cpt.eval.evaluate import evaluate_by_category
from cpt.eval.results import format_table, summarize, write_results
from cpt.run_files import rerun_command


class AccuracyMatrix(Callback):
    def __init__(self, tasks: list[Task], run_dir: str | Path, batch_size: int = 64,
                 max_new_tokens: int = 12, general: list[Task] | Task | None = None, progress: bool = True,
                 stages: list[list[str]] | None = None, general_every: int = 1, info: dict | None = None,
                 extra: Callable[[], dict] | None = None):
        self.tasks = tasks
        self.benchmarks = [general] if isinstance(general, Task) else list(general or [])
        self.run_dir = Path(run_dir)
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self.stages = stages if stages is not None else [[t.name] for t in tasks]
        self.general_every = general_every
        self.info, self.extra = dict(info or {}), extra  # static fields of results.json, and fields from callbacks
        self.rows: list[list[float]] = []
        self.benchmark_rows: dict[str, list[dict | None]] = {b.name: [] for b in self.benchmarks}
        self.correct: list[dict[str, list[int]]] = []  # per row, each evaluated set's 1/0 per example
        self.started = time.perf_counter()
        self.wall_time_s = 0.0

    @property
    def state_key(self) -> str:
        # The key of this callback's rows in checkpoints/last.ckpt: its class name before it was renamed, so that
        # a run stopped earlier still resumes with its rows.
        return "MultiTaskEvaluation"

    @property
    def summary(self) -> dict:
        general = self.benchmark_rows.get(GENERAL_NAME, [None] * len(self.rows))
        info = {**self.info, "wall_time_s": self.wall_time_s,
                **(self.extra() if self.extra else {})}
        return summarize([t.name for t in self.tasks], self.rows, [g and g["accuracy"] for g in general],
                         [t.chance for t in self.tasks], self.stages, self.benchmark_rows, **info)

    def state_dict(self) -> dict:
        return {"rows": self.rows, "benchmark_rows": self.benchmark_rows, "wall_time_s": self.wall_time_s,
                "correct": self.correct}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.benchmark_rows = list(state["rows"]), dict(state["benchmark_rows"])
        # A run stopped before correctness was kept has none for its finished rows.
        self.correct = list(state.get("correct", [{} for _ in self.rows]))
        self.wall_time_s = state["wall_time_s"]
        self.started = time.perf_counter() - self.wall_time_s  # wall time counts the run before it stopped

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter() - self.wall_time_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.rows:  # a resumed run has the rows of the stages it finished
            return
        if trainer.ckpt_path is not None:
            raise ConfigError(f"{trainer.ckpt_path} holds no accuracy rows for this run, so resuming would measure the "
                              "partly trained model as the base; start the run again with "
                              f"`{rerun_command(self.run_dir)}`")
        self.evaluate_row(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate_row(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            print("\n" + format_table(self.summary) + f"\n\nResults in {self.run_dir}")

    def row_labels(self) -> list[str]:
        """"base", then each stage by its tasks (joined by "+" under multitask)."""
        return ["base", *("+".join(stage) for stage in self.stages)]

    def general_due(self, row: int) -> bool:
        """Benchmarks run on the base model, after every `general_every`-th stage, and after the last."""
        last = row == len(self.stages)
        return row == 0 or last or (self.general_every > 0 and row % self.general_every == 0)

    def evaluate_row(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = len(self.rows)
        label = "the base model" if not row else f"after stage {row}"
        sets = self.tasks + (self.benchmarks if self.general_due(row) else [])
        bar = tqdm(sets, desc=f"Evaluating {label}", leave=False,
                   disable=not (self.progress and trainer.is_global_zero))
        scores = {}
        for task in bar:
            scores[task.name] = evaluate_by_category(pl_module.backbone, pl_module.processor, task, self.batch_size,
                                                     self.max_new_tokens, pl_module.device, trainer.global_rank,
                                                     trainer.world_size)
        self.rows.append([scores[t.name].accuracy for t in self.tasks])
        self.correct.append({name: result.correct for name, result in scores.items()})
        self.wall_time_s = round(time.perf_counter() - self.started, 1)  # from fit start to this row's end
        for benchmark in self.benchmarks:
            result = scores.get(benchmark.name)
            self.benchmark_rows[benchmark.name].append(
                None if result is None else {"accuracy": result.accuracy, "categories": result.categories})
        summary = self.summary
        if trainer.is_global_zero:
            write_results(self.run_dir, summary)
            write_json(self.run_dir / "correctness.json",
                       {"rows": self.row_labels()[:len(self.correct)], "correct": self.correct})
            if trainer.logger is not None:
                metrics = {f"eval/{name}": result.accuracy for name, result in scores.items()}
                metrics["eval/avg_acc"] = summary["avg_acc"]
                trainer.logger.log_metrics(metrics, step=trainer.global_step)
        trainer.strategy.barrier()
