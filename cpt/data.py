"""From examples to batches: lazy synthetic data, encoding and collation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from cpt.examples import Example
from cpt.processor import VisionTextProcessor
from cpt.prompts import render_prompt, render_response
from cpt.synthetic import make_example

IGNORE_INDEX = -100  # label value the cross-entropy skips


class SyntheticSplit(Sequence):
    """`size` examples of a synthetic task, each generated on access from (seed, task, split, index)."""

    def __init__(self, name: str, split: str, size: int, seed: int, image_size: int):
        self.name, self.split, self.size, self.seed, self.image_size = name, split, size, seed, image_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return make_example(self.name, self.split, index, self.seed, self.image_size)


class MixedSplit(Sequence):
    """Several splits interleaved by a seeded permutation of all their indices."""

    def __init__(self, parts: Sequence[Sequence[Example]], seed: int):
        self.index = [(p, i) for p, part in enumerate(parts) for i in range(len(part))]
        order = torch.randperm(len(self.index), generator=torch.Generator().manual_seed(seed)).tolist()
        self.index = [self.index[k] for k in order]
        self.parts = parts

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Example:
        part, i = self.index[index]
        return self.parts[part][i]


class EncodedDataset(Dataset):
    """Examples as token ids and pixel patches; with answers as labels when `with_response` (for SFT).

    Every item carries its position in `examples` (`index`) and the index of the task it belongs to (`task`), so
    that a batch mixing tasks is still scored by each row's own task.
    """

    def __init__(self, examples: Sequence[Example], processor: VisionTextProcessor, template: str,
                 with_response: bool = True, task: int = 0):
        self.examples, self.processor, self.template, self.with_response = examples, processor, template, with_response
        self.task = task

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.encode(self.examples[index], index)

    def encode(self, example: Example, index: int) -> dict:
        prompt = self.processor.encode_prompt(render_prompt(self.template, example), example.images)
        item = {"index": index, "task": self.task, "example": example, "input_ids": prompt.input_ids,
                "labels": [IGNORE_INDEX] * len(prompt.input_ids), "pixel_values": prompt.pixel_values,
                "image_grid_thw": prompt.image_grid_thw}
        if self.with_response:
            response = self.processor.encode_response(render_response(self.template, example))
            item["input_ids"] = prompt.input_ids + response
            item["labels"] = item["labels"] + response
        return item


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to the longest sequence (so generation continues every row at the end) and stack patches."""
    width = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, width - n:] = torch.tensor(item["input_ids"])
        labels[row, width - n:] = torch.tensor(item["labels"])
        attention_mask[row, width - n:] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "index": torch.tensor([item["index"] for item in items]), "task": torch.tensor([item["task"] for item in items]),
             "examples": [item["example"] for item in items]}
    batch["image_counts"] = torch.tensor([0 if item["image_grid_thw"] is None else len(item["image_grid_thw"])
                                          for item in items])
    pixels = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
        batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in items if item["image_grid_thw"] is not None])
    return batch


def row_images(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's (image_grid_thw, pixel_values) pieces of a collated batch with images."""
    grids = batch["image_grid_thw"].split(batch["image_counts"].tolist())
    return list(zip(grids, batch["pixel_values"].split([int(g.prod(-1).sum()) for g in grids])))


def _put_images(out: dict, images: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    out["image_grid_thw"] = torch.cat([grid for grid, _ in images])
    out["pixel_values"] = torch.cat([patches for _, patches in images])
    return out


ROW_TENSORS = ("input_ids", "attention_mask", "labels", "index", "task", "image_counts")


def select_rows(batch: dict, rows: Sequence[int]) -> dict:
    """The given rows of a collated batch (in that order, repeats allowed), their image patches with them."""
    index = torch.tensor(list(rows), dtype=torch.long)
    out = {k: batch[k][index.to(batch[k].device)] for k in ROW_TENSORS if k in batch}
    if "examples" in batch:
        out["examples"] = [batch["examples"][r] for r in rows]
    if "pixel_values" in batch:
        pieces = row_images(batch)
        _put_images(out, [pieces[r] for r in rows])
    return out


def repeat_rows(batch: dict, times: int) -> dict:
    """Every row `times` times in a row (row 0, row 0, ..., row 1, ...)."""
    return select_rows(batch, [r for r in range(len(batch["input_ids"])) for _ in range(times)])


def slice_rows(batch: dict, start: int, stop: int) -> dict:
    """Rows start..stop-1 of a collated batch."""
    return select_rows(batch, range(start, min(stop, len(batch["input_ids"]))))


def concat_rows(batches: Sequence[dict], pad_id: int) -> dict:
    """Collated batches as one, re-padded on the left to the widest."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key in ROW_TENSORS:
        if key in batches[0]:
            parts = [b[key] for b in batches]
            if key in fill:
                parts = [torch.nn.functional.pad(p, (width - p.shape[1], 0), value=fill[key]) for p in parts]
            out[key] = torch.cat(parts)
    if "examples" in batches[0]:
        out["examples"] = [example for b in batches for example in b["examples"]]
    pieces = [piece for b in batches if "pixel_values" in b for piece in row_images(b)]
    if pieces:
        _put_images(out, pieces)
    return out


MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")


def model_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """What the backbone takes from a batch: ids, mask, pixels; not our bookkeeping (labels, index, examples)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Collator:
    """Picklable collate_fn for DataLoader workers."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)
