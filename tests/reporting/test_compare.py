"""`cpt compare`: hand-written results read back as tables, CSV and figures; error messages; the CLI; the
analysis notebook; and two real small runs compared."""

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cpt import cli
from cpt.commands.compare import main
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.errors import ConfigError, DataError
from cpt.reporting.compare import comparison_rows, format_comparison, load_run, load_runs, write_figures
from tests.helpers import REPO

TASKS = ["count", "colour"]


def bench(*accuracies):
    return [None if a is None else {"accuracy": a, "categories": {"Art": a}} for a in accuracies]


# P = [[50, 40], [90, 30], [60, 100]]: AvgAcc (60 + 100) / 2 = 80, FM = BWT = 60 - 90 = -30.
SFT = {"name": "SFT sequential", "method": "sft", "schedule": "sequential", "tasks": TASKS,
       "stages": [["count"], ["colour"]], "accuracy_matrix": [[50.0, 40.0], [90.0, 30.0], [60.0, 100.0]],
       "complete": True, "avg_acc": 80.0, "fm": -30.0, "bwt": -30.0, "general": [40.0, 35.0, 20.0],
       # mmmu was not evaluated after the last stage: its final value is row 1's.
       "benchmarks": {"general": bench(40.0, 35.0, 20.0), "mmmu": bench(30.0, 32.5, None)},
       "chance": [20.0, 25.0], "wall_time_s": 3725.0, "kept_fraction": None}
# P = [[50, 40], [70, 45], [68, 80]]: AvgAcc 74, FM = BWT = 68 - 70 = -2.
RFT = {**SFT, "name": "RFT sequential", "method": "rft",
       "accuracy_matrix": [[50.0, 40.0], [70.0, 45.0], [68.0, 80.0]], "avg_acc": 74.0, "fm": -2.0, "bwt": -2.0,
       "general": [40.0, None, 42.5],
       "benchmarks": {"general": bench(40.0, None, 42.5), "mmmu": bench(30.0, None, 31.0)},
       "wall_time_s": 59.6, "kept_fraction": 0.625}
MULTITASK = {**SFT, "name": "SFT multitask", "schedule": "multitask", "stages": [TASKS],
             "accuracy_matrix": [[50.0, 40.0], [85.0, 90.0]], "avg_acc": 87.5, "fm": None, "bwt": None,
             "general": [40.0, 45.0], "benchmarks": {"general": bench(40.0, 45.0)}, "wall_time_s": 0.0}
# What `cpt fit` wrote before name, method, schedule, stages, benchmarks, wall time and kept fraction existed.
OLD = {"tasks": TASKS, "accuracy_matrix": [[50.0, 40.0], [80.0, 40.0], [75.0, 70.0]], "complete": True,
       "avg_acc": 72.5, "fm": -5.0, "bwt": -5.0, "general": [40.0, 38.0, 36.0], "chance": [20.0, 25.0],
       "per_row": {"avg_acc": [45.0, 80.0, 72.5], "fm": [0.0, 0.0, -5.0], "bwt": [0.0, 0.0, -5.0]}}


def write_run(directory: Path, results: dict, **extra_files) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(results))
    for name, content in extra_files.items():
        (directory / name.replace("_", ".")).write_text(content if isinstance(content, str) else json.dumps(content))
    return directory


@pytest.fixture
def three_runs(tmp_path):
    return [write_run(tmp_path / name, results)
            for name, results in (("sft", SFT), ("rft", RFT), ("multitask", MULTITASK))]


def cells(table: str, first: str) -> list[str]:
    """The cells of the table line that starts with `first` (columns are two or more spaces apart)."""
    line = next(line for line in table.splitlines() if line.startswith(first + " "))
    return [first, *re.split(r"\s{2,}", line[len(first):].strip())]


def test_table_numbers(three_runs):
    table = format_comparison(load_runs(three_runs))
    assert cells(table, "run") == ["run", "method", "AvgAcc", "FM", "BWT", "general base->final", "mmmu base->final",
                                   "kept", "wall time"]
    assert cells(table, "SFT sequential") == ["SFT sequential", "sft sequential", "80.0", "-30.0", "-30.0",
                                              "40.0 -> 20.0", "30.0 -> 32.5", "-", "1:02:05"]
    # general after the sequence is row 2 (row 1 not evaluated); 59.6 s rounds to one minute.
    assert cells(table, "RFT sequential") == ["RFT sequential", "rft sequential", "74.0", "-2.0", "-2.0",
                                              "40.0 -> 42.5", "30.0 -> 31.0", "62.5%", "0:01:00"]
    # One stage: no forgetting measured, shown as "-"; no mmmu at all.
    assert cells(table, "SFT multitask") == ["SFT multitask", "sft multitask", "87.5", "-", "-", "40.0 -> 45.0",
                                             "-", "-", "0:00:00"]
    # Then each task's accuracy after the last stage.
    finals = table.split("\n\n")[1]
    assert cells(finals, "final accuracy") == ["final accuracy", "count", "colour"]
    assert cells(finals, "SFT sequential")[1:] == ["60.0", "100.0"]
    assert cells(finals, "SFT multitask")[1:] == ["85.0", "90.0"]
    assert "*" not in table


def test_csv_and_markdown_read_back(three_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*map(str, three_runs), "--out", str(out)]) == 0
    assert "SFT sequential" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert list(rows[0]) == ["name", "method", "schedule", "complete", "avg_acc", "fm", "bwt", "gain", "diagonal",
                             "gain_over_base", "before_turn", "general_base", "general_final", "mmmu_base",
                             "mmmu_final", "kept_fraction", "wall_time_s", "final_count", "final_colour",
                             "before_count", "before_colour"]
    sft, rft, multitask = rows
    assert float(sft["avg_acc"]) == 80.0 and float(sft["fm"]) == -30.0 and float(sft["mmmu_final"]) == 32.5
    # gain: what each stage added to its own task, ((90 - 50) + (100 - 30)) / 2 and ((70 - 50) + (80 - 45)) / 2.
    assert float(sft["gain"]) == 55.0 and float(rft["gain"]) == 27.5 and multitask["gain"] == ""
    # Plasticity the other two ways: the diagonal (90 + 100) / 2 and (70 + 80) / 2; the gain over the base
    # ((90 - 50) + (100 - 40)) / 2 and ((70 - 50) + (80 - 40)) / 2; each task just before its turn: count 50 (the
    # base), colour 30 after SFT's first task and 45 after RFT's.
    assert (float(sft["diagonal"]), float(sft["gain_over_base"]), float(sft["before_turn"])) == (95.0, 50.0, 40.0)
    assert (float(rft["diagonal"]), float(rft["gain_over_base"]), float(rft["before_turn"])) == (75.0, 30.0, 47.5)
    assert (float(sft["before_count"]), float(sft["before_colour"]), float(rft["before_colour"])) == (50, 30, 45)
    assert multitask["diagonal"] == multitask["before_colour"] == ""
    assert float(rft["general_final"]) == 42.5 and float(rft["kept_fraction"]) == 0.625
    assert float(rft["wall_time_s"]) == 59.6 and float(rft["final_colour"]) == 80.0
    assert multitask["fm"] == "" and multitask["bwt"] == "" and multitask["mmmu_base"] == ""
    assert multitask["schedule"] == "multitask" and float(multitask["final_count"]) == 85.0
    markdown = (out / "comparison.md").read_text()
    assert "| SFT multitask | sft multitask | 87.5 | - | - | 40.0 -> 45.0 | - | - | 0:00:00 |" in markdown
    assert "| final accuracy | count | colour |" in markdown
    assert {p.name for p in out.iterdir()} == {"comparison.csv", "comparison.md", "experiments.csv",
                                               "compare_matrices.png", "compare_task_curves.png", "compare_general.png",
                                               "stability_plasticity.png", "stability_plasticity_general.png"}


def test_old_results_filled_in(tmp_path):
    filtering = {"rule": "all_wrong", "k": 8, "stages": [
        {"stage": 1, "task": "count", "pool": 512, "kept": 300, "dropped": {"all_wrong": 212}, "fallback": False},
        {"stage": 2, "task": "colour", "pool": 512, "kept": 212, "dropped": {"all_wrong": 300}, "fallback": False}]}
    run_dir = write_run(tmp_path / "rft-20250101-120000", OLD, config_yaml="method: rft\nseed: 0\n",
                        filtering_json=filtering)
    run = load_run(run_dir)
    assert run["name"] == "rft-20250101-120000" and run["method"] == "rft" and run["schedule"] == "sequential"
    assert run["stages"] == [["count"], ["colour"]]
    assert run["kept_fraction"] == pytest.approx(512 / 1024)
    assert run["filtering"]["rule"] == "all_wrong" and run["analysis"] is None
    row = comparison_rows([run])[0]
    assert (row["general_base"], row["general_final"], row["wall_time_s"]) == (40.0, 36.0, None)
    assert cells(format_comparison([run]), "rft-20250101-120000")[1:] == [
        "rft sequential", "72.5", "-5.0", "-5.0", "40.0 -> 36.0", "50.0%", "-"]


def test_incomplete_run_marked(tmp_path):
    partial = {**OLD, "tasks": ["count", "colour", "shape"],
               "accuracy_matrix": [[50.0, 40.0, 30.0], [80.0, 40.0, 20.0]],
               "complete": False, "avg_acc": 80.0, "fm": 0.0, "bwt": 0.0, "general": [40.0, 38.0],
               "chance": [20.0, 25.0, 33.3]}
    table = format_comparison([load_run(write_run(tmp_path / "partial", partial))])
    assert cells(table, "partial*")[2] == "80.0"
    assert table.splitlines()[-1] == "* partial is incomplete: 1 of 3 stages evaluated"


def test_different_tasks_compare_the_union(tmp_path, caplog):
    other = {**OLD, "name": "shape run", "tasks": ["shape", "count"]}
    dirs = [write_run(tmp_path / "sft", SFT), write_run(tmp_path / "shape", other)]
    with caplog.at_level(logging.WARNING, logger="cpt.reporting.compare"):
        runs = load_runs(dirs)
    assert "different tasks" in caplog.text and "shape run: shape, count" in caplog.text
    finals = format_comparison(runs).split("\n\n")[1]
    assert cells(finals, "final accuracy") == ["final accuracy", "count", "colour", "shape"]
    assert cells(finals, "SFT sequential")[1:] == ["60.0", "100.0", "-"]
    assert cells(finals, "shape run")[1:] == ["70.0", "-", "75.0"]
    paths = write_figures(runs, tmp_path / "out")
    assert all(path.stat().st_size > 10_000 for path in paths)


def test_same_names_made_unique(tmp_path):
    runs = load_runs([write_run(tmp_path / "seed0", SFT), write_run(tmp_path / "seed1", SFT)])
    assert [run["name"] for run in runs] == ["SFT sequential (seed0)", "SFT sequential (seed1)"]


def test_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="run directory '.*nowhere' does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no results.json: give the output_dir of a `python -m cpt fit`"):
        load_run(tmp_path / "empty")
    broken = write_run(tmp_path / "broken", {})
    (broken / "results.json").write_text('{"tasks": ["count"], "accuracy_matr')
    with pytest.raises(DataError, match="broken/results.json is not valid JSON \\(Unterminated string"):
        load_run(broken)
    (broken / "results.json").write_text('{"tasks": ["count"]}')
    with pytest.raises(ConfigError, match="has no 'accuracy_matrix': it is not a results file of `cpt fit`"):
        load_run(broken)
    with pytest.raises(ConfigError, match=r"no run directories given: python -m cpt compare RUN_DIR"):
        main([])
    # The CLI turns each into a message and exit code 2.
    assert cli.main(["compare", str(tmp_path / "sft-missing")]) == 2
    assert "error: argument RUN_DIR: " in capsys.readouterr().err  # a directory that does not exist
    assert cli.main(["compare"]) == 2
    assert "error: no run directories given" in capsys.readouterr().err
    assert cli.main(["compare", "--help"]) == 0  # compare's own --help, not the config keys
    assert "--out" in capsys.readouterr().out


def test_figures(three_runs, tmp_path):
    analysis = {"stages": [
        {"stage": k, "name": task, "update_norm": {"vision": {"abs": 0.1 * k, "rel": 0.01 * k},
                                                   "language": {"abs": 0.2 * k, "rel": 0.02 * k}},
         "reward_var": 0.2 / k, "kl_to_base": {"count": 0.01 * k, "colour": 0.03 * k}}
        for k, task in enumerate(TASKS, 1)]}
    (three_runs[1] / "analysis.json").write_text(json.dumps(analysis))
    paths = write_figures(load_runs(three_runs), tmp_path / "figures")
    assert [p.name for p in paths] == ["compare_matrices.png", "compare_task_curves.png", "compare_general.png",
                                       "compare_analysis.png"]
    sizes = {p.name: Image.open(p).size for p in paths}
    assert sizes["compare_matrices.png"][0] > 3 * 300  # three heatmaps side by side
    assert all(width > 400 and height > 250 for width, height in sizes.values())


@pytest.mark.slow
def test_cli_subprocess(three_runs, tmp_path):
    out = tmp_path / "cli-out"
    proc = subprocess.run([sys.executable, "-m", "cpt", "compare", str(three_runs[0]), str(three_runs[1]),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cells(proc.stdout, "RFT sequential")[2:5] == ["74.0", "-2.0", "-2.0"]
    assert f"Tables and figures in {out}" in proc.stdout
    assert len(list(csv.DictReader(open(out / "comparison.csv")))) == 2
    assert (out / "compare_task_curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_analysis_notebook(three_runs, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CPT_RUN_DIRS", os.pathsep.join(map(str, three_runs[:2])))
    monkeypatch.setenv("CPT_COMPARE_OUT", str(tmp_path / "nb-out"))
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    printed = "".join(out.get("text", "") for out in outputs)
    assert "RFT sequential" in printed and "40.0 -> 42.5" in printed
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 3
    assert (tmp_path / "nb-out" / "compare_general.png").is_file()


@pytest.fixture(scope="module")
def two_real_runs(tmp_path_factory, quick_cfg, foundation_dir):
    dirs = []
    for seed in (0, 1):
        run_dir = tmp_path_factory.mktemp(f"seed{seed}")
        cfg = load_config(REPO / "configs" / "default.yaml",
                          [*quick_cfg, f"output_dir={run_dir}", "tasks=[colour,count]", "steps_per_task=2",
                           f"seed={seed}", "save_checkpoints=false", "logger=none"])
        run(cfg)
        dirs.append(run_dir)
    return dirs


@pytest.mark.slow
def test_two_real_runs(two_real_runs, tmp_path, capsys):
    assert main([*map(str, two_real_runs), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    results = [json.loads((d / "results.json").read_text()) for d in two_real_runs]
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    assert len(rows) == 2 and rows[0]["name"] != rows[1]["name"]
    for row, result in zip(rows, results):
        assert float(row["avg_acc"]) == pytest.approx(result["avg_acc"])
        assert float(row["fm"]) == pytest.approx(result["fm"])
        assert float(row["final_count"]) == pytest.approx(result["accuracy_matrix"][-1][1])
        assert float(row["general_base"]) == pytest.approx(result["general"][0])
        assert float(row["general_final"]) == pytest.approx(result["general"][-1])
    # The two seeds of one config are one experiment: mean and 95% interval (t(0.975, 1) = 12.706) of the two.
    a, b = (result["avg_acc"] for result in results)
    group = cells(printed, results[0]["name"])
    assert group[1:3] == ["2", f"{(a + b) / 2:.1f} ± {12.7062 * abs(a - b) / 2:.1f}"]
    assert Image.open(tmp_path / "compare_matrices.png").size[0] > 400
