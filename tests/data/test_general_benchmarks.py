import io
import json
import logging
import re

import datasets
import pyarrow
import pyarrow.parquet
import pytest
from PIL import Image

from cpt.data.general_benchmarks import BENCHMARK_FORMATS, load_benchmark
from cpt.data.prompts import render_prompt

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def png(colour, size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def mmmu_row(id, question, options, answer, images=(), question_type="multiple-choice"):
    """A row in MMMU's schema; images as the Hub stores them, {"bytes": ..., "path": ...}."""
    row = {"id": id, "question": question, "options": options, "answer": answer, "question_type": question_type,
           "explanation": "", "img_type": "['Diagrams']", "topic_difficulty": "Easy", "subfield": "Misc"}
    for k in range(1, 8):
        row[f"image_{k}"] = {"bytes": png(images[k - 1]), "path": None} if k <= len(images) else None
    return row


MMMU_FEATURES = datasets.Features({
    **{c: datasets.Value("string") for c in ("id", "question", "options", "answer", "question_type", "explanation",
                                             "img_type", "topic_difficulty", "subfield")},
    **{f"image_{k}": datasets.Image() for k in range(1, 8)},
})


def write_hub_parquet(path, rows):
    """As the Hub's files are: written by `datasets`, images typed as Image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=MMMU_FEATURES).to_parquet(str(path))


def write_plain_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)


@pytest.fixture
def mmmu_dir(tmp_path):
    """MMMU as downloaded: one directory per subject, a file per split."""
    root = tmp_path / "MMMU"
    art = root / "Art_Theory"
    write_hub_parquet(art / "validation-00000-of-00001.parquet", [
        mmmu_row("validation_Art_Theory_1", "Who painted <image 1>?", "['Monet', 'Manet', \"O'Keeffe\"]", "C", [RED]),
        mmmu_row("validation_Art_Theory_2", "How many figures are in <image 1> and <image 2>?", "[]", "12",
                 [GREEN, BLUE], question_type="open"),
    ])
    write_hub_parquet(art / "dev-00000-of-00001.parquet", [mmmu_row("dev_Art_Theory_1", "Dev?", "['x', 'y']", "A")])
    write_hub_parquet(art / "test-00000-of-00001.parquet",
                      [mmmu_row("test_Art_Theory_1", "Hidden?", "['x', 'y']", "?")])
    write_plain_parquet(root / "Math" / "validation-00000-of-00001.parquet", [
        mmmu_row("validation_Math_1", "Which graph matches <image 1>?", "['<image 2>', '<image 3>']", "B",
                 [WHITE, RED, GREEN]),
        mmmu_row("validation_Math_2", "What is the slope in <image 1>?", "[]", "['0.5', '1/2']", [BLUE],
                 question_type="open"),
    ])
    return root


def mmlu_pro_row(question_id, question, options, answer_index, category, answer=None):
    return {"question_id": question_id, "question": question, "options": options,
            "answer": answer or "ABCDEFGHIJ"[answer_index], "answer_index": answer_index,
            "cot_content": "", "category": category, "src": "ori_mmlu-test"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def mmlu_pro_file(tmp_path):
    return write_jsonl(tmp_path / "mmlu_pro.jsonl", [
        mmlu_pro_row(70, "2 + 2 = ?", ["3", "4", "5", "6"] + ["N/A"] * 6, 1, "math"),
        mmlu_pro_row(71, "Which is a tort?", ["w", "N/A", "x", "y"], 2, "law"),  # padding inside: letters move
        mmlu_pro_row(72, "Pick the last.", [f"o{i}" for i in range(10)], 9, "other"),
    ])


def test_mmmu_subject_directory(mmmu_dir, caplog):
    with caplog.at_level(logging.INFO, logger="cpt.data.general_benchmarks"):
        task = load_benchmark("mmmu", "mmmu", mmmu_dir)
    assert f"mmmu: 4 questions in 2 categories from {mmmu_dir}, 2 of them open" in caplog.text
    # dev and test files are skipped: 2 validation questions per subject, files in path order.
    assert task.name == "mmmu" and len(task.eval) == 4 and list(task.train) == []
    assert task.categories == ["Art_Theory", "Art_Theory", "Math", "Math"]
    painted, figures, graph, slope = (task.eval[i] for i in range(4))
    assert painted.question == "Who painted [image 1]?"
    assert painted.choices == ["Monet", "Manet", "O'Keeffe"] and painted.answer == "C"
    assert figures.question == "How many figures are in [image 1] and [image 2]?"
    assert figures.choices is None and figures.answer == "12" and figures.aliases == []
    assert graph.choices == ["[image 2]", "[image 3]"] and graph.answer == "B"
    assert slope.answer == "0.5" and slope.aliases == ["1/2"]
    assert [len(e.images) for e in (painted, figures, graph, slope)] == [1, 2, 3, 1]
    assert [im.getpixel((0, 0)) for im in graph.images] == [WHITE, RED, GREEN]  # image_1..image_3 in order
    assert figures.images[1].size == (8, 6) and figures.images[1].mode == "RGB"
    assert render_prompt("direct", painted).startswith("Who painted [image 1]?\nA. Monet\nB. Manet\nC. O'Keeffe\n")


def test_mmmu_scorer_letters_and_open_answers(mmmu_dir):
    task = load_benchmark("mmmu", "mmmu", mmmu_dir)
    painted, figures, _, slope = (task.eval[i] for i in range(4))
    assert task.scorer("\\boxed{C}", painted) == 1.0
    assert task.scorer("\\boxed{A}", painted) == 0.0
    assert task.scorer("\\boxed{O'Keeffe}", painted) == 1.0
    assert task.scorer("\\boxed{12}", figures) == 1.0 and task.scorer("\\boxed{12.0}", figures) == 1.0
    assert task.scorer("\\boxed{13}", figures) == 0.0
    assert task.scorer("\\boxed{1/2}", slope) == 1.0 and task.scorer("\\boxed{0.5}", slope) == 1.0
    assert task.scorer("\\boxed{0.6}", slope) == 0.0


def test_mmmu_single_file_datasets_dirs_and_image_dir(mmmu_dir, tmp_path):
    single = load_benchmark("m", "mmmu", mmmu_dir / "Math" / "validation-00000-of-00001.parquet")
    assert single.categories == ["Math", "Math"] and single.eval[0].answer == "B"
    # save_to_disk of every split: the validation split is read.
    rows = pyarrow.parquet.read_table(mmmu_dir / "Math" / "validation-00000-of-00001.parquet").to_pylist()
    splits = datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows[:1], features=MMMU_FEATURES),
                                   "validation": datasets.Dataset.from_list(rows, features=MMMU_FEATURES)})
    splits.save_to_disk(str(tmp_path / "saved"))
    saved = load_benchmark("m", "mmmu", tmp_path / "saved")
    assert [e.question for e in saved.eval] == [e.question for e in single.eval]
    assert [len(e.images) for e in saved.eval] == [3, 1]
    # A directory of a saved split beside a .json file whose image paths are relative.
    mixed = tmp_path / "mixed"
    datasets.Dataset.from_list(rows[:1], features=MMMU_FEATURES).save_to_disk(str(mixed / "Math"))
    (mixed / "pictures").mkdir()
    (mixed / "pictures" / "blue.png").write_bytes(png(BLUE))
    json_row = {**mmmu_row("validation_Music_4", "Which clef?", "['treble', 'bass']", "A"),
                "image_1": "pictures/blue.png"}
    (mixed / "music.json").write_text(json.dumps([json_row]))
    task = load_benchmark("m", "mmmu", mixed)
    assert task.categories == ["Math", "Music"]
    assert task.eval[1].images[0].getpixel((0, 0)) == BLUE
    # image_dir points elsewhere: relative paths resolve there.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pictures").mkdir()
    (tmp_path / "other" / "pictures" / "blue.png").write_bytes(png(GREEN))
    elsewhere = load_benchmark("m", "mmmu", mixed / "music.json", image_dir=tmp_path / "other")
    assert elsewhere.eval[0].images[0].getpixel((0, 0)) == GREEN


def test_mmlu_pro_drops_padding_and_keeps_letters(mmlu_pro_file):
    task = load_benchmark("mmlu_pro", "mmlu_pro", mmlu_pro_file)
    assert task.categories == ["math", "law", "other"]
    arithmetic, tort, last = (task.eval[i] for i in range(3))
    assert arithmetic.question == "2 + 2 = ?" and arithmetic.choices == ["3", "4", "5", "6"]
    assert arithmetic.answer == "B" and arithmetic.images == []
    assert tort.choices == ["w", "x", "y"] and tort.answer == "B"  # "x" was C before "N/A" was dropped
    assert len(last.choices) == 10 and last.answer == "J"
    assert task.scorer("\\boxed{B}", arithmetic) == 1.0
    assert task.scorer("\\boxed{4}", arithmetic) == 1.0
    assert task.scorer("\\boxed{A}", arithmetic) == 0.0
    assert task.scorer("\\boxed{B}", tort) == 1.0 and task.scorer("\\boxed{C}", tort) == 0.0


def test_mmlu_pro_hub_directory_reads_the_test_split(tmp_path):
    data = tmp_path / "MMLU-Pro" / "data"
    data.mkdir(parents=True)
    write_plain_parquet(data / "test-00000-of-00001.parquet", [mmlu_pro_row(1, "Test?", ["a", "b"], 0, "law")])
    write_plain_parquet(data / "validation-00000-of-00001.parquet", [mmlu_pro_row(2, "Shot?", ["a", "b"], 1, "law")])
    task = load_benchmark("p", "mmlu_pro", tmp_path / "MMLU-Pro")
    assert [e.question for e in task.eval] == ["Test?"]


def test_limit_is_a_seeded_subset(tmp_path):
    rows = [mmlu_pro_row(i, f"q{i}", ["a", "b", "c"], i % 3, f"c{i % 4}") for i in range(30)]
    path = write_jsonl(tmp_path / "many.jsonl", rows)

    def questions(task):
        return [e.question for e in task.eval]

    first = load_benchmark("p", "mmlu_pro", path, limit=10, seed=3)
    again = load_benchmark("p", "mmlu_pro", path, limit=10, seed=3)
    other = load_benchmark("p", "mmlu_pro", path, limit=10, seed=4)
    assert questions(first) == questions(again) and len(first.eval) == 10
    assert questions(first) != questions(other)
    picked = [int(q[1:]) for q in questions(first)]
    assert picked == sorted(picked) and len(set(picked)) == 10  # file order, no repeats
    assert first.categories == [f"c{i % 4}" for i in picked]
    assert [e.answer for e in first.eval] == ["ABC"[i % 3] for i in picked]
    assert questions(load_benchmark("p", "mmlu_pro", path, limit=100)) == [f"q{i}" for i in range(30)]
    with pytest.raises(ValueError, match="limit must be a positive number"):
        load_benchmark("p", "mmlu_pro", path, limit=0)


def test_corrupt_image_names_file_and_row(tmp_path):
    path = tmp_path / "Art" / "validation-00000-of-00001.parquet"
    row = mmmu_row("validation_Art_7", "What? <image 1>", "['x', 'y']", "A", [RED])
    row["image_1"] = {"bytes": b"not a png", "path": None}
    write_plain_parquet(path, [row])
    task = load_benchmark("mmmu", "mmmu", tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{path} row 0 (id 'validation_Art_7'): cannot read image")):
        task.eval[0]


@pytest.mark.parametrize("change, message", [
    ({"options": "['A cat', 'B dog'"}, "options \"['A cat', 'B dog'\" is not a Python list of strings"),
    ({"options": "__import__('os')"}, "options \"__import__('os')\" is not a Python list"),  # literal_eval, not eval
    ({"options": "'a cat'"}, "options \"'a cat'\" is not a non-empty list of strings"),
    ({"answer": "C"}, "answer 'C' is not the letter of one of its 2 options (A, B)"),
    ({"question_type": "essay"}, "question_type 'essay' is neither"),
    ({"id": "Art_7"}, "id is not MMMU's <split>_<Subject>_<number>"),
])
def test_bad_mmmu_rows_name_file_and_row(tmp_path, change, message):
    path = tmp_path / "art.jsonl"
    row = {**mmmu_row("validation_Art_7", "What?", "['x', 'y']", "A"), **change}
    write_jsonl(path, [mmmu_row("validation_Art_6", "Fine?", "['x', 'y']", "B"), row])
    with pytest.raises(ValueError, match=re.escape(f"{path} row 1 (id {row['id']!r}): {message}")):
        load_benchmark("mmmu", "mmmu", path)


def test_missing_column_names_file_and_row(tmp_path, mmlu_pro_file):
    path = tmp_path / "art.jsonl"
    row = mmmu_row("validation_Art_7", "What?", "['x', 'y']", "A")
    del row["question_type"]
    write_jsonl(path, [row])
    with pytest.raises(ValueError, match=re.escape(f"{path} row 0 (id 'validation_Art_7'): row lacks question_type")):
        load_benchmark("mmmu", "mmmu", path)
    rows = [json.loads(line) for line in mmlu_pro_file.read_text().splitlines()]
    del rows[2]["answer_index"]
    write_jsonl(mmlu_pro_file, rows)
    with pytest.raises(ValueError, match=re.escape(f"{mmlu_pro_file} row 2 (id 72): row lacks answer_index")):
        load_benchmark("p", "mmlu_pro", mmlu_pro_file)


@pytest.mark.parametrize("row, message", [
    (mmlu_pro_row(5, "q", ["a", "b", "c"], 1, "law", answer="C"), "answer 'C' disagrees with answer_index 1"),
    (mmlu_pro_row(5, "q", ["a", "b", "N/A"], 2, "law"), "the answer is a 'N/A' padding option"),
    (mmlu_pro_row(5, "q", ["a", "b"], 4, "law", answer="E"), "answer_index 4 is not the index of one of its 2"),
    (mmlu_pro_row(5, "q", "['a', 'b']", 0, "law"), "options must be a list of strings"),
])
def test_bad_mmlu_pro_rows(tmp_path, row, message):
    path = write_jsonl(tmp_path / "pro.jsonl", [row])
    with pytest.raises(ValueError, match=re.escape(f"{path} row 0 (id 5): {message}")):
        load_benchmark("p", "mmlu_pro", path)


def test_path_and_format_errors(tmp_path, mmmu_dir):
    missing = tmp_path / "nowhere" / "mmmu"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_benchmark("mmmu", "mmmu", missing)
    with pytest.raises(ValueError, match="unknown format 'mmlu'; known: mmmu, mmlu_pro"):
        load_benchmark("x", "mmlu", mmmu_dir)
    assert BENCHMARK_FORMATS == ("mmmu", "mmlu_pro")
    only_dev = tmp_path / "only_dev"
    write_hub_parquet(only_dev / "Art" / "dev-00000-of-00001.parquet", [mmmu_row("dev_Art_1", "q", "['x', 'y']", "A")])
    with pytest.raises(ValueError, match=re.escape(f"{only_dev} holds no validation data")):
        load_benchmark("mmmu", "mmmu", only_dev)
    datasets.DatasetDict({"dev": datasets.Dataset.from_list([mmmu_row("dev_Art_1", "q", "['x', 'y']", "A")],
                                                            features=MMMU_FEATURES)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'dd'} holds the splits dev but not 'validation'")):
        load_benchmark("mmmu", "mmmu", tmp_path / "dd")
