"""A task read from local files: its public schema, the split's rows, a seeded selection, images opened on access.

Whatever makes a task unusable (a missing file or column, an empty split, a GQA task without its image store)
raises DataError when the task is built, naming the task. A bad row (an empty answer, a corrupt or missing image)
is a Problem found by `LocalSplit.problems`, which reads every selected row; `fit` drops those rows before
training and `python -m cpt data check` lists them, each by its row number and id.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from cpt.data.examples import Example
from cpt.data.files import ROW_DIR, ImagesById, cap_pixels, open_image, read_split
from cpt.data.schemas import MissingImage, RowProblem, Schema
from cpt.errors import DataError

ID_COLUMNS = ("id", "question_id", "question_index", "pid")


@dataclass
class Problem:
    """Why one row (or, with row None, the whole split) cannot be used."""

    task: str
    split: str
    row: int | None
    row_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"task {self.task!r}, {self.split}"
        if self.row is not None:
            where += f" row {self.row}" + (f" (id {self.row_id!r})" if self.row_id is not None else "")
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"task": self.task, "split": self.split, "row": self.row, "id": self.row_id, "problem": self.message}


class LocalSplit(Sequence):
    """The selected rows of one split, as Examples; `rows` are the split's rows as stored, `indices` the chosen
    ones (in order)."""

    def __init__(self, task: str, split: str, rows: Sequence[dict], schema: Schema, indices: Sequence[int],
                 image_dir: Path | None = None, images_by_id: ImagesById | None = None, max_pixels: int | None = None,
                 sources: Sequence[Path] = ()):
        self.task, self.split, self.rows, self.schema = task, split, rows, schema
        self.indices = list(indices)
        self.image_dir, self.images_by_id, self.max_pixels = image_dir, images_by_id, max_pixels
        self.sources = list(sources)  # the files and directories the rows come from

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Example:
        row = self.indices[position]
        try:
            return self.load(row)
        except (RowProblem, DataError) as error:
            raise DataError(str(self.problem(row, str(error)))) from None
        except Exception as error:
            raise DataError(str(self.problem(row, f"{type(error).__name__}: {error}"))) from error

    def problem(self, row: int, message: str) -> Problem:
        return Problem(self.task, self.split, row, self.row_id(row), message)

    def row_id(self, row: int) -> str | None:
        stored = self.rows[row]
        found = next((stored[c] for c in ID_COLUMNS if stored.get(c) is not None), None)
        return None if found is None else str(found)

    def load(self, row: int) -> Example:
        stored = self.rows[row]
        example, images = self.schema.parse(stored)
        if self.schema.needs_image and not images:
            raise RowProblem(f"no image ({self.schema.title} questions are about one)")
        image_dir = self.image_dir or Path(stored.get(ROW_DIR, "."))
        opened = []
        for number, image in enumerate(images, 1):
            if isinstance(image, MissingImage):
                try:
                    image = self.images_by_id[image.image_id]
                except KeyError:
                    raise RowProblem(f"image id {image.image_id!r} is not in the image store "
                                     f"{str(self.images_by_id.path)!r}") from None
            opened.append(cap_pixels(open_image(image, image_dir, f"image {number}"), self.max_pixels))
        return replace(example, images=opened)

    def problems(self, progress: bool = False, visit: Callable[[Example], None] | None = None) -> list[Problem]:
        """Every selected row read, images decoded: the rows that cannot be used, and why. `visit` sees every
        example that can."""
        found = []
        for row in tqdm(self.indices, desc=f"Checking {self.task} ({self.split})", disable=not progress,
                        leave=False):
            try:
                example = self.load(row)
                if visit is not None:
                    visit(example)
            except (RowProblem, DataError) as error:
                found.append(self.problem(row, str(error)))
            except Exception as error:  # a row the schema did not foresee: reported, not a crash mid-check
                found.append(self.problem(row, f"{type(error).__name__}: {error}"))
        return found

    def drop(self, rows: set[int]) -> None:
        self.indices = [row for row in self.indices if row not in rows]


def select(count: int, size: int | None, seed: int, task: str, split: str) -> list[int]:
    """A seeded random subset of `size` row numbers (all rows when size is null or larger), in file order. The
    seed string gives every task and split its own draw, the same in every process."""
    if size is None or size >= count:
        return list(range(count))
    return sorted(random.Random(f"{seed}-{task}-{split}").sample(range(count), size))


def open_split(task: str, split: str, path: Path, split_name: str, schema: Schema, size: int | None, seed: int,
               image_dir: Path | None = None, images_by_id: ImagesById | None = None,
               max_pixels: int | None = None) -> LocalSplit:
    """`size` seeded rows of the split `split_name` found under `path` (a file is read whatever its name)."""
    rows, sources = _read(task, split, path, split_name, schema)
    return LocalSplit(task, split, rows, schema, select(len(rows), size, seed, task, split), image_dir,
                      images_by_id, max_pixels, sources)


def _read(task: str, role: str, path: Path, split: str, schema: Schema) -> tuple[Sequence[dict], list[Path]]:
    """The rows of `split` under `path`, for the task's `role` (train or eval); DataError if unusable."""
    try:
        rows, sources = read_split(path, None if path.is_file() else split, schema.skip_files)
    except (DataError, FileNotFoundError) as error:
        raise DataError(f"task {task!r}, {role}: {error}") from None
    where = f"task {task!r}, {role}: {str(path)!r}" + ("" if path.is_file() else f" (split {split!r})")
    if not len(rows):
        raise DataError(f"{where} has no rows")
    columns = getattr(rows, "columns", None) or [key for key in rows[0]]  # a table's, or the first row's
    for needed in schema.columns:
        if not any(name in columns for name in needed.split("|")):
            raise DataError(f"{where} lacks column {needed.replace('|', ' or ')!r}; {schema.title} rows have "
                            f"{', '.join(schema.columns)} (found: {', '.join(c for c in columns if c != ROW_DIR)})")
    return rows, sources
