"""A run directory keeps what it holds: `fit` into a directory that holds a run refuses unless `resume=true` (continue
it) or `overwrite=true` (replace it, saying what goes), and every run records the versions that produced it.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from cpt.errors import ConfigError

# What `fit` writes into a run directory (callbacks add the filtering and analysis files); `overwrite=true` deletes
# these and nothing else.
RUN_ENTRIES = ("config.yaml", "versions.json", "results.json", "accuracy_matrix.csv", "accuracy_matrix.png",
               "data_check.json", "analysis.json", "analysis.png", "filtering", "filtering.json",
               "filtering_online.json", "checkpoints", "logs")
# A run has computed something once it holds either (a start that failed before its first evaluation holds only
# its config, which the next start may replace).
RUN_MARKERS = ("results.json", "checkpoints")
# What `fit` puts in checkpoints/: a directory per stage (<k>-<task>) and the training state, each perhaps half
# written (.saving) or replaced (.old). Anything else there is not the run's, and stays.
CHECKPOINT_ENTRY = re.compile(r"^(\d+-.+|last\.ckpt)(\.saving|\.old)?$")
PACKAGES = ("cpt", "torch", "transformers", "lightning", "peft", "bitsandbytes", "flash-attn")


def held_run(run_dir: Path) -> list[str]:
    """The run entries `run_dir` holds (empty when it holds no run)."""
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        return []
    return [name for name in RUN_ENTRIES if (run_dir / name).exists()]


def delete_run_entries(run_dir: Path, names: list[str]) -> None:
    """Deletes the run entries `names` of run_dir; of checkpoints/, only what fit writes there (a file of the user's
    beside the stages stays, and so does the directory holding it)."""
    for name in names:
        path = run_dir / name
        if name == "checkpoints" and path.is_dir():
            for entry in path.iterdir():
                if CHECKPOINT_ENTRY.match(entry.name):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            if not any(path.iterdir()):
                path.rmdir()
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_run_dir(cfg: DictConfig) -> None:
    """Refuses a directory that holds a run unless the config resumes or overwrites it; with overwrite=true deletes
    the earlier run's entries and says so. Only the first process decides: the processes Lightning launches for the
    other ranks start after it has begun writing."""
    if cfg.resume or rank_zero_only.rank != 0:
        return
    run_dir = Path(cfg.output_dir)
    held = held_run(run_dir)
    if not held:
        return
    if not (run_dir / "config.yaml").is_file():  # fit writes its config first: this is not a cpt run
        raise ConfigError(
            f"output_dir={str(run_dir)!r} holds {', '.join(held)} but no config.yaml, so no cpt run wrote them; "
            "choose another output_dir")
    if not cfg.overwrite:
        raise ConfigError(
            f"output_dir={str(run_dir)!r} already holds a run ({', '.join(held)}). Continue it with `python -m cpt "
            f"fit {run_dir / 'config.yaml'} resume=true`, choose another output_dir, or add overwrite=true to "
            "replace it")
    print(f"overwrite=true: replacing the run in {run_dir} (deleting {', '.join(held)})")
    delete_run_entries(run_dir, held)


def versions() -> dict:
    """The versions of Python and the packages a run depends on (None where not installed), and the git commit
    of the source tree when it runs from a git checkout (with `dirty` when it has uncommitted changes)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    source = Path(__file__).resolve().parents[2]  # the checkout, for a source or editable install
    found["git_commit"] = found["git_dirty"] = None
    if not (source / ".git").exists():  # an installed package: no commit of ours to name
        return found
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            found["git_commit"], found["git_dirty"] = commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):  # no git on the machine: the versions still say what ran
        pass
    return found

