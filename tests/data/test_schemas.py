"""The study's seven datasets read from tiny copies in their public schemas; data check; fit on two of them."""

import json

import pytest
from PIL import Image

from cpt.cli import main
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.data.check import check_config
from cpt.data.datamodule import TaskSequenceData
from cpt.data.examples import Example
from cpt.data.files import ImagesById, find_sources, read_split, split_of
from cpt.data.local_tasks import open_split
from cpt.data.prompts import render_prompt
from cpt.data.schemas import SCHEMAS, consensus, easyr1, geometry3k, human_answers
from cpt.data.scoring import count, geometry, math_value, vqa_soft
from cpt.data.tasks import build_tasks
from cpt.errors import ConfigError, DataError
from tests.helpers import REPO
from tests.helpers.schema_fixtures import WRITERS


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """name -> overrides pointing at a fresh copy of every dataset."""
    root = tmp_path_factory.mktemp("real")
    return {name: write(root / name) for name, write in WRITERS.items()}


def tasks_of(copies, *names, extra=()):
    overrides = [f"tasks=[{','.join(names)}]", *[o for n in names for o in copies[n]], *extra]
    return {task.name: task for task in build_tasks(load_config(None, overrides))}


def test_every_schema_gives_prompts_answers_images_and_its_scorer(copies):
    tasks = tasks_of(copies, *WRITERS)
    # (train rows, eval rows): the eval split is each format's own (ScienceQA test, TextVQA validation, ...)
    sizes = {name: (len(t.train), len(t.eval)) for name, t in tasks.items()}
    assert sizes == {"scienceqa": (6, 4), "textvqa": (6, 4), "vizwiz": (4, 3), "geometry3k": (4, 3), "gqa": (5, 3),
                     "pathvqa": (4, 4), "superclevr": (4, 2)}
    assert {n: t.scorer.__name__ for n, t in tasks.items()} == {
        "scienceqa": "multiple_choice", "textvqa": "vqa_soft", "vizwiz": "vqa_soft", "geometry3k": "geometry",
        "gqa": "exact", "pathvqa": "yes_no", "superclevr": "count"}

    sqa = tasks["scienceqa"].eval[1]  # a hint, a green image, answer index 1
    assert render_prompt("direct", sqa).startswith("Context: Look at the picture.\nWhich colour is shown?\nA. red\n"
                                                   "B. green\nC. blue\n")
    assert sqa.answer == "B" and sqa.rationale == "The picture is green."
    assert sqa.images[0].getpixel((0, 0)) == (0, 128, 0) and tasks["scienceqa"].eval[0].images == []
    score = tasks["scienceqa"].scorer
    assert (score("\\boxed{B}", sqa), score("\\boxed{green}", sqa), score("\\boxed{A}", sqa)) == (1.0, 1.0, 0.0)

    text = tasks["textvqa"].eval[0]
    assert (text.answer, sorted(text.aliases)) == ("stop", ["stop"] * 6 + ["stop sign"] * 3)
    assert vqa_soft("\\boxed{stop sign}", text) == 1.0 and vqa_soft("\\boxed{sign}", text) == 0.0

    viz = tasks["vizwiz"].eval[0]  # six "unanswerable", four "blue"; the image found in val/
    red, green, blue = viz.images[0].getpixel((1, 1))  # a JPEG: red within its compression error
    assert viz.answer == "unanswerable" and red > 240 and green < 10 and blue < 10

    geo = tasks["geometry3k"].eval[0]  # InterGPS: logic_form.json is not a row; the diagram beside data.json
    assert geo.question == "Find x. Problem 2401." and geo.answer == "B" and geo.images[0].size == (30, 20)
    assert [geometry(c, geo) for c in ("\\boxed{4}", "\\boxed{B}", "\\boxed{3}")] == [1.0, 1.0, 0.0]

    gqa = tasks["gqa"].eval[2]  # its image found by imageId in the testdev images table
    assert gqa.answer == "blue" and gqa.images[0].getpixel((0, 0)) == (0, 0, 255)
    assert tasks["gqa"].scorer("\\boxed{Blue.}", gqa) == 1.0

    path = tasks["pathvqa"].eval
    assert (path[0].answer, path[1].answer) == ("fibrosis", "yes")
    assert tasks["pathvqa"].scorer("Yes, it is.", path[1]) == 1.0 and tasks["pathvqa"].scorer("no", path[1]) == 0.0

    clevr = tasks["superclevr"].train
    assert [clevr[i].answer for i in range(3)] == ["3", "red", "yes"]
    assert [count(c, clevr[0]) for c in ("\\boxed{three}", "\\boxed{3}", "\\boxed{4}")] == [1.0, 1.0, 0.0]
    assert count("\\boxed{Red}", clevr[1]) == 1.0 and clevr[0].images[0].size == (32, 24)


def test_vqa_soft_accuracy_on_hand_made_answer_lists():
    answers = ["red"] * 2 + ["dark red"] * 7 + ["crimson"]
    top, rest = consensus(answers)
    example = Example("q", top, aliases=rest)
    assert top == "dark red" and sorted([top, *rest]) == sorted(answers)
    assert vqa_soft("\\boxed{red}", example) == pytest.approx(2 / 3)  # min(2 / 3, 1)
    assert vqa_soft("\\boxed{Dark-red.}", example) == 1.0  # normalised to "dark red": min(7 / 3, 1)
    assert vqa_soft("\\boxed{the crimson}", example) == pytest.approx(1 / 3)
    numbers = Example("q", "2", aliases=["2", "two", "3"])  # number words read as digits: "two" counts
    assert vqa_soft("\\boxed{two}", numbers) == 1.0 and vqa_soft("\\boxed{3}", numbers) == pytest.approx(1 / 3)
    assert human_answers([{"answer": "unanswerable", "answer_confidence": "yes"}, {"answer": ""}, "blue"]) == [
        "unanswerable", "blue"]


def test_geometry_values_and_hub_rows():
    assert math_value("2\\sqrt{3}") == pytest.approx(2 * 3 ** 0.5)
    assert math_value("\\frac{7}{2}") == 3.5 and math_value("60^\\circ") == 60.0
    assert math_value("3\\pi") == pytest.approx(9.42477796) and math_value("x+1") is None
    assert math_value("2**1000") is None  # no huge powers from model text
    assert geometry("\\boxed{3.4641016}", Example("q", "2\\sqrt{3}")) == 1.0
    assert geometry("\\boxed{3.47}", Example("q", "2\\sqrt{3}")) == 0.0
    # hiyouga/geometry3k gives the answer as a choice's text: it becomes that choice's letter.
    example, images = geometry3k({"problem": "<image>Find y.", "answer": "2\\sqrt{3}", "images": [b"x"],
                                  "choices": ["3", "2\\sqrt{3}", "5", "6"]})
    assert (example.question, example.answer, len(images)) == ("Find y.", "B", 1)
    example, _ = geometry3k({"problem": "Find y.", "answer": "7", "images": [], "choices": ["3", "4"]})
    assert example.choices is None and example.answer == "7"  # not among the choices: scored as a value


def test_split_layouts_and_image_stores(tmp_path):
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "val.json", "test.jsonl",
                 "notes.json"):
        (tmp_path / name).write_text("[]")
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "rows.jsonl").write_text("")
    names = lambda split: [p.relative_to(tmp_path).as_posix() for p in find_sources(tmp_path, split)]  # noqa: E731
    assert names("train") == ["notes.json", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert names("validation") == ["notes.json", "val.json", "validation/rows.jsonl"]  # val = validation
    assert [split_of(n) for n in ("train-00000-of-00001-1028f23e", "testdev_balanced_questions",
                                  "TextVQA_0.5.1_val", "superCLEVR_questions_30k", "contest")] == [
        "train", "testdev", "val", None, None]
    gqa = tmp_path / "gqa.json"  # GQA's own release: questions keyed by id
    gqa.write_text(json.dumps({"201": {"imageId": "n1", "question": "q?", "answer": "no"}}))
    rows, sources = read_split(gqa)
    assert rows[0]["id"] == "201" and rows[0]["imageId"] == "n1" and sources == [gqa]
    textvqa = tmp_path / "TextVQA_0.5.1_val.json"
    textvqa.write_text(json.dumps({"dataset_name": "textvqa", "data": [{"question": "q", "answers": ["a"] * 10,
                                                                        "image_id": "abc"}]}))
    example, images = SCHEMAS["textvqa"].parse(read_split(textvqa)[0][0])
    assert images == ["abc.jpg"] and example.answer == "a"
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "images" / "n1.jpg")
    store = ImagesById(tmp_path / "images")
    assert store["n1"] == str(tmp_path / "images" / "n1.jpg")
    with pytest.raises(KeyError):
        store["n2"]


def test_sizes_pixel_caps_and_template_per_task(copies, processor):
    extra = ["local_tasks.textvqa.train_size=3", "local_tasks.textvqa.max_pixels=100",
             "local_tasks.textvqa.template=cot"]
    task = tasks_of(copies, "textvqa", "gqa", extra=extra)["textvqa"]
    again = tasks_of(copies, "textvqa", extra=extra)["textvqa"]
    other_seed = tasks_of(copies, "textvqa", extra=[*extra, "seed=1"])["textvqa"]
    assert len(task.train) == 3 and task.train.indices == again.train.indices
    assert task.train.indices != other_seed.train.indices  # 20 possible subsets: seeds 0 and 1 differ
    assert task.eval[0].images[0].size == (10, 10)  # 24 x 24 = 576 pixels scaled to at most 100, square kept
    assert task.template == "cot" and tasks_of(copies, "gqa")["gqa"].template == "direct"

    cfg = load_config(None, ["tasks=[textvqa,gqa]", *copies["textvqa"], *copies["gqa"], *extra])
    tasks = build_tasks(cfg)
    data = TaskSequenceData(cfg, tasks, processor, with_response=True)
    cot, direct = (processor.decode(data.encoded(k, tasks[k].train)[0].input_ids) for k in (0, 1))
    assert "<think>" in cot and "<think>" not in direct


def test_rows_a_schema_did_not_foresee_are_problems_not_crashes(tmp_path):

    assert easyr1({"problem": "1 - 1?", "answer": 0})[0].answer == "0"  # a falsy answer is still an answer
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"question": "q", "answers": [{"answer_confidence": "yes"}], "image": "a.png"},  # no answer key
            {"question": "q", "answers": ["x"] * 10, "image": None}]  # VizWiz questions are about an image
    (tmp_path / "val.json").write_text(json.dumps(rows))
    split = open_split("viz", "eval", tmp_path / "val.json", "validation", SCHEMAS["vizwiz"], None, 0)
    assert [(p.row, p.message) for p in split.problems()] == [(0, "empty answers"),
                                                               (1, "no image (VizWiz questions are about one)")]
    one_file = ["tasks=[viz]", "local_tasks.viz.format=vizwiz", f"local_tasks.viz.path={tmp_path / 'val.json'}"]
    with pytest.raises(DataError, match="training and evaluation would read the same data"):
        build_tasks(load_config(None, one_file))
    assert math_value("1+" * 300 + "1") is None  # too long to be an answer worth evaluating


def test_bad_config_values_are_named():
    with pytest.raises(ConfigError, match="'local_tasks.x.format': 'coco'; choose one of easyr1, scienceqa"):
        load_config(None, ["tasks=[x]", "local_tasks.x.format=coco", "local_tasks.x.path=/d"])
    with pytest.raises(ConfigError, match="local_tasks.x needs `path`"):
        load_config(None, ["tasks=[x]", "local_tasks.x.format=gqa", "local_tasks.x.train=/d"])
    with pytest.raises(ConfigError, match="'local_tasks.x.train_size': must be a whole number > 0"):
        load_config(None, ["tasks=[x]", "local_tasks.x.path=/d", "local_tasks.x.train_size=0"])


@pytest.fixture()
def broken(tmp_path):
    """Copies with one defect each: a corrupt image and an empty answer (rows), a missing column, an empty split."""
    import datasets

    overrides = {name: WRITERS[name](tmp_path / name) for name in ("textvqa", "scienceqa", "vizwiz")}
    path = tmp_path / "textvqa" / "data" / "validation-00000-of-00001.parquet"
    rows = datasets.Dataset.from_parquet(str(path)).to_list()
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    rows[2]["answers"] = [""] * 10
    datasets.Dataset.from_list(rows, features=datasets.Dataset.from_parquet(str(path)).features).to_parquet(str(path))
    path = tmp_path / "scienceqa" / "data" / "train-00000-of-00001.parquet"
    datasets.Dataset.from_parquet(str(path)).remove_columns("choices").to_parquet(str(path))
    (tmp_path / "vizwiz" / "annotations" / "val.json").write_text("[]")
    return overrides


def test_data_check_names_every_problem(broken, tmp_path, capsys):
    args = ["tasks=[textvqa,scienceqa,vizwiz]", *[o for v in broken.values() for o in v]]
    assert main(["data", "check", *args, "--out", str(tmp_path / "report.json")]) == 1
    out = capsys.readouterr().out
    assert "task 'textvqa', eval row 1 (id '101'): image 1: cannot read image of 12 bytes: not a readable" in out
    assert "task 'textvqa', eval row 2 (id '102'): empty answers" in out
    assert "task 'scienceqa', train: " in out and "(split 'train') lacks column 'choices'; ScienceQA rows have" in out
    assert "task 'vizwiz', eval: " in out and "val.json' has no rows" in out
    assert "cannot be used: scienceqa, vizwiz" in out
    report = json.loads((tmp_path / "report.json").read_text())
    textvqa = report["tasks"][0]
    assert textvqa["usable"] and textvqa["splits"]["eval"]["usable"] == 2
    assert [p["id"] for p in textvqa["splits"]["eval"]["problems"]] == ["101", "102"]
    assert textvqa["splits"]["train"]["answer_types"] == {"short text": 6}
    assert textvqa["splits"]["train"]["images_per_row"] == {"1": 6}
    # Only bad rows: usable, exit 0; --strict makes them an error.
    only_rows = ["tasks=[textvqa]", *broken["textvqa"]]
    assert main(["data", "check", *only_rows]) == 0
    assert main(["data", "check", *only_rows, "--strict"]) == 1


def test_fit_stops_early_on_an_unusable_task_and_names_it(broken, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # A data problem: exit code 1 (2 is for the configuration).
    assert main(["fit", "tasks=[scienceqa]", *broken["scienceqa"], f"output_dir={run_dir}"]) == 1
    assert "task 'scienceqa', train: " in capsys.readouterr().err
    assert main(["fit", "tasks=[vizwiz]", *broken["vizwiz"], f"output_dir={run_dir}"]) == 1
    assert "task 'vizwiz', eval: " in capsys.readouterr().err
    assert not run_dir.exists()  # stopped before writing anything


@pytest.mark.slow
def test_fit_on_two_real_schema_tasks(copies, broken, quick_cfg, tmp_path, caplog):
    overrides = [*quick_cfg, "tasks=[scienceqa,textvqa]", *copies["scienceqa"], *broken["textvqa"],
                 "steps_per_task=2", f"output_dir={tmp_path / 'run'}", "save_checkpoints=false"]
    summary = run(load_config(None, overrides))
    assert summary["tasks"] == ["scienceqa", "textvqa"] and len(summary["accuracy_matrix"]) == 3
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["tasks"] == ["scienceqa", "textvqa"]
    left_out = json.loads((tmp_path / "run" / "data_check.json").read_text())["left_out"]
    assert [(p["task"], p["split"], p["id"]) for p in left_out] == [("textvqa", "eval", "101"),
                                                                      ("textvqa", "eval", "102")]
    assert "2 rows cannot be used and are left out" in caplog.text


PAPER = REPO / "configs" / "experiments" / "paper"


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_load(path):
    cfg = load_config(path)
    assert list(cfg.tasks) == ["scienceqa", "textvqa", "vizwiz", "geometry3k", "gqa", "pathvqa", "superclevr"]
    assert set(cfg.local_tasks) == set(cfg.tasks) and cfg.data.template == "cot"
    if path.stem.startswith(("sft", "rft", "multitask")):
        variant = path.stem.rsplit("_", 1)[1]
        assert cfg.model.finetune == ("lora" if variant == "lora" else "full")
        assert cfg.trainer.strategy == ("fsdp" if variant == "fsdp" else "auto")
        assert cfg.method == ("rft" if "rft" in path.stem else "sft")
        assert cfg.schedule == ("multitask" if path.stem.startswith("multitask") else "sequential")


def test_paper_layout_in_the_docs_is_what_the_adapters_read(copies, tmp_path):
    """The paper configs' paths, under a root holding the fixtures in the layouts docs/your-data.md describes."""
    text = (PAPER / "tasks.yaml").read_text().replace("/data/", f"{tmp_path}/")
    (tmp_path / "tasks.yaml").write_text(text)
    folders = {"scienceqa": "ScienceQA", "textvqa": "TextVQA", "vizwiz": "VizWiz", "geometry3k": "Geometry3K",
               "gqa": "GQA", "pathvqa": "PathVQA", "superclevr": "Super-CLEVR"}
    for name, folder in folders.items():
        WRITERS[name](tmp_path / folder)
    cfg = load_config(tmp_path / "tasks.yaml")
    reports = check_config(cfg, progress=False)
    unusable = [r for r in reports if not r.usable]  # the general benchmarks, not written here
    assert [r.name for r in unusable] == ["mmmu", "mmlu_pro"] and "MMMU does not exist" in unusable[0].error
    assert {r.name: r.splits["eval"].usable for r in reports if r.usable} == {
        "scienceqa": 4, "textvqa": 4, "vizwiz": 3, "geometry3k": 3, "gqa": 3, "pathvqa": 4, "superclevr": 2}
