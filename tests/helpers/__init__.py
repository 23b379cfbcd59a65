"""What several tests share: the repository's path, a run's logged metrics, callbacks named by import path in runs,
data fixtures."""

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def metric_rows(run_dir: Path, key: str, log: str = "metrics.csv") -> list[dict]:
    """The rows of a run's CSV log (logs/<log>) that hold the metric `key`."""
    with open(Path(run_dir) / "logs" / log) as f:
        return [row for row in csv.DictReader(f) if row.get(key)]
