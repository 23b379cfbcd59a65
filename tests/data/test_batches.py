"""Encoding and collation: image tokens, labels, and rows selected, repeated and joined with their images."""

import torch
from PIL import Image

from cpt.data.batches import IGNORE_INDEX, Batch, Collator, EncodedDataset, collate
from cpt.data.examples import Example
from cpt.data.synthetic import SyntheticSplit


def test_image_tokens_in_collated_batch(processor):
    # Images of different sizes give different token counts: 64x64 -> 8x8 patches of 8 px -> 16 merged tokens.
    examples = [Example("What?", "red", [Image.new("RGB", (64, 64), "red")]),
                Example("What?", "blue", [Image.new("RGB", (32, 48), "blue"), Image.new("RGB", (64, 64), "blue")])]
    dataset = EncodedDataset(examples, processor, "direct")
    batch = collate([dataset[0], dataset[1]], processor.pad_id)
    pad = processor.image_pad_id
    counts = (batch.input_ids == pad).sum(dim=1).tolist()
    grids = batch.image_grid_thw.tolist()
    assert grids == [[1, 8, 8], [1, 6, 4], [1, 8, 8]]  # PIL size (32, 48) is width x height: 6 x 4 patches
    assert counts == [64 // 4, (24 + 64) // 4]
    # The token types the model places image tokens by: 1 exactly on the image pads, 0 on text and padding.
    assert torch.equal(batch.mm_token_type_ids, (batch.input_ids == pad).long())
    assert batch.pixel_values.shape == (64 + 24 + 64, 3 * 2 * 8 * 8)
    assert batch.image_counts.tolist() == [1, 2]
    # Left padding: the shorter row starts with pads, masked out.
    shorter = 0 if batch.attention_mask[0].sum() < batch.attention_mask[1].sum() else 1
    assert batch.attention_mask[shorter, 0] == 0 and batch.input_ids[shorter, 0] == processor.pad_id


def test_sft_labels_cover_only_the_answer(processor):
    example = Example("Which shape is shown?", "circle", [Image.new("RGB", (64, 64))])
    item = EncodedDataset([example], processor, "direct")[0]
    labelled = [tok for tok, lab in zip(item.input_ids, item.labels) if lab != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == "\\boxed{circle}<|im_end|>"
    first = item.labels.index(labelled[0])
    assert processor.tokenizer.decode(item.input_ids[:first]).endswith("<|im_start|>assistant\n")
    prompt_only = EncodedDataset([example], processor, "direct", with_response=False)[0]
    assert prompt_only.input_ids == item.input_ids[:first]
    assert set(prompt_only.labels) == {IGNORE_INDEX}


def test_select_and_concat_keep_images_with_their_rows(processor):
    examples = SyntheticSplit("count", "eval", 3, 0, 64)
    encoded = [EncodedDataset(examples, processor, "direct", with_response=False, task=k)[i]
               for k, i in ((0, 0), (1, 1), (0, 2))]
    a, b = Collator(processor.pad_id)(encoded[:2]), Collator(processor.pad_id)(encoded[2:])
    b.input_ids, b.attention_mask = b.input_ids[:, 1:], b.attention_mask[:, 1:]  # as a shorter prompt would make
    b.labels, b.mm_token_type_ids = b.labels[:, 1:], b.mm_token_type_ids[:, 1:]
    joined = Batch.concat([a, b], processor.pad_id)
    assert joined.input_ids.shape == (3, a.input_ids.shape[1])
    assert joined.input_ids[2, 0] == processor.pad_id and joined.attention_mask[2, 0] == 0
    assert joined.mm_token_type_ids[2, 0] == 0 and torch.equal(joined.mm_token_type_ids[2, 1:], b.mm_token_type_ids[0])
    assert joined.task.tolist() == [0, 1, 0] and joined.image_counts.tolist() == [1, 1, 1]
    picked = joined.select([2, 0])
    assert torch.equal(picked.pixel_values, torch.cat([b.pixel_values, a.pixel_values[: len(b.pixel_values)]]))
    assert [e.answer for e in picked.examples] == [examples[2].answer, examples[0].answer]
    assert a.repeat(2).task.tolist() == [0, 0, 1, 1]


def test_repeated_and_sliced_rows_keep_their_images(processor):
    dataset = EncodedDataset(SyntheticSplit("count", "train", 2, 0, 64), processor, "direct", with_response=False)
    batch = Collator(processor.pad_id)([dataset[0], dataset[1]])
    patches = int(batch.image_grid_thw[0].prod())
    repeated = batch.repeat(3)
    assert repeated.input_ids.shape[0] == 6 and [e.answer for e in repeated.examples] == \
        [batch.examples[0].answer] * 3 + [batch.examples[1].answer] * 3
    assert torch.equal(repeated.pixel_values[:patches], batch.pixel_values[:patches])
    assert torch.equal(repeated.pixel_values[3 * patches:4 * patches], batch.pixel_values[patches:])
    rows = repeated.rows(2, 4)  # the last copy of row 0, the first of row 1
    assert torch.equal(rows.pixel_values, batch.pixel_values)
    assert torch.equal(rows.input_ids, batch.input_ids)


def test_completions_follow_their_prompts(processor):
    dataset = EncodedDataset(SyntheticSplit("colour", "train", 2, 0, 64), processor, "direct", with_response=False)
    prompts = Collator(processor.pad_id)([dataset[0], dataset[1]])
    ids = torch.tensor([[7, 8, 9], [10, 11, 12]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    inputs = prompts.with_completions(ids, mask)
    width = prompts.input_ids.shape[1]
    assert torch.equal(inputs.input_ids[:, width:], ids) and torch.equal(inputs.input_ids[:, :width], prompts.input_ids)
    assert inputs.attention_mask[:, width:].tolist() == [[1, 1, 0], [1, 1, 1]] and inputs.labels is None
    assert inputs.pixel_values is prompts.pixel_values
    assert set(inputs.model_inputs()) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                          "image_grid_thw"}
    # the completion is text: type 0
    assert torch.equal(inputs.mm_token_type_ids, torch.cat([prompts.mm_token_type_ids, torch.zeros_like(ids)], 1))


def test_text_only_rows_of_a_batch_with_images_carry_no_images(processor):
    """Rows picked from a mixed batch that hold no image have none, not an empty image the model would choke on."""
    items = [EncodedDataset([Example("What?", "red", [Image.new("RGB", (64, 64))]), Example("Seven plus five?", "12")],
                            processor, "direct", with_response=False)[i] for i in (0, 1)]
    batch = Collator(processor.pad_id)(items)
    text_only = batch.select([1, 1])
    assert text_only.pixel_values is None and text_only.image_grid_thw is None
    assert set(text_only.model_inputs()) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    assert text_only.mm_token_type_ids.sum() == 0 and batch.mm_token_type_ids[0].sum() == 16
