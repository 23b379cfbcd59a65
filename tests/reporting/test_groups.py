"""Runs of one experiment grouped over seeds: means and 95% intervals checked against hand-computed values, the
difference between two experiments (Welch), experiments told apart by their configs, and the files read back."""

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from scipy.stats import t as student_t

from cpt import cli
from cpt.commands.compare import main
from cpt.reporting.intervals import estimate, welch
from tests.reporting.test_compare import cells

TASKS = ["count", "colour"]
# t(0.975, 2), from a table of Student's t.
T_2 = 4.302653


def write_seed(directory: Path, name: str, method: str, seed: int, matrix: list[list[float]], general: list,
               lr: float) -> Path:
    """A finished sequential run of two tasks, as `cpt fit` writes it (results.json and config.yaml)."""
    directory.mkdir(parents=True)
    final = matrix[-1]
    results = {"name": name, "method": method, "schedule": "sequential", "tasks": TASKS,
               "stages": [["count"], ["colour"]], "accuracy_matrix": matrix, "complete": True,
               "avg_acc": sum(final) / 2, "fm": final[0] - matrix[1][0], "bwt": final[0] - matrix[1][0],
               "general": general, "benchmarks": {"general": [{"accuracy": g, "categories": {}} for g in general]},
               "chance": [20.0, 25.0], "wall_time_s": 60.0 * (seed + 1), "kept_fraction": None}
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "config.yaml").write_text(f"name: {name}\nmethod: {method}\nseed: {seed}\n"
                                           f"output_dir: {directory}\noptim:\n  lr: {lr}\n")
    return directory


def experiments_of(run_dirs: list[Path]) -> list:
    """The runs grouped into experiments, as `cpt compare` groups them."""
    from cpt.reporting.compare import benchmark_names, comparison_rows, load_runs
    from cpt.reporting.groups import group_runs

    runs = load_runs(run_dirs)
    return group_runs(runs, comparison_rows(runs), benchmark_names(runs))


@pytest.fixture
def study(tmp_path):
    """SFT: AvgAcc 50, 54, 58 (count after colour 50, 58, 66 with colour at 50; FM -40, -32, -24).
    RFT: AvgAcc 70, 71, 72 (count 70, 72, 74; colour 70). A second SFT at another lr, one seed, under the same name."""
    dirs = []
    for seed, b in enumerate((50.0, 58.0, 66.0)):
        dirs.append(write_seed(tmp_path / f"sft/seed{seed}", "SFT sequential", "sft", seed,
                               [[50.0, 40.0], [90.0, 30.0], [b, 50.0]], [40.0, 30.0, 20.0 + seed], 5e-4))
    for seed, b in enumerate((70.0, 72.0, 74.0)):
        dirs.append(write_seed(tmp_path / f"rft/seed{seed}", "RFT sequential", "rft", seed,
                               [[50.0, 40.0], [75.0, 45.0], [b, 70.0]], [40.0, 41.0, 42.0], 5e-5))
    dirs.append(write_seed(tmp_path / "sft-low/seed0", "SFT sequential", "sft", 0,
                           [[50.0, 40.0], [60.0, 40.0], [58.0, 45.0]], [40.0, 39.0, 38.0], 5e-5))
    return dirs


def test_interval_of_three_values_by_hand():
    mean_54 = estimate([50.0, 54.0, 58.0])  # s = 4: 4.302653 * 4 / sqrt(3)
    assert mean_54.mean == 54.0 and mean_54.n == 3
    assert mean_54.half_width == pytest.approx(T_2 * 4 / math.sqrt(3), rel=1e-6)
    assert mean_54.format() == "54.0 ± 9.9"
    assert estimate([7.0]).half_width is None and estimate([7.0]).format() == "7.0"
    assert estimate([None, math.nan]) is None
    # Welch: variances of the means 16/3 and 1/3; df = (17/3)^2 / ((16/3)^2 / 2 + (1/3)^2 / 2) = 2.249.
    diff = welch([50.0, 54.0, 58.0], [70.0, 71.0, 72.0])
    assert diff.mean == -17.0 and diff.df == pytest.approx((17 / 3) ** 2 / ((16 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2))
    assert diff.df == pytest.approx(2.2490, abs=1e-4)
    assert T_2 * math.sqrt(17 / 3) > diff.half_width() > 2.776 * math.sqrt(17 / 3)  # between t(2) and t(4)
    assert diff.half_width() == pytest.approx(9.2288, abs=1e-3) and diff.excludes_zero
    assert not welch([50.0, 54.0, 58.0], [52.0, 56.0, 57.0]).excludes_zero


def test_compare_groups_seeds_with_intervals(study, tmp_path, capsys):
    out = tmp_path / "out"
    sft_name = "SFT sequential (optim.lr=0.0005)"
    assert main([*map(str, study), "--out", str(out), "--diff", "RFT sequential", sft_name]) == 0
    printed = capsys.readouterr().out
    sft = cells(printed, "SFT sequential (optim.lr=0.0005)")
    # n, AvgAcc, FM (-40, -32, -24: s = 8), BWT, gain ((40 + 20) / 2 = 30 for every seed), the diagonal
    # ((90 + 50) / 2), the gain over the base ((40 + 10) / 2), before its turn ((50 + 30) / 2), general final, change
    assert sft[1:11] == ["3", "54.0 ± 9.9", f"-32.0 ± {T_2 * 8 / math.sqrt(3):.1f}", "-32.0 ± 19.9", "30.0 ± 0.0",
                         "70.0 ± 0.0", "25.0 ± 0.0", "40.0 ± 0.0", "21.0 ± 2.5", "-19.0 ± 2.5"]
    assert cells(printed, "SFT sequential (optim.lr=5e-05)")[1:4] == ["1", "51.5", "-2.0"]
    assert cells(printed, "RFT sequential")[1:3] == ["3", "71.0 ± 2.5"]
    # Per task forgetting: count ends at 50, 58, 66 after its best of 90; colour, the last task, has none.
    forgetting = printed.split("forgetting per task")[1]
    assert cells(forgetting, "SFT sequential (optim.lr=0.0005)")[1:] == ["-32.0 ± 19.9", "-"]
    # The difference table: RFT - SFT on AvgAcc, paired over seeds 0-2 (20, 17, 14: sd 3), beyond the noise.
    diff_table = printed.split("RFT sequential - SFT sequential (optim.lr=0.0005): exploratory")[1]
    half = T_2 * 3 / math.sqrt(3)
    assert cells(diff_table, "avg_acc")[1:] == ["71.0 ± 2.5", "54.0 ± 9.9", "+17.0",
                                                f"[{17 - half:.1f}, {17 + half:.1f}]", "paired, 3 seeds", "yes",
                                                "-", "-"]  # no margin declared

    rows = {row["experiment"]: row for row in csv.DictReader(open(out / "experiments.csv"))}
    assert set(rows) == {"SFT sequential (optim.lr=0.0005)", "RFT sequential", "SFT sequential (optim.lr=5e-05)"}
    row = rows["SFT sequential (optim.lr=0.0005)"]
    assert row["n"] == "3" and row["seeds"] == "0 1 2"
    assert float(row["avg_acc_mean"]) == 54.0
    assert float(row["avg_acc_half_width"]) == pytest.approx(T_2 * 4 / math.sqrt(3), rel=1e-6)
    assert float(row["final_count_mean"]) == 58.0 and float(row["wall_time_s_mean"]) == 120.0
    assert rows["SFT sequential (optim.lr=5e-05)"]["avg_acc_half_width"] == ""
    differences = list(csv.DictReader(open(out / "differences.csv")))
    avg = next(d for d in differences if d["metric"] == "avg_acc")
    assert float(avg["difference"]) == 17.0 and float(avg["half_width"]) == pytest.approx(half, rel=1e-6)
    assert (avg["test"], avg["n"], avg["excludes_0"]) == ("paired", "3", "True")
    assert len(list(csv.DictReader(open(out / "comparison.csv")))) == 7  # every run still has its own row
    assert "| RFT sequential | 3 | 71.0 ± 2.5 |" in (out / "comparison.md").read_text()
    for figure in ("compare_matrices.png", "compare_task_curves.png", "compare_general.png",
                   "stability_plasticity.png", "stability_plasticity_general.png"):
        width, height = Image.open(out / figure).size
        assert width > 400 and height > 250, figure


def test_a_diff_naming_no_experiment_is_a_message(study, tmp_path, capsys):
    assert cli.main(["compare", *map(str, study), "--out", str(tmp_path / "o"), "--diff", "RFT", "SFT"]) == 2
    err = capsys.readouterr().err
    assert "a comparison names an experiment 'RFT' that is not among the runs" in err and "'RFT sequential'" in err


def test_stability_plasticity_numbers_every_point_and_names_it_in_the_key(study):
    from cpt.reporting.group_figures import plot_stability_plasticity

    experiments = experiments_of(study)
    fig = plot_stability_plasticity(experiments, "fm", "FM")
    plane, key = fig.axes
    numbers = [text.get_text() for text in plane.texts]
    entries = [text.get_text() for text in key.texts]
    assert numbers == [str(k) for k in range(1, len(experiments) + 1)]
    # Each key entry: the number, the name, the lr where the name lacks it, and the point (gain, FM). RFT's seeds
    # gain 25 on each task (count 50 -> 75, colour 45 -> 70) and forget count by 5, 3, 1: FM -3.
    rft = next(entry for entry in entries if "RFT sequential" in entry)
    name, point = rft.split(":  ")
    assert name.endswith("RFT sequential (lr 5e-05)") and point.split() == ["25.0,", "-3.0"]
    assert len(entries) == len(experiments)


def test_more_than_ten_experiments_keep_apart_in_colour():
    from cpt.reporting.group_figures import _colour

    assert [_colour(i) for i in range(3)] == ["C0", "C1", "C2"]
    assert len({_colour(i, 14) for i in range(14)}) == 14  # matplotlib's ten would repeat four


def test_primary_comparisons_from_the_command_line(study, tmp_path, capsys):
    """--primary with --margin: RFT - SFT on AvgAcc (per seed 20, 17, 14) is different at margin 5, and on the
    general set's change (per seed 22, 21, 20: the 90% interval 21 ± 2.92 / sqrt(3) inside ±25) both different and
    within a margin of 25."""
    out, sft_name = tmp_path / "out", "SFT sequential (optim.lr=0.0005)"
    assert main([*map(str, study), "--out", str(out), "--primary", "RFT sequential", sft_name,
                 "--margin", "avg_acc=5", "--margin", "general_change=25"]) == 0
    printed = capsys.readouterr().out
    assert "Primary comparisons" in printed and "adjusted over the 2 difference tests" in printed
    rows = {row["metric"]: row for row in csv.DictReader(open(out / "primary.csv"))}
    avg = rows["avg_acc"]
    assert float(avg["difference"]) == 17.0 and avg["test"] == "paired" and avg["margin"] == "5.0"
    # t = 17 / sqrt(3) on 2 df; Holm over two: the larger p, times 1, so the same.
    assert float(avg["p_difference"]) == pytest.approx(2 * student_t.sf(17 / math.sqrt(3), 2), rel=1e-9)
    assert (avg["verdict"], avg["holm_verdict"]) == ("different", "different")
    general = rows["general_change"]
    assert (float(general["difference"]), general["verdict"]) == (21.0, "different, within ±25")
    # The pair's other numbers are exploratory; those with a margin are held to it, uncorrected.
    exploratory = printed.split(f"RFT sequential - {sft_name}: exploratory")[1]
    assert cells(exploratory, "general_change")[-1] == "different, within ±25"
    assert cells(exploratory, "fm")[-2:] == ["-", "-"]
    figure = Image.open(out / "primary_comparisons.png")
    assert figure.size[0] > 700 and figure.size[1] > 150
    with pytest.raises(SystemExit):
        main([*map(str, study), "--margin", "fm=-3"])
    assert "argument --margin: 'fm=-3' is not NAME=N with N a number > 0" in capsys.readouterr().err
    assert cli.main(["compare", *map(str, study), "--out", str(out), "--primary", "RFT sequential", sft_name]) == 2
    assert "primary comparisons need a margin per metric" in capsys.readouterr().err


def test_a_seed_given_twice_a_self_comparison_and_a_stray_margin_are_refused(study, tmp_path, capsys):
    dirs, out = study, str(tmp_path / "cmp")
    copy = write_seed(tmp_path / "copy/seed0", "SFT sequential", "sft", 0,
                      [[50.0, 40.0], [90.0, 30.0], [50.0, 50.0]], [40.0, 30.0, 20.0], 5e-4)
    for args, message in (([str(dirs[0]), str(dirs[0])], "are both seed 0 of 'SFT sequential"),
                          ([str(dirs[0]), str(copy)], "(the same run given twice, a copy of one"),
                          ([str(dirs[0]), "--diff", "SFT sequential", "sft sequential"],
                           "compares an experiment with itself"),
                          ([str(dirs[0]), "--margin", "fm=3"], "a margin applies to the primary"),
                          ([str(dirs[0]), "--diff", "A", "B", "--margin", "fmm=3"], "a margin names 'fmm'")):
        assert cli.main(["compare", *args, "--out", out]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # a results file with more accuracy rows than its stages allow
    results = json.loads((dirs[0] / "results.json").read_text())
    (dirs[0] / "results.json").write_text(json.dumps({**results, "accuracy_matrix": results["accuracy_matrix"][:1]}))
    assert cli.main(["compare", str(dirs[0]), "--out", out]) == 2
    assert "has 1 accuracy rows for 2 stage(s)" in capsys.readouterr().err
