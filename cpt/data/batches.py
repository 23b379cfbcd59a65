"""From examples to batches: a prompt (and, for SFT, its answer) encoded as token ids and pixel patches, and rows
collated into a `Batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from cpt.data.examples import Example
from cpt.data.prompts import render_prompt, render_response

if TYPE_CHECKING:  # the processor belongs to the model floor above; data only receives one
    from cpt.model.processor import VisionTextProcessor

IGNORE_INDEX = -100  # label value the cross-entropy skips


@dataclass
class EncodedExample:
    """One example as the model reads it, before collation."""

    index: int  # position in the split it came from
    task: int  # index of the task it belongs to
    example: Example
    input_ids: list[int]  # the prompt, followed by the answer when encoded with one
    labels: list[int]  # IGNORE_INDEX on the prompt, the answer's ids after it
    mm_token_type_ids: list[int]  # per token: 0 text, 1 image, 2 video
    pixel_values: torch.Tensor | None  # (patches, channels * temporal_patch * patch * patch)
    image_grid_thw: torch.Tensor | None  # (images, 3)


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

    def __getitem__(self, index: int) -> EncodedExample:
        return self.encode(self.examples[index], index)

    def encode(self, example: Example, index: int) -> EncodedExample:
        prompt = self.processor.encode_prompt(render_prompt(self.template, example), example.images)
        item = EncodedExample(index, self.task, example, prompt.input_ids, [IGNORE_INDEX] * len(prompt.input_ids),
                              prompt.mm_token_type_ids, prompt.pixel_values, prompt.image_grid_thw)
        if self.with_response:
            response = self.processor.encode_response(render_response(self.template, example))
            item.input_ids = prompt.input_ids + response
            item.labels = item.labels + response
            item.mm_token_type_ids = item.mm_token_type_ids + [0] * len(response)
        return item


# Fields with one entry per row, indexed together when rows are selected.
ROW_FIELDS = ("input_ids", "attention_mask", "labels", "index", "task", "image_counts", "mm_token_type_ids")
# Padded on the left to a common width, with these values, when batches are joined.
PADDING = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX,  # None: the processor's pad id
           "mm_token_type_ids": 0}


@dataclass
class Batch:
    """Rows left-padded to one width (so generation continues every row at the end), with their images.

    The image patches of all rows are concatenated in row order: row r's images are the `image_counts[r]`
    entries of `image_grid_thw` after those of the rows before it, and their patches likewise in `pixel_values`.
    The token types tell the model which tokens are image tokens, from which it places them by its own M-RoPE
    positions (cpt.model.positions); the model refuses images that come without them.
    """

    input_ids: torch.Tensor  # (rows, width)
    attention_mask: torch.Tensor  # (rows, width), 0 on the left padding
    labels: torch.Tensor | None  # (rows, width): the answer's ids, IGNORE_INDEX elsewhere; None when not built
    index: torch.Tensor  # (rows,) each row's position in its split
    task: torch.Tensor  # (rows,) the index of the task each row belongs to
    image_counts: torch.Tensor  # (rows,) images per row
    examples: list[Example]
    pixel_values: torch.Tensor | None = None  # (patches, patch features) of every image
    image_grid_thw: torch.Tensor | None = None  # (images, 3)
    mm_token_type_ids: torch.Tensor | None = None  # (rows, width): 0 text (and padding), 1 image, 2 video

    def __len__(self) -> int:
        return len(self.input_ids)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What the backbone takes: ids, mask, token types, pixels; not our bookkeeping (labels, index,
        examples)."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.mm_token_type_ids is not None:
            inputs["mm_token_type_ids"] = self.mm_token_type_ids
        if self.pixel_values is not None:
            inputs.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return inputs

    def to(self, device: torch.device | str) -> Batch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{name: value.to(device) for name, value in values.items()
                                if isinstance(value, torch.Tensor)})

    def row_images(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each row's (image_grid_thw, pixel_values) pieces."""
        grids = self.image_grid_thw.split(self.image_counts.tolist())
        return list(zip(grids, self.pixel_values.split([int(g.prod(-1).sum()) for g in grids])))

    def select(self, rows: Sequence[int]) -> Batch:
        """The given rows (in that order, repeats allowed), their image patches with them."""
        index = torch.tensor(list(rows), dtype=torch.long)
        picked = {name: None if (value := getattr(self, name)) is None else value[index.to(value.device)]
                  for name in ROW_FIELDS}
        batch = Batch(**picked, examples=[self.examples[r] for r in rows])
        if self.pixel_values is not None:
            pieces = self.row_images()
            batch._put_images([pieces[r] for r in rows])
        return batch

    def repeat(self, times: int) -> Batch:
        """Every row `times` times in a row (row 0, row 0, ..., row 1, ...)."""
        return self.select([r for r in range(len(self)) for _ in range(times)])

    def rows(self, start: int, stop: int) -> Batch:
        """Rows start..stop-1."""
        return self.select(range(start, min(stop, len(self))))

    @staticmethod
    def concat(batches: Sequence[Batch], pad_id: int) -> Batch:
        """Batches as one, re-padded on the left to the widest."""
        width = max(b.input_ids.shape[1] for b in batches)
        joined = {}
        for name in ROW_FIELDS:
            parts = [getattr(b, name) for b in batches]
            if parts[0] is None:
                joined[name] = None
                continue
            if name in PADDING:
                fill = pad_id if PADDING[name] is None else PADDING[name]
                parts = [F.pad(p, (width - p.shape[1], 0), value=fill) for p in parts]
            joined[name] = torch.cat(parts)
        batch = Batch(**joined, examples=[example for b in batches for example in b.examples])
        pieces = [piece for b in batches if b.pixel_values is not None for piece in b.row_images()]
        if pieces:
            batch._put_images(pieces)
        return batch

    def with_completions(self, ids: torch.Tensor, mask: torch.Tensor) -> Batch:
        """The prompts followed by completions `ids`, attending to the completion tokens where `mask` is set
        (no labels: these are inputs for log-probabilities)."""
        types = self.mm_token_type_ids
        return replace(self, input_ids=torch.cat([self.input_ids, ids], 1),
                       attention_mask=torch.cat([self.attention_mask, mask.long()], 1), labels=None,
                       mm_token_type_ids=None if types is None else torch.cat([types, torch.zeros_like(ids)], 1))

    def _put_images(self, images: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Rows' images, in row order; none at all (text-only rows) as no images, which the model takes."""
        if sum(len(grid) for grid, _ in images) == 0:
            self.image_grid_thw = self.pixel_values = None
            return
        self.image_grid_thw = torch.cat([grid for grid, _ in images])
        self.pixel_values = torch.cat([patches for _, patches in images])


def collate(items: list[EncodedExample], pad_id: int) -> Batch:
    """Left-pad to the longest sequence and stack the image patches."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    types = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, width - n:] = torch.tensor(item.input_ids)
        labels[row, width - n:] = torch.tensor(item.labels)
        attention_mask[row, width - n:] = 1
        types[row, width - n:] = torch.tensor(item.mm_token_type_ids)
    batch = Batch(input_ids, attention_mask, labels, index=torch.tensor([item.index for item in items]),
                  task=torch.tensor([item.task for item in items]),
                  image_counts=torch.tensor([0 if item.image_grid_thw is None else len(item.image_grid_thw)
                                             for item in items]),
                  examples=[item.example for item in items], mm_token_type_ids=types)
    pixels = [item.pixel_values for item in items if item.pixel_values is not None]
    if pixels:
        batch.pixel_values = torch.cat(pixels)
        batch.image_grid_thw = torch.cat([item.image_grid_thw for item in items if item.image_grid_thw is not None])
    return batch


class Collator:
    """Picklable collate_fn for DataLoader workers."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[EncodedExample]) -> Batch:
        return collate(items, self.pad_id)
