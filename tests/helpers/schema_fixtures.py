"""Tiny copies of the study's seven datasets, each written in its public layout and schema, with small images.

Every writer returns the `local_tasks.<name>.*` overrides that point `cpt` at the copy.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow"]


def png(colour: str, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(rows: list[dict], path: Path, features=None) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def scienceqa(root: Path, name: str = "scienceqa") -> list[str]:
    """The Hub's derek-thomas/ScienceQA: data/<split>-00000-of-00001.parquet; `image` may be null."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")), "answer": datasets.Value("int8"),
        "hint": datasets.Value("string"), "task": datasets.Value("string"), "subject": datasets.Value("string"),
        "lecture": datasets.Value("string"), "solution": datasets.Value("string")})
    for split, count in (("train", 6), ("validation", 2), ("test", 4)):
        rows = [{"image": {"bytes": png(COLOURS[i % 4]), "path": None} if i % 3 else None,
                 "question": "Which colour is shown?", "choices": COLOURS[:3], "answer": i % 3,
                 "hint": "Look at the picture." if i % 2 else "", "task": "closed choice", "subject": "natural science",
                 "lecture": "Colours.", "solution": f"The picture is {COLOURS[i % 3]}."} for i in range(count)]
        _parquet(rows, root / "data" / f"{split}-00000-of-00001.parquet", features)
    return [f"local_tasks.{name}.format=scienceqa", f"local_tasks.{name}.path={root}"]


def textvqa(root: Path, name: str = "textvqa") -> list[str]:
    """The Hub's TextVQA: data/<split>-*.parquet with ten human answers per question."""
    import datasets

    features = datasets.Features({
        "image_id": datasets.Value("string"), "question_id": datasets.Value("int32"),
        "question": datasets.Value("string"), "image": datasets.Image(),
        "answers": datasets.List(datasets.Value("string")), "set_name": datasets.Value("string")})
    for split, count in (("train", 6), ("validation", 4), ("test", 2)):
        rows = [{"image_id": f"img{i}", "question_id": 100 + i, "question": "What word is written?",
                 "image": {"bytes": png(COLOURS[i % 4]), "path": None},
                 "answers": [] if split == "test" else ["stop"] * 7 + ["stop sign"] * 3, "set_name": split}
                for i in range(count)]
        _parquet(rows, root / "data" / f"{split}-00000-of-00001.parquet", features)
    return [f"local_tasks.{name}.format=textvqa", f"local_tasks.{name}.path={root}"]


def vizwiz(root: Path, name: str = "vizwiz") -> list[str]:
    """VizWiz's own release: annotations/{train,val}.json (answers as {answer, answer_confidence}) and images in
    train/ and val/."""
    (root / "annotations").mkdir(parents=True)
    for split, count in (("train", 4), ("val", 3)):
        (root / split).mkdir()
        rows = []
        for i in range(count):
            image = f"VizWiz_{split}_{i:08d}.jpg"
            Image.new("RGB", (24, 24), COLOURS[i % 4]).save(root / split / image)
            answers = ["unanswerable"] * 6 + ["blue"] * 4 if i == 0 else ["red"] * 10
            rows.append({"image": image, "question": "What is this?", "answerable": int(i != 0),
                         "answer_type": "unanswerable" if i == 0 else "other",
                         "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]})
        (root / "annotations" / f"{split}.json").write_text(json.dumps(rows))
    return [f"local_tasks.{name}.format=vizwiz", f"local_tasks.{name}.train={root / 'annotations' / 'train.json'}",
            f"local_tasks.{name}.eval={root / 'annotations' / 'val.json'}", f"local_tasks.{name}.image_dir={root}",
            ]


def geometry3k(root: Path, name: str = "geometry3k") -> list[str]:
    """InterGPS's release: <split>/<id>/data.json and img_diagram.png (and logic_form.json, not rows)."""
    for split, ids in (("train", range(0, 4)), ("test", range(2401, 2404))):
        for problem in ids:
            folder = root / split / str(problem)
            folder.mkdir(parents=True)
            Image.new("RGB", (30, 20), "white").save(folder / "img_diagram.png")
            (folder / "data.json").write_text(json.dumps({
                "id": problem, "problem_text": f"Find x. Problem {problem}.", "choices": ["3", "4", "5", "6"],
                "answer": "B", "annotat_text": "Find x.", "compact_text": "Find x."}))
            (folder / "logic_form.json").write_text(json.dumps({"text_logic_form": ["Equals(x, 4)"]}))
    return [f"local_tasks.{name}.format=geometry3k", f"local_tasks.{name}.path={root}"]


def gqa(root: Path, name: str = "gqa") -> list[str]:
    """The Hub's lmms-lab/GQA: <split>_balanced_instructions/ and <split>_balanced_images/ parquet folders."""
    import datasets

    image_features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    for split, count in (("train", 5), ("testdev", 3)):
        images = [{"id": f"{split}{i}", "image": {"bytes": png(COLOURS[i % 4]), "path": None}} for i in range(count)]
        _parquet(images, root / f"{split}_balanced_images" / f"{split}-00000-of-00001.parquet", image_features)
        questions = [{"id": f"q{split}{i}", "imageId": f"{split}{i}", "question": "What colour is the square?",
                      "answer": COLOURS[i % 4], "fullAnswer": f"The square is {COLOURS[i % 4]}.", "isBalanced": True}
                     for i in range(count)]
        _parquet(questions, root / f"{split}_balanced_instructions" / f"{split}-00000-of-00001.parquet")
    return [f"local_tasks.{name}.format=gqa", f"local_tasks.{name}.train={root / 'train_balanced_instructions'}",
            f"local_tasks.{name}.eval={root / 'testdev_balanced_instructions'}", f"local_tasks.{name}.images={root}"]


def pathvqa(root: Path, name: str = "pathvqa") -> list[str]:
    """flaviagiammarino/path-vqa saved with save_to_disk: a DatasetDict of train, validation and test."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    splits = {}
    for split, count in (("train", 4), ("validation", 2), ("test", 4)):
        rows = [{"image": {"bytes": png(COLOURS[i % 4]), "path": None},
                 "question": "Is this tissue inflamed?" if i % 2 else "What is present?",
                 "answer": "yes" if i % 2 else "fibrosis"} for i in range(count)]
        splits[split] = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return [f"local_tasks.{name}.format=pathvqa", f"local_tasks.{name}.path={root}"]


def superclevr(root: Path, name: str = "superclevr") -> list[str]:
    """Super-CLEVR's release: a questions JSON {"info", "questions": [...]} and an images/ folder."""
    (root / "images").mkdir(parents=True)
    questions = []
    for i in range(6):
        image = f"superCLEVR_new_{i:06d}.png"
        Image.new("RGB", (32, 24), COLOURS[i % 4]).save(root / "images" / image)
        answer = [3, "red", True][i % 3]
        questions.append({"image_filename": image, "image_index": i, "question_index": i,
                          "question": "How many cars are there?" if i % 3 == 0 else "What colour is the bus?",
                          "answer": answer, "program": []})
    path = root / "superCLEVR_questions_30k.json"
    path.write_text(json.dumps({"info": {"version": "1.0"}, "questions": questions}))
    # The release has one questions file; docs/your-data.md's recipe splits it by image into train.jsonl and test.jsonl.
    for split, part in (("train", questions[:4]), ("test", questions[4:])):
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(q) for q in part))
    return [f"local_tasks.{name}.format=superclevr", f"local_tasks.{name}.train={root / 'train.jsonl'}",
            f"local_tasks.{name}.eval={root / 'test.jsonl'}", f"local_tasks.{name}.image_dir={root / 'images'}"]


WRITERS = {"scienceqa": scienceqa, "textvqa": textvqa, "vizwiz": vizwiz, "geometry3k": geometry3k, "gqa": gqa,
           "pathvqa": pathvqa, "superclevr": superclevr}
