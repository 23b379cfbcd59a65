"""What several tests share: the repository's path, a run's logged metrics, callbacks named by import path in runs,
data fixtures."""

import csv
from pathlib import Path

from torch import nn

REPO = Path(__file__).resolve().parents[2]


def metric_rows(run_dir: Path, key: str, log: str = "metrics.csv") -> list[dict]:
    """The rows of a run's CSV log (logs/<log>) that hold the metric `key`."""
    with open(Path(run_dir) / "logs" / log) as f:
        return [row for row in csv.DictReader(f) if row.get(key)]


class OneLinear(nn.Module):
    """A model of one 2 -> 2 linear layer named `lin`, for adapters worked by hand."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)

    def forward(self, x):
        return self.lin(x)
