"""Reading back what a run wrote: its config.yaml, results and analysis files, model weights and adapters, and the
training state `resume=true` continues from.

A file a run writes appears whole or not at all (cpt.atomic), but a disk, a copy or a sync can still leave one
truncated or corrupt. Each reader here turns that into a DataError (the CLI prints it as one line and exits with
code 1) that names the file and the next step that works, instead of a traceback from inside json, yaml, torch or
safetensors. For a file of a run directory the next step is to start the run again in place
(`python -m cpt fit <run>/config.yaml overwrite=true`), for any other checkpoint to restore the file.

It stands on the standard library, torch, safetensors and omegaconf only, so that every layer may read with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from cpt.atomic import previous_path
from cpt.errors import DataError

LAST = "last.ckpt"  # the training state of a run's last finished stage, in <run>/checkpoints/
CONFIG = "config.yaml"  # a run's resolved config
# What marks a directory holding config.yaml as a run directory (cpt.commands.run_dir.RUN_MARKERS).
MARKERS = ("results.json", "checkpoints")
RESTORE = "restore it from the original checkpoint"


def saved_checkpoint(run_dir: Path) -> Path:
    """The run's checkpoints/last.ckpt, or the copy a save that stopped between its two renames left beside it
    (neither may exist)."""
    checkpoint = run_dir / "checkpoints" / LAST
    if not checkpoint.exists() and previous_path(checkpoint).exists():
        return previous_path(checkpoint)
    return checkpoint


def reason(error: BaseException) -> str:
    """What went wrong, on one short line: the error's first sentence, its whitespace collapsed and anything
    unprintable (bytes of a corrupt file) shown as `?`."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.split(". ")[0].rstrip(".")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 160 else text[:157] + "..."


def run_of(path: Path) -> Path | None:
    """The run directory a file belongs to (its own directory or one above, up to <run>/checkpoints/<stage>/<sub>),
    or None for a file outside any run."""
    for directory in list(Path(path).parents)[:4]:
        if (directory / CONFIG).is_file() and any((directory / marker).exists() for marker in MARKERS):
            return directory
    return None


def rerun_command(run_dir: Path) -> str:
    """The command that starts the run in `run_dir` again from its first stage, in place. A resumed run saved
    resume=true in its config, which would win over overwrite=true: the command turns it off."""
    config = run_dir / CONFIG
    try:
        resumed = bool(OmegaConf.load(config).get("resume"))
    except Exception:  # damaged too: the run starts again from the config it was started with
        return f"python -m cpt fit CONFIG.yaml output_dir={run_dir} overwrite=true"
    return f"python -m cpt fit {config}{' resume=false' if resumed else ''} overwrite=true"


def next_step(path: Path, outside: str = RESTORE) -> str:
    """What to do about a damaged file: a run's file is made again by starting the run again (its config.yaml
    from the config the run was started with); `outside` for a file of any other checkpoint."""
    path = Path(path)
    run_dir = run_of(path)
    if run_dir is None:
        return outside
    if path == run_dir / CONFIG:
        return (f"restore it from a copy, or start the run again from the config it was started with: "
                f"`python -m cpt fit CONFIG.yaml output_dir={run_dir} overwrite=true`")
    return f"start the run again with `{rerun_command(run_dir)}`"


def read_json(path: Path, what_to_do: str | None = None) -> Any:
    """The JSON file's content; DataError naming it and `what_to_do` (default: next_step) when it is not valid
    JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({reason(error)}); {what_to_do or next_step(path)}") from None


def read_yaml(path: Path, what_to_do: str | None = None) -> Any:
    """The YAML file's content (an omegaconf container); DataError naming it and `what_to_do` (default:
    next_step) when it cannot be parsed."""
    path = Path(path)
    try:
        return OmegaConf.load(path)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception as error:  # yaml's errors, omegaconf's, a decoding error
        raise DataError(f"{path} is not valid YAML ({reason(error)}); {what_to_do or next_step(path)}") from None


def weight_keys(path: Path, outside: str = "copy it again") -> list[str]:
    """The tensor names of a safetensors file, its header checked against the file's length (the tensors are not
    read); DataError naming it when it is truncated or corrupt."""
    path = Path(path)
    try:
        with safe_open(path, "pt") as weights:
            return list(weights.keys())
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for a bad header
        raise DataError(f"{path} is not a readable safetensors file ({reason(error)}); it may be truncated: "
                        f"{next_step(path, outside)}") from None


def damaged_state(path: Path, why: str) -> DataError:
    """The message for a training state that cannot be read."""
    run_dir = run_of(path)
    again = (f"start the run again with `{rerun_command(run_dir)}`" if run_dir is not None else
             "restore it from a copy, or resume from another checkpoint")
    return DataError(f"{path} is damaged ({why}): the run cannot continue from it; {again}")


def load_training_state(path: Path) -> dict:
    """A training state Lightning saved (a run's checkpoints/last.ckpt): a file, read memory-mapped, so that the
    tensors are checked for their place in the file but not read; or the directory of shards two-process FSDP
    saves, whose shards are checked against the sizes its metadata records. DataError naming it, with the next
    step, when it is truncated or corrupt."""
    path = Path(path)
    if path.is_dir():
        return _sharded_state(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # zip, pickle, EOF and mmap errors: what a cut or a bad byte looks like
        if path.stat().st_size == 0:
            raise damaged_state(path, "empty") from None
        raise damaged_state(path, reason(error)) from None
    if not isinstance(state, dict):
        raise damaged_state(path, f"it holds a {type(state).__name__}, not a training state")
    return state


def _sharded_state(path: Path) -> dict:
    """A directory checkpoint: its meta.pt loaded, every shard its metadata names there and as long as recorded."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as error:
        raise damaged_state(path, f"its metadata: {reason(error)}") from None
    for info in (metadata.storage_data or {}).values():
        shard = path / info.relative_path
        if not shard.is_file():
            raise damaged_state(path, f"{info.relative_path} is missing")
        if shard.stat().st_size < info.offset + info.length:
            raise damaged_state(path, f"{info.relative_path} is truncated")
    meta = path / "meta.pt"
    if not meta.is_file():
        return {}
    try:
        state = torch.load(meta, map_location="cpu", weights_only=False)
    except Exception as error:
        raise damaged_state(path, f"meta.pt: {reason(error)}") from None
    return state if isinstance(state, dict) else {}
