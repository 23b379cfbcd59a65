"""A study: experiments (a config and overrides each) run over seeds, then compared with intervals.

The study file (YAML; `configs/studies/` holds examples):

    name: toy study
    output_dir: runs/studies/toy          # one directory per run: <output_dir>/<experiment>/seed<k>
    seeds: [0, 1, 2]
    overrides: [data.eval_size=200]       # applied to every run
    experiments:
      sft:                                # the key names the run directories
        config: configs/experiments/sft_sequential.yaml
        name: SFT sequential              # its label in the comparison (default: the config's name)
        overrides: [optim.lr=1.5e-4]
        seeds: [0, 1, 2, 3, 4]            # this experiment's own seeds (default: the study's)
    compare:
      margins: {fm: 3, general_change: 3}        # equivalence margins of the primary comparisons (points)
      primary: [[RFT sequential, SFT sequential]]  # the comparisons the study's conclusions rest on, by label
      diff: [[RFT sequential, SFT lr 5e-5]]      # exploratory differences, by label

Paths in it are relative to the directory `cpt study` runs in (like `cpt fit`); `configs/...` also finds the
package's own configs. Each run's state is read from its directory: finished (results.json complete) runs are
skipped, stopped ones (a saved stage) resumed, ones stopped before their first stage started again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cpt.config import config_from_args, config_path, differing_keys, flat
from cpt.errors import ConfigError
from cpt.reporting.equivalence import is_margin
from cpt.reporting.group_report import check_comparisons
from cpt.reporting.groups import SEED_KEYS
from cpt.run_files import read_yaml, saved_checkpoint

STUDY_KEYS = {"name", "output_dir", "seeds", "overrides", "experiments", "compare"}
EXPERIMENT_KEYS = {"config", "name", "overrides", "seeds"}
COMPARE_KEYS = {"margins", "primary", "diff"}


@dataclass(frozen=True)
class Experiment:
    key: str
    config: Path
    name: str | None
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclass
class Study:
    path: Path
    name: str
    output_dir: Path
    seeds: list[int]
    overrides: list[str]
    experiments: list[Experiment]
    diffs: list[tuple[str, str]] = field(default_factory=list)  # exploratory
    primary: list[tuple[str, str]] = field(default_factory=list)
    margins: dict[str, float] = field(default_factory=dict)  # metric -> equivalence margin of the primary tests


@dataclass(frozen=True)
class PlannedRun:
    """One (experiment, seed) pair: where it runs, the `cpt fit` arguments that make it and the configuration they
    resolve to (flattened)."""

    experiment: Experiment
    seed: int
    directory: Path
    args: tuple[str, ...]
    config: dict

    @property
    def label(self) -> str:
        return f"{self.config.get('name') or self.experiment.key} seed {self.seed}"


def _strings(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{where} must be a list of key=value strings, got {value!r}")
    return list(value)


def _seeds(value, where: str) -> list[int]:
    if (not isinstance(value, list) or not value or not all(isinstance(s, int) and s >= 0 for s in value)
            or len(set(value)) < len(value)):
        raise ConfigError(f"{where} must be a list of distinct non-negative integers, got {value!r}")
    return list(value)


def load_study(path: str | Path) -> Study:
    """The study file, checked: every key known, every experiment's config found, seeds integers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {str(path)!r} does not exist (examples: configs/studies/)")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError, OSError, yaml.YAMLError) as error:  # a key given twice is YAML's
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(f"cannot read study file {path}: {' '.join(lines[:3])}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping with keys {', '.join(sorted(STUDY_KEYS))}")
    unknown = set(raw) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a study has "
                          f"{', '.join(sorted(STUDY_KEYS))}")
    for key in ("output_dir", "seeds", "experiments"):
        if not raw.get(key):
            raise ConfigError(f"{path} needs {key!r} (see configs/studies/ for an example)")
    seeds = _seeds(raw["seeds"], f"{path}: 'seeds'")
    if not isinstance(raw["experiments"], dict):
        raise ConfigError(f"{path}: 'experiments' must map a key to {{config: ..., overrides: [...]}}")
    experiments = []
    for key, spec in raw["experiments"].items():
        if not isinstance(spec, dict) or "config" not in spec or set(spec) - EXPERIMENT_KEYS:
            raise ConfigError(f"{path}: experiment {key!r} must be a mapping with 'config' and optionally 'name', "
                              f"'overrides' and 'seeds', got {spec!r}")
        config = config_path(spec["config"])
        if not config.is_file():
            raise FileNotFoundError(f"{path}: experiment {key!r} names config {spec['config']!r}, which does not "
                                    "exist")
        own_seeds = _seeds(spec["seeds"], f"{path}: {key}.seeds") if "seeds" in spec else seeds
        experiments.append(Experiment(str(key), config, spec.get("name"),
                                      tuple(_strings(spec.get("overrides"), f"{path}: {key}.overrides")),
                                      tuple(own_seeds)))
    compare = raw.get("compare") or {}
    if not isinstance(compare, dict) or set(compare) - COMPARE_KEYS:
        raise ConfigError(f"{path}: compare must be a mapping with {', '.join(sorted(COMPARE_KEYS))}, got {compare!r}")
    diffs, primary = (_pairs(compare.get(key), f"{path}: compare.{key}") for key in ("diff", "primary"))
    margins = compare.get("margins") or {}
    if not isinstance(margins, dict) or not all(isinstance(m, str) and is_margin(v) for m, v in margins.items()):
        raise ConfigError(f"{path}: compare.margins must map a metric to a number > 0 (points), e.g. {{fm: 3}}, got "
                          f"{margins!r}")
    if primary and not margins:
        raise ConfigError(f"{path}: compare.primary needs compare.margins, the equivalence margin of each metric "
                          "its comparisons are tested on (e.g. margins: {fm: 3})")
    try:
        check_comparisons(primary, diffs, margins)
    except ConfigError as error:
        raise ConfigError(f"{path}: compare: {error}") from None
    return Study(path, raw.get("name") or path.stem, Path(raw["output_dir"]), seeds,
                 _strings(raw.get("overrides"), f"{path}: overrides"), experiments, diffs, primary,
                 {m: float(v) for m, v in margins.items()})


def _pairs(value, where: str) -> list[tuple[str, str]]:
    pairs = value or []
    if not isinstance(pairs, list) or not all(isinstance(d, list) and len(d) == 2 and all(isinstance(n, str)
                                                                                      for n in d) for d in pairs):
        raise ConfigError(f"{where} must be a list of [A, B] pairs of experiment names, got {value!r}")
    return [tuple(d) for d in pairs]


def check_compared_names(study: Study, runs: list[PlannedRun]) -> None:
    """Every name under compare: is an experiment's (its `name`, or its config's), so that a misspelt one fails
    before the runs rather than at the report after them."""
    names = {str(run.config.get("name") or f"{run.config['method']} {run.config['schedule']}").lower() for run in runs}
    unknown = sorted({n for pair in [*study.primary, *study.diffs] for n in pair if n.lower() not in names})
    if unknown:
        raise ConfigError(f"{study.path}: compare names {', '.join(map(repr, unknown))}, which no experiment is "
                          f"called; the experiments are: {', '.join(sorted(names))}")


def plan(study: Study) -> list[PlannedRun]:
    """Every (experiment, seed) pair, seed-major (the study's seeds first, then those only some experiments
    take): a study stopped part-way has each experiment at the same number of seeds, so its comparison so far is
    already a matched one. Every configuration is resolved here, so a bad key fails before the first run starts."""
    runs = []
    extra = [s for e in study.experiments for s in e.seeds if s not in study.seeds]
    for seed in [*study.seeds, *dict.fromkeys(extra)]:
        for experiment in (e for e in study.experiments if seed in e.seeds):
            directory = study.output_dir / experiment.key / f"seed{seed}"
            args = (str(experiment.config), *study.overrides, *experiment.overrides,
                    *((f"name={experiment.name}",) if experiment.name else ()), f"seed={seed}",
                    f"output_dir={directory}")
            try:
                config = flat(OmegaConf.to_container(config_from_args(list(args))))
            except ConfigError as error:
                raise ConfigError(f"{study.path}: experiment {experiment.key!r}: {error}") from None
            runs.append(PlannedRun(experiment, seed, directory, args, config))
    check_compared_names(study, runs)  # a misspelt comparison fails here, --dry-run included
    check_distinct(study, runs)
    if study.output_dir.exists() and not study.output_dir.is_dir():
        raise ConfigError(f"{study.path}: output_dir {str(study.output_dir)!r} is a file; name a directory")
    return runs


def check_distinct(study: Study, runs: list[PlannedRun]) -> None:
    """No two experiments are the same runs (one config, one name): their seeds would be counted twice as one
    experiment's, with intervals that look tighter than they are."""
    seen: dict[tuple, str] = {}
    for run in runs:  # grouped as cpt compare groups them: one seed of one experiment each
        same = (run.seed, tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in SEED_KEYS)))
        other = seen.setdefault(same, run.experiment.key)
        if other != run.experiment.key:
            raise ConfigError(f"{study.path}: experiments {other!r} and {run.experiment.key!r} are the same runs "
                              "(one config, one name): remove one, or set them apart by an override or a name")


def state(run: PlannedRun) -> str:
    """done (every stage evaluated), stopped (a saved stage to resume from), started (results but no saved stage:
    run it again) or new."""
    results = run.directory / "results.json"
    if results.is_file():
        try:
            summary = json.loads(results.read_text())
            if isinstance(summary, dict) and summary.get("complete"):
                return "done"
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            pass  # cut short while writing, or damaged: whatever else was saved decides
    if saved_checkpoint(run.directory).exists():
        return "stopped"
    return "started" if results.exists() or (run.directory / "checkpoints").exists() else "new"


def changed_keys(run: PlannedRun) -> list[str]:
    """Keys where the run's saved config differs from what the study asks now (empty for a new run)."""
    saved_path = run.directory / "config.yaml"
    if not saved_path.is_file():
        return []
    return differing_keys(read_yaml(saved_path, f"move {run.directory} away (or delete it) and the study runs it "
                                            "again"), run.config)
