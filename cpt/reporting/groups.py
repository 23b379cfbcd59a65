"""Runs of one experiment grouped over their seeds, each number as a mean with its 95% interval.

Runs belong to one experiment when their saved configs are equal but for the seed and the keys that do not change
what is trained (output_dir, logging, progress); runs without a config.yaml group by name. Two experiments that
share a name (an lr grid whose overrides keep the config's name) are told apart by the keys that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import OmegaConf

from cpt.config import REPORTING_KEYS, Config, flat
from cpt.errors import ConfigError
from cpt.eval.metrics import task_forgetting
from cpt.reporting.intervals import Difference, Estimate, Ratio, difference, estimate, ratio
from cpt.reporting.mechanisms import run_mechanisms
from cpt.run_files import next_step, read_yaml

# Keys two seeds of one experiment may differ in.
SEED_KEYS = {"seed", "output_dir", *REPORTING_KEYS}
SCHEMA_DEFAULTS = flat(OmegaConf.to_container(OmegaConf.structured(Config)))


def saved_config(run: dict) -> dict | None:
    """The run's config.yaml, flattened (`optim.lr`: value), with the schema's default for a key it lacks (a run
    saved before the key existed ran as its default does, so it joins the runs saved after); None when it has no
    config.yaml."""
    path = run["dir"] / "config.yaml" if run.get("dir") else None
    if path is None or not path.is_file():
        return None
    saved = flat(OmegaConf.to_container(read_yaml(path, f"leave the run out, or {next_step(path)}")))
    return {**SCHEMA_DEFAULTS, **saved}


def run_values(run: dict, row: dict, benchmarks: list[str]) -> dict:
    """The numbers a run contributes to its experiment: its comparison_rows record plus, per benchmark,
    `<name>_change` (final - base), for a finished sequential run per task `forget_<task>` (its final accuracy
    less its best after it was trained; FM is their mean), and the mechanisms' numbers from its analysis.json
    (cpt.reporting.mechanisms.RUN_KEYS)."""
    values = {**row, **run_mechanisms(run)}
    if row["gain"] is not None and run["complete"]:
        forgetting = task_forgetting(run["accuracy_matrix"])
        values.update({f"forget_{task}": f for task, f in zip(run["tasks"], forgetting) if f is not None})
    for name in benchmarks:
        base, final = row[f"{name}_base"], row[f"{name}_final"]
        values[f"{name}_change"] = None if base is None or final is None else final - base
    return values


@dataclass
class Experiment:
    """The runs of one experiment (one per seed) and their numbers."""

    name: str
    runs: list[dict]
    values: list[dict]  # run_values per run
    config: dict | None  # the flattened config the runs share, without the seed keys
    seeds: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def first(self) -> dict:
        return self.runs[0]

    @property
    def complete(self) -> bool:
        return all(run["complete"] for run in self.runs)

    def estimate(self, key: str) -> Estimate | None:
        return estimate(values.get(key) for values in self.values)

    def cell(self, row: int, task: str) -> Estimate | None:
        """Task `task`'s accuracy after stage `row` (0 = base), over the runs that evaluated it."""
        return estimate(run["accuracy_matrix"][row][run["tasks"].index(task)] for run in self.runs
                        if task in run["tasks"] and row < len(run["accuracy_matrix"]))

    def by_seed(self, key: str) -> dict:
        """`key` per run, by its seed (a run without a saved config by itself alone, never paired)."""
        return {("unseeded", id(run)) if seed is None else seed: values.get(key)
                for run, seed, values in zip(self.runs, self.seeds, self.values)}

    def difference(self, other: Experiment, key: str) -> Difference | None:
        """This experiment's mean of `key` less the other's: paired over their common seeds, else Welch's."""
        return difference(self.by_seed(key), other.by_seed(key))

    def ratio(self, other: Experiment, key: str) -> Ratio | None:
        """This experiment's `key` over the other's, on the log scale (cpt.reporting.intervals.ratio)."""
        return ratio(self.by_seed(key), other.by_seed(key))


def _signature(config: dict | None, name: str) -> tuple:
    if config is None:
        return (name, None)
    return (name, tuple(sorted((k, repr(v)) for k, v in config.items() if k not in SEED_KEYS)))


def group_runs(runs: list[dict], rows: list[dict], benchmarks: list[str]) -> list[Experiment]:
    """Runs (from load_runs, with their comparison_rows) grouped into experiments, in first-seen order."""
    groups: dict[tuple, Experiment] = {}
    for run, row in zip(runs, rows):
        config = saved_config(run)
        name = run.get("experiment") or run["name"]
        key = _signature(config, name)
        shared = None if config is None else {k: v for k, v in config.items() if k not in SEED_KEYS}
        group = groups.setdefault(key, Experiment(name, [], [], shared))
        group.runs.append(run)
        group.values.append(run_values(run, row, benchmarks))
        group.seeds.append(None if config is None else config.get("seed"))
    experiments = list(groups.values())
    for experiment in experiments:
        _check_seeds_once(experiment)
    _tell_apart(experiments)
    return experiments


def _check_seeds_once(experiment: Experiment) -> None:
    """Each seed once per experiment: a run given twice, or a copy of one, is not a second draw, and counting it
    would narrow the interval for nothing."""
    first: dict = {}
    for run, seed in zip(experiment.runs, experiment.seeds):
        if seed is None:
            continue
        if seed in first:
            raise ConfigError(f"{first[seed]['dir']} and {run['dir']} are both seed {seed} of {experiment.name!r} "
                              "(the same run given twice, a copy of one, or two experiments with one config and "
                              "name): give each seed once")
        first[seed] = run


def _tell_apart(experiments: list[Experiment]) -> None:
    """Experiments sharing a name get the keys their configs differ in: "SFT sequential (optim.lr=0.00015)"."""
    by_name: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        by_name.setdefault(experiment.name, []).append(experiment)
    for same in by_name.values():
        if len(same) < 2:
            continue
        configs = [e.config or {} for e in same]
        keys = sorted({k for c in configs for k in c if any(c.get(k) != other.get(k) for other in configs)})
        for experiment, config in zip(same, configs):
            detail = ", ".join(f"{k}={config.get(k)}" for k in keys) or experiment.first["dir"].name
            experiment.name = f"{experiment.name} ({detail})"


def lr_family(experiment: Experiment) -> tuple | None:
    """What an experiment shares with the other points of its learning-rate grid: its config without the lr (and
    the name, which a grid's entries may set apart)."""
    if experiment.config is None:
        return None
    return tuple(sorted((k, repr(v)) for k, v in experiment.config.items() if k not in ("optim.lr", "name")))


def is_sequential(experiment: Experiment) -> bool:
    return all(v.get("gain") is not None for v in experiment.values)
