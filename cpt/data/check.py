"""Checking data before spending compute: every configured task and benchmark loaded and read row by row.

`check_config` reports, per task and split, the rows found and selected, the answer types and images per row, and
every problem with its row id (`python -m cpt data check` prints it). `fit` runs the same row checks on the local
tasks before training and leaves the bad rows out (`leave_out_bad_rows`), listing them in the run directory's
data_check.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from cpt.atomic import write_json
from cpt.data.examples import Example
from cpt.data.general_benchmarks import load_benchmark
from cpt.data.local_tasks import LocalSplit, Problem
from cpt.data.scoring import NO, YES, math_value, normalize
from cpt.data.tasks import Task, local_task, synthetic_task
from cpt.errors import DataError

log = logging.getLogger(__name__)
SHOWN_PROBLEMS = 20  # listed per task on the terminal; data_check.json has them all


def answer_type(example: Example) -> str:
    if example.choices:
        return "choice"
    answer = normalize(example.answer)
    if answer in YES | NO:
        return "yes/no"
    if math_value(example.answer) is not None:
        return "number"
    return "short text" if len(answer.split()) <= 3 else "long text"


@dataclass
class SplitReport:
    rows: int  # in the files (or generated)
    selected: int  # after the seeded subset, before bad rows are left out
    answer_types: Counter = field(default_factory=Counter)
    images: Counter = field(default_factory=Counter)  # images per row -> rows
    references: int = 0  # accepted answers over all rows read (several per VQA question)
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return self.selected - len({p.row for p in self.problems})


@dataclass
class TaskReport:
    name: str
    kind: str  # the format, "synthetic", or the benchmark's format
    splits: dict[str, SplitReport] = field(default_factory=dict)
    error: str | None = None  # why the task cannot be used at all
    drops_bad_rows: bool = True  # fit leaves bad rows of local tasks out; a bad benchmark row stops its evaluation

    @property
    def usable(self) -> bool:
        if self.error is not None or not all(s.usable > 0 for s in self.splits.values() if s.selected or s.rows):
            return False
        return self.drops_bad_rows or not any(s.problems for s in self.splits.values())


def check_split(task: str, split_name: str, split: Sequence[Example], progress: bool = False) -> SplitReport:
    """Every example of the split read (images decoded) and described; unreadable ones are problems."""
    if isinstance(split, LocalSplit):
        report = SplitReport(len(split.rows), len(split))
        report.problems = split.problems(progress, visit=lambda example: _describe(report, example))
        return report
    report = SplitReport(len(split), len(split))
    for index in range(len(split)):
        try:
            _describe(report, split[index])
        except ValueError as error:  # benchmark rows name their file and id in the message
            report.problems.append(Problem(task, split_name, index, None, str(error)))
    return report


def _describe(report: SplitReport, example: Example) -> None:
    report.answer_types[answer_type(example)] += 1
    report.images[len(example.images)] += 1
    report.references += 1 + len(example.aliases)


def check_config(cfg: DictConfig, progress: bool = True) -> list[TaskReport]:
    """Every task of the sequence and every general benchmark; synthetic ones are counted, not read."""
    reports = []
    for name in cfg.tasks:
        if name not in cfg.local_tasks:
            task = synthetic_task(name, cfg)
            reports.append(TaskReport(name, "synthetic", {"train": SplitReport(len(task.train), len(task.train)),
                                                           "eval": SplitReport(len(task.eval), len(task.eval))}))
            continue
        report = TaskReport(name, cfg.local_tasks[name].format)
        try:
            task = local_task(name, cfg.local_tasks[name], cfg)
        except (DataError, FileNotFoundError) as error:
            report.error = str(error)
        else:
            report.splits = {split: check_split(name, split, getattr(task, split), progress)
                             for split in ("train", "eval")}
        reports.append(report)
    for name, spec in cfg.eval.benchmarks.items():
        report = TaskReport(name, spec.format, drops_bad_rows=False)
        try:
            benchmark = load_benchmark(name, spec.format, spec.path, spec.image_dir, spec.limit, cfg.seed)
        except (ValueError, FileNotFoundError) as error:
            report.error = str(error)
        else:
            report.splits = {"eval": check_split(name, "eval", benchmark.eval, progress)}
        reports.append(report)
    return reports


def leave_out_bad_rows(tasks: list[Task], run_dir: Path | None = None, progress: bool = True) -> list[Problem]:
    """Before training: every selected row of the local tasks read; the bad ones left out of their split and
    listed in run_dir/data_check.json. DataError when a split has no usable row left."""
    problems: list[Problem] = []
    for task in tasks:
        for split_name in ("train", "eval"):
            split = getattr(task, split_name)
            if not isinstance(split, LocalSplit):
                continue
            found = split.problems(progress)
            split.drop({p.row for p in found})
            problems += found
            if not len(split):
                # The run's saved config is the one command that lists them all; without it, the user's own.
                check = (f"`python -m cpt data check {run_dir / 'config.yaml'}` lists them all" if run_dir is not None
                         else "`python -m cpt data check CONFIG.yaml [key=value ...]` with the run's config and "
                              "overrides lists them all")
                raise DataError(f"task {task.name!r}: none of its {split_name} rows can be used; the first: "
                                + "; ".join(str(p) for p in found[:3]) + f". {check}")
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:5])
        log.warning("%d rows cannot be used and are left out (all in data_check.json):\n  %s%s", len(problems), shown,
                    "\n  ..." if len(problems) > 5 else "")
    if run_dir is not None:
        write_json(run_dir / "data_check.json", {"left_out": [p.to_dict() for p in problems]})
    return problems


def _share(counter: Counter) -> str:
    total = sum(counter.values())
    return ", ".join(f"{key} {100 * n / total:.0f}%" for key, n in counter.most_common()) if total else "-"


def format_report(reports: list[TaskReport]) -> str:
    header = ["task", "format", "split", "rows", "selected", "usable", "answers", "answers/row", "images/row"]
    table = [header]
    for report in reports:
        if report.error:
            table.append([report.name, report.kind, "-", "-", "-", "0", "cannot be used", "", ""])
            continue
        for split, s in report.splits.items():
            read = sum(s.answer_types.values())
            table.append([report.name, report.kind, split, str(s.rows), str(s.selected),
                          str(s.usable), _share(s.answer_types),
                          f"{s.references / read:.1f}" if read else "-", _share(s.images)])
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    for report in reports:
        if report.error:
            lines.append(f"\n{report.name}: cannot be used: {report.error}")
        problems = [p for s in report.splits.values() for p in s.problems]
        if problems:
            consequence = "left out by fit" if report.drops_bad_rows else "fix them: fit stops at the first evaluation"
            lines.append(f"\n{report.name}: {len(problems)} row(s) with problems, {consequence}:")
            lines += [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
            if len(problems) > SHOWN_PROBLEMS:
                lines.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more (--out FILE writes them all)")
    unusable = [r.name for r in reports if not r.usable]
    lines.append("\n" + (f"cannot be used: {', '.join(unusable)}" if unusable else "every task can be used"))
    return "\n".join(lines)


def reports_to_dict(reports: list[TaskReport]) -> dict:
    """The full report, every problem included, as `data check --out` writes it."""
    return {"tasks": [
        {"name": r.name, "format": r.kind, "error": r.error, "usable": r.usable,
         "splits": {k: {"rows": s.rows, "selected": s.selected, "usable": s.usable,
                        "answer_types": dict(s.answer_types), "images_per_row": dict(s.images),
                        "problems": [p.to_dict() for p in s.problems]} for k, s in r.splits.items()}}
        for r in reports]}
