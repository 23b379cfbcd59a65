"""What every benchmark printout states: the machine and versions it was measured with, and the per-round table of
an alternating comparison with the median ratio and its range."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

from cpt.bench.rounds import Ratio, Round, mean_completion_tokens, median_over_rounds, ratio

PACKAGES = ("torch", "transformers", "trl", "lightning")


def cpu_name() -> str:
    """The CPU's model name where Linux tells it, and platform.processor() (or the architecture)."""
    arch = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({arch})"
    except OSError:
        pass
    return arch


def machine_line(threads: int | None = None) -> str:
    """The CPU, its count, and the torch threads the measurement used (this process's unless given)."""
    threads = torch.get_num_threads() if threads is None else threads
    return f"machine   {cpu_name()}, {plural(os.cpu_count() or 1, 'CPU')}, {plural(threads, 'torch thread')}"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions_line(packages: Sequence[str] = PACKAGES) -> str:
    found = ", ".join(f"{name} {version(name)}" for name in packages)
    return f"versions  python {platform.python_version()}, {found}"


def plural(count: int, word: str) -> str:
    """`3 rounds`, `1 round`."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def say(text: str = "") -> None:
    """Print now: a benchmark runs for minutes and shows each round as it ends."""
    print(text, flush=True)


class RoundsTable:
    """The table of an alternating comparison: one row per round (each side's median s/step, or `unit`, in that
    round, and each ratio of that round), then the median over rounds and the min-max range of each ratio.

    sides: (key, column label) of each side; ratios: (column label, numerator key, denominator key).
    """

    def __init__(self, sides: Sequence[tuple[str, str]], ratios: Sequence[tuple[str, str, str]], unit: str = "s/step"):
        self.sides, self.ratios, self.unit = list(sides), list(ratios), unit
        self.widths = [max(len(label), 10) for _, label in self.sides] + [max(len(label), 11)
                                                                          for label, _, _ in self.ratios]

    def _line(self, first: str, cells: Sequence[str]) -> str:
        return f"{first:<20}" + "".join(f"  {cell:>{width}}" for cell, width in zip(cells, self.widths))

    def header(self) -> str:
        labels = [label for _, label in self.sides] + [label for label, _, _ in self.ratios]
        units = [self.unit] * len(self.sides) + ["ratio"] * len(self.ratios)
        return "\n".join([self._line("round", labels), self._line("", units)])

    def row(self, index: int, rnd: Round) -> str:
        cells = [f"{rnd[key].median_s:.3f}" for key, _ in self.sides]
        cells += [f"{rnd[num].median_s / rnd[den].median_s:.2f}x" for _, num, den in self.ratios]
        return self._line(str(index + 1), cells)

    def summary_ratios(self, rounds: Sequence[Round]) -> list[tuple[str, Ratio]]:
        return [(label, ratio(rounds, num, den)) for label, num, den in self.ratios]

    def footer(self, rounds: Sequence[Round]) -> str:
        ratios = [r for _, r in self.summary_ratios(rounds)]
        blank = [""] * len(self.sides)
        lines = [
            self._line(f"median of {len(rounds)}", [f"{median_over_rounds(rounds, key):.3f}" for key, _ in self.sides]
                       + [f"{r.median:.2f}x" for r in ratios]),
            self._line("range (min-max)", blank + [f"{r.low:.2f}-{r.high:.2f}x" for r in ratios]),
        ]
        tokens = [mean_completion_tokens(rounds, key) for key, _ in self.sides]
        if any(t is not None for t in tokens):
            lines.append(self._line("completion tokens", ["-" if t is None else f"{t:.1f}" for t in tokens]))
        return "\n".join(lines)

    def table(self, rounds: Sequence[Round]) -> str:
        return "\n".join([self.header(), *(self.row(i, r) for i, r in enumerate(rounds)), self.footer(rounds)])

    def conclusion(self, rounds: Sequence[Round]) -> list[str]:
        """One sentence per ratio: its median over rounds and its range."""
        labels = dict(self.sides)
        count = plural(len(rounds), "round")
        return [f"{labels[r.numerator]} / {labels[r.denominator]}: {r.median:.2f}x, median of {count} "
                f"(range {r.low:.2f}x to {r.high:.2f}x)" for _, r in self.summary_ratios(rounds)]
