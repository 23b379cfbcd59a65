"""Files a run writes appear whole or not at all. Each is written beside its place and then renamed into it, so that
a run stopped mid-write (a crash, a kill, a full disk) leaves the previous version, never part of the new one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_path(path: Path) -> Path:
    """Where the new version of `path` is written before it takes its place."""
    return path.with_name(path.name + ".saving")


def previous_path(path: Path) -> Path:
    """Where the old version of a directory waits while the new one is renamed into place."""
    return path.with_name(path.name + ".old")


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def swap_in(staging: Path, path: Path) -> None:
    """`staging` (complete) takes the place of `path`. A file in one atomic rename; a directory in two, the old one
    moved aside first and removed last, so that at every moment the old or the new version exists."""
    if not (staging.is_dir() or path.is_dir()):
        staging.replace(path)
        return
    old = previous_path(path)
    remove(old)
    if path.exists():
        path.rename(old)
    staging.rename(path)
    remove(old)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A path beside `path` to write a file or a directory to; when the block ends without an error it takes
    `path`'s place (an error leaves `path` as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    remove(staging)
    try:
        yield staging
    except BaseException:
        remove(staging)
        raise
    swap_in(staging, path)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as staging:
        staging.write_text(text)


def write_json(path: Path, content: dict) -> None:
    write_text(path, json.dumps(content, indent=2))
