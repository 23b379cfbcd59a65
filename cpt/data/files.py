"""Rows read from local files, in whatever layout a dataset was downloaded in, with their images left undecoded.

A source is a .parquet, .arrow, .json or .jsonl file, or a `datasets` directory written by save_to_disk. A
directory holding sources is searched recursively, and a split is picked out of it by name: a file or folder with
a split name as a word of its name belongs to that split (`validation-00000-of-00001.parquet`,
`train_balanced_questions.json`, `TextVQA_0.5.1_val.json`, `train/`); the others belong to every split. `val`
and `validation` name the same split. Metadata files (`dataset_info.json`, `state.json`) are not rows.

Tables (parquet, arrow, `datasets` directories) are read through `datasets`, memory-mapped, so a large table is
not held in memory; a row is read when it is asked for. A parquet file is converted once into the `datasets`
cache ($HF_DATASETS_CACHE): a copy on disk, reused by later runs. Images stay as stored ({"bytes", "path"} dicts,
bytes or paths) until `open_image` decodes one, so that a corrupt image fails with its row's id and not inside a
reader.
"""

from __future__ import annotations

import bisect
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cpt.errors import DataError

TABLE_SUFFIXES = (".parquet", ".arrow")
ROW_SUFFIXES = (".json", ".jsonl")
SPLIT_NAMES = ("train", "dev", "val", "validation", "test", "testdev")
METADATA_FILES = ("dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json")
ROW_DIR = "__dir__"  # added to every row: the directory of its file, where relative image paths point by default


def same_split(a: str, b: str) -> bool:
    canonical = {"val": "validation"}
    return canonical.get(a, a) == canonical.get(b, b)


def split_of(name: str) -> str | None:
    """The split a file or folder name belongs to, or None when it names none: a split name as a word of it
    (test-00000-of-00001, train_balanced_questions, TextVQA_0.5.1_val)."""
    return next((word for word in re.split(r"[-_.\s]", name.lower()) if word in SPLIT_NAMES), None)


def is_datasets_dir(path: Path) -> bool:
    return (path / "state.json").exists() or (path / "dataset_dict.json").exists()


def find_sources(path: Path, split: str | None, skip: tuple[str, ...] = ()) -> list[Path]:
    """The sources under `path` that hold `split` (all of them when None), in a fixed order; files named in `skip`
    and the metadata files of `datasets` and the Hub are left out."""
    if path.is_file() or is_datasets_dir(path):
        return [path]
    found = []
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or child.name in skip or child.name in METADATA_FILES:  # e.g. the Hub's .cache
            continue
        named = split_of(child.stem if child.is_file() else child.name)
        if split is not None and named is not None and not same_split(named, split):
            continue
        if child.is_dir():
            found += find_sources(child, split, skip)
        elif child.suffix.lower() in TABLE_SUFFIXES + ROW_SUFFIXES:
            found.append(child)
    return found


class TableRows(Sequence):
    """The rows of a `datasets.Dataset`, each read on access as a plain dict, images as stored."""

    def __init__(self, dataset, directory: Path):
        self.dataset = dataset.with_format("arrow")
        self.columns = list(dataset.column_names)
        self.directory = str(directory)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index].to_pylist()[0], ROW_DIR: self.directory}


def read_source(source: Path, split: str | None = None) -> Sequence[dict]:
    """One source's rows. A `datasets` directory of several splits gives `split`'s."""
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if source.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            match = [name for name in loaded if split is not None and same_split(name, split)]
            if not match:
                wanted = "" if split is None else f" but not {split!r}"
                raise DataError(f"{source} holds the splits {', '.join(loaded)}{wanted}; point to the directory of "
                                "the split you want")
            loaded = loaded[match[0]]
        return TableRows(loaded, source)
    suffix = source.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return TableRows(_load_table(source), source.parent)
    if suffix in ROW_SUFFIXES:
        rows = _read_jsonl(source) if suffix == ".jsonl" else _read_json(source)
        return [{**row, ROW_DIR: str(source.parent)} for row in rows]
    raise DataError(f"{source}: unsupported file type {suffix!r}; use .parquet, .arrow, .json, .jsonl or a "
                    "datasets directory")


def read_split(path: Path, split: str | None = None, skip: tuple[str, ...] = ()) -> tuple[Sequence[dict], list[Path]]:
    """Every row of `split` under `path` (a source or a directory of them), in a fixed order, and the sources they
    come from."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    sources = find_sources(path, split, skip)
    if not sources:
        raise DataError(f"{path} holds no {split or ''} data: no .parquet, .arrow, .json or .jsonl file, nor a "
                        "datasets directory" + (" (files named for another split are skipped)" if split else ""))
    parts = [read_source(source, split) for source in sources]
    return (parts[0] if len(parts) == 1 else ConcatRows(parts)), sources


class ConcatRows(Sequence):
    def __init__(self, parts: list[Sequence[dict]]):
        self.parts = parts
        self.starts = [0]
        for part in parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = bisect.bisect_right(self.starts, index) - 1
        return self.parts[part][index - self.starts[part]]


def _load_table(source: Path):
    import datasets
    import pyarrow

    try:
        if source.suffix.lower() == ".arrow":
            return datasets.Dataset.from_file(str(source))
        return datasets.Dataset.from_parquet(str(source))
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise DataError(f"{source}: not a readable {source.suffix} table ({str(error).splitlines()[0]})") from None


def _read_jsonl(source: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(source.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{source}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{source}:{number}: a row must be a JSON object, not {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(source: Path) -> list[dict]:
    """A list of rows; CLEVR's {"questions": [...]} or TextVQA's {"data": [...]}; GQA's {question id: row} (the
    key becomes `id`); or one row (a dict of values, as InterGPS keeps one problem per folder)."""
    try:
        loaded = json.loads(source.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{source}: not valid JSON ({error.msg} at line {error.lineno})") from None
    listed = [key for key in ("questions", "data") if isinstance(loaded, dict) and isinstance(loaded.get(key), list)]
    if listed:
        loaded = loaded[listed[0]]
    elif isinstance(loaded, dict) and loaded and all(isinstance(v, dict) for v in loaded.values()):
        loaded = [{"id": key, **row} for key, row in loaded.items()]
    elif isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list) or not all(isinstance(row, dict) for row in loaded):
        raise DataError(f"{source}: expected a JSON list of rows (or {{\"questions\": [...]}}, or rows keyed by id)")
    return loaded


def open_image(value, image_dir: Path, where: str) -> Image.Image:
    """An RGB image from a PIL image, a {"bytes", "path"} dict, bytes, or a path (relative to `image_dir`)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):  # datasets' Image feature
        value = value.get("bytes") or value.get("path")
    if not value:
        raise DataError(f"{where}: no image (empty value)")
    stored = isinstance(value, (bytes, bytearray))
    shown = f"of {len(value)} bytes" if stored else repr(str(value)[:120])
    try:
        if stored:
            return Image.open(io.BytesIO(value)).convert("RGB")
        path = Path(value)
        return Image.open(path if path.is_absolute() else image_dir / path).convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where}: image {shown} not found under {str(image_dir)!r}") from None
    except (UnidentifiedImageError, OSError) as error:
        reason = "not a readable image file" if isinstance(error, UnidentifiedImageError) else str(error)
        raise DataError(f"{where}: cannot read image {shown}: {reason}") from None


def cap_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """The image scaled down (aspect kept) to at most `max_pixels` pixels; unchanged when it is smaller."""
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ImagesById:
    """Images looked up by id, for datasets that keep them apart from the questions (GQA): a directory of files
    named `<id>.jpg` (or another image suffix), or tables with `id` and `image` columns found under `path` (the
    Hub's `*_images` folders; tables without both columns, such as the questions' own, are passed over)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"image store {str(self.path)!r} does not exist")
        self.tables, self.index = [], {}
        for source in find_sources(self.path, None) if self.path.is_dir() else [self.path]:
            if source.suffix.lower() in ROW_SUFFIXES or not _parquet_may_have(source, ("id", "image")):
                continue
            rows = read_source(source)
            if not all(column in rows.columns for column in ("id", "image")):
                continue
            table = len(self.tables)
            self.tables.append(rows)
            for row, image_id in enumerate(rows.dataset.data.column("id").to_pylist()):
                self.index[str(image_id)] = (table, row)

    def __getitem__(self, image_id: str):
        """The stored image (a {"bytes", "path"} dict or a path); KeyError when there is none."""
        if self.tables:
            table, row = self.index[str(image_id)]
            return self.tables[table].dataset[row].to_pylist()[0]["image"]
        for suffix in IMAGE_SUFFIXES:
            candidate = self.path / f"{image_id}{suffix}"
            if candidate.exists():
                return str(candidate)
        raise KeyError(image_id)


def _parquet_may_have(source: Path, columns: tuple[str, ...]) -> bool:
    """False for a parquet file whose schema lacks one of the columns (so it is not converted for nothing);
    True for anything else, which is checked once read."""
    if source.suffix.lower() != ".parquet":
        return True
    import pyarrow.parquet

    return all(c in pyarrow.parquet.read_schema(source).names for c in columns)
