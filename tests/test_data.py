import io
import json

import pytest
import torch
from PIL import Image

from cpt.adapters import SCHEMAS
from cpt.data import IGNORE_INDEX, EncodedDataset, SyntheticSplit, collate
from cpt.examples import Example
from cpt.local_data import open_split
from cpt.synthetic import ANSWER_SPACES, TASKS, make_example
from cpt.tables import DataError
from cpt.tokenizer import IMAGE_PAD


def test_synthetic_is_deterministic_and_answers_in_space():
    for name in TASKS:
        for index in range(20):
            a = make_example(name, "train", index, seed=5, image_size=64)
            b = make_example(name, "train", index, seed=5, image_size=64)
            assert a.answer == b.answer and a.question == b.question
            assert a.images[0].tobytes() == b.images[0].tobytes()
            assert a.answer in ANSWER_SPACES[name]
    answers = [make_example("count", "train", i, seed=s, image_size=64).answer for s in (1, 2) for i in range(30)]
    assert answers[:30] != answers[30:]  # another seed, another dataset
    assert make_example("count", "train", 0, 1, 64).images[0].tobytes() != make_example("count", "eval", 0, 1, 64).images[0].tobytes()


def test_general_is_multiple_choice():
    example = make_example("general", "eval", 3, seed=0, image_size=64)
    assert example.choices and example.answer in "ABCD"[: len(example.choices)]


def test_image_tokens_in_collated_batch(processor):
    # Images of different sizes give different token counts: 64x64 -> 8x8 patches of 8 px -> 16 merged tokens.
    examples = [Example("What?", "red", [Image.new("RGB", (64, 64), "red")]),
                Example("What?", "blue", [Image.new("RGB", (32, 48), "blue"), Image.new("RGB", (64, 64), "blue")])]
    dataset = EncodedDataset(examples, processor, "direct")
    batch = collate([dataset[0], dataset[1]], processor.pad_id)
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    counts = (batch["input_ids"] == pad).sum(dim=1).tolist()
    grids = batch["image_grid_thw"].tolist()
    assert grids == [[1, 8, 8], [1, 6, 4], [1, 8, 8]]  # PIL size (32, 48) is width x height: 6 x 4 patches
    assert counts == [64 // 4, (24 + 64) // 4]
    assert batch["pixel_values"].shape == (64 + 24 + 64, 3 * 2 * 8 * 8)
    # Left padding: the shorter row starts with pads, masked out.
    shorter = 0 if batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum() else 1
    assert batch["attention_mask"][shorter, 0] == 0 and batch["input_ids"][shorter, 0] == processor.pad_id


def test_sft_labels_cover_only_the_answer(processor):
    example = Example("Which shape is shown?", "circle", [Image.new("RGB", (64, 64))])
    item = EncodedDataset([example], processor, "direct")[0]
    labelled = [tok for tok, lab in zip(item["input_ids"], item["labels"]) if lab != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == "\\boxed{circle}<|im_end|>"
    first = item["labels"].index(labelled[0])
    assert processor.tokenizer.decode(item["input_ids"][:first]).endswith("<|im_start|>assistant\n")
    prompt_only = EncodedDataset([example], processor, "direct", with_response=False)[0]
    assert prompt_only["input_ids"] == item["input_ids"][:first]
    assert set(prompt_only["labels"]) == {IGNORE_INDEX}


def test_sft_loss_matches_hand_computed_cross_entropy(processor):
    from cpt.sft import sft_loss

    vocab = len(processor.tokenizer)
    # A 1-row batch, 4 tokens, only the last two labelled.
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8]])}
    logits = torch.zeros(1, 4, vocab)
    logits[0, 1, 7] = 2.0  # position 1 predicts token 7
    logits[0, 2, 8] = 1.0  # position 2 predicts token 8

    class Fixed(torch.nn.Module):
        def forward(self, **inputs):
            return type("Out", (), {"logits": logits})()

    expected = -(torch.log_softmax(logits[0, 1], -1)[7] + torch.log_softmax(logits[0, 2], -1)[8]) / 2
    assert sft_loss(Fixed(), batch).item() == pytest.approx(expected.item(), rel=1e-6)


def _png_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def easyr1_rows(path):
    return open_split("mine", "train", path, "train", SCHEMAS["easyr1"], size=None, seed=0)


def test_easyr1_rows_from_json_jsonl_parquet_and_datasets_dir(tmp_path):
    import datasets

    Image.new("RGB", (20, 20), "green").save(tmp_path / "g.png")
    rows = [{"problem": "<image>What colour?", "answer": "green", "images": ["g.png"]},
            {"problem": "Pick one", "answer": "B", "images": [], "choices": ["x", "y"]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with_bytes = [{"problem": "What colour?", "answer": "red", "images": [_png_bytes("red")]}]
    datasets.Dataset.from_list(with_bytes).to_parquet(str(tmp_path / "rows.parquet"))
    datasets.Dataset.from_list(with_bytes).save_to_disk(str(tmp_path / "ds"))
    for name in ("rows.json", "rows.jsonl"):
        split = easyr1_rows(tmp_path / name)
        assert len(split) == 2
        first, second = split[0], split[1]
        assert first.question == "What colour?" and first.answer == "green"
        assert first.images[0].getpixel((0, 0)) == (0, 128, 0)
        assert second.choices == ["x", "y"] and second.images == []
    for name in ("rows.parquet", "ds"):
        example = easyr1_rows(tmp_path / name)[0]
        assert example.answer == "red" and example.images[0].getpixel((3, 3)) == (255, 0, 0)


def test_bad_local_data_is_reported(tmp_path):
    with pytest.raises(DataError, match="task 'mine', train: .*nope.jsonl does not exist"):
        easyr1_rows(tmp_path / "nope.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"problem": "a", "answer": "b"}\n{not json\n')
    with pytest.raises(DataError, match="broken.jsonl:2: not valid JSON"):
        easyr1_rows(tmp_path / "broken.jsonl")
    (tmp_path / "noanswer.json").write_text(json.dumps([{"problem": "a"}]))
    with pytest.raises(DataError, match="task 'mine', train: .*noanswer.json' lacks column 'answer'; EasyR1 rows have "
                                        "problem, answer"):
        easyr1_rows(tmp_path / "noanswer.json")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.json").write_text(json.dumps([{"problem": "a", "answer": "b", "images": ["corrupt.png"]}]))
    split = easyr1_rows(tmp_path / "corrupt.json")
    with pytest.raises(DataError, match="task 'mine', train row 0: .*cannot read image 'corrupt.png'"):
        split[0]


def test_synthetic_split_bounds():
    split = SyntheticSplit("colour", "eval", 3, 0, 64)
    assert len(split) == 3 and split[2].answer
    with pytest.raises(IndexError):
        split[3]
