"""Local tasks: rows of any layout read through a schema; what cannot be read is reported by row."""

import io
import json

import pytest
from PIL import Image

from cpt.data.local_tasks import open_split
from cpt.data.schemas import SCHEMAS
from cpt.errors import DataError


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
