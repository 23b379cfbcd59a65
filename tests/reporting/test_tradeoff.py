"""Forgetting at matched plasticity: families found from the configs, the curves interpolated by hand, the seed
bootstrap enumerated, and its interval equal to the paired t interval of the hand-interpolated per-seed values
where the interpolation is linear in them (a percentile bootstrap, an unpaired one or one without the n/(n-1)
correction would each give another width)."""

import csv
import math

import numpy as np
import pytest

from cpt.reporting.groups import Experiment
from cpt.reporting.intervals import paired
from cpt.reporting.tradeoff import compare, families, interpolate, matched_plasticity, pairs, resample_weights
from tests.reporting.test_groups import write_seed

# Per method, per lr (in order): gain over base (the same on every seed), and FM on seeds 0-3.
LRS = (1e-5, 2e-5, 4e-5)
GAINS = (0.0, 4.0, 8.0)
FM = {"rft": ((-1.0, -2.0, 0.0, -1.5), (-2.0, -3.5, -1.0, -2.5), (-4.0, -6.0, -3.0, -5.0)),
      "sft": ((-1.5, -1.0, -2.0, -0.5), (-5.0, -7.0, -4.5, -6.0), (-12.0, -15.0, -10.0, -13.5))}
SEEDS = (0, 1, 2, 3)


def experiment(method: str, lr: float, gain: float, fms, seeds=SEEDS, extra: dict | None = None) -> Experiment:
    runs = [{"method": method, "complete": True, "name": f"{method} {lr:g} seed{s}"} for s in seeds]
    values = [{"gain": gain, "gain_over_base": gain, "diagonal": 50.0 + gain, "fm": fm, "avg_acc": 60.0 + gain + fm}
              for fm in fms]
    config = {"method": method, "optim.lr": lr, "name": f"{method.upper()} lr {lr:g}", "rft.kl.coef": 0.01,
              **(extra or {})}
    return Experiment(f"{method.upper()} lr {lr:g}", runs, values, config, list(seeds))


def grid(method: str) -> list[Experiment]:
    return [experiment(method, lr, gain, fms) for lr, gain, fms in zip(LRS, GAINS, FM[method])]


def test_interpolation_by_hand():
    xs, ys = np.array([[0.0, 10.0, 20.0]]), np.array([[0.0, -5.0, -20.0]])
    assert interpolate(xs, ys, 15.0)[0] == pytest.approx(-12.5)
    assert interpolate(xs, ys, 10.0)[0] == pytest.approx(-5.0)
    assert math.isnan(interpolate(xs, ys, 25.0)[0])
    # a resampled curve stopping short: the end segment's line
    assert interpolate(xs, ys, 25.0, extrapolate=True)[0] == pytest.approx(-27.5)
    assert interpolate(xs, ys, -5.0, extrapolate=True)[0] == pytest.approx(2.5)
    # a curve that folds back: the first segment spanning x is taken
    assert interpolate(np.array([[0.0, 10.0, 5.0]]), np.array([[0.0, -10.0, -30.0]]), 7.0)[0] == pytest.approx(-7.0)


def test_every_resample_is_enumerated():
    weights = resample_weights(2)
    assert weights.tolist() == [[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 1.0]]
    assert resample_weights(5).shape == (3125, 5) and np.allclose(resample_weights(5).sum(axis=1), 1.0)
    assert resample_weights(7).shape == (4000, 7)
    assert np.array_equal(resample_weights(7), resample_weights(7))  # drawn from a fixed seed


def test_families_are_experiments_that_differ_in_one_numeric_key():
    rft, sft = grid("rft"), grid("sft")
    other = experiment("sft", 1e-5, 0.0, FM["sft"][0], extra={"rft.kl.coef": 0.1})  # two keys apart from sft 2e-5
    found = families([*rft, *sft, other])
    assert [(f.key, [p.name for p in f.points]) for f in found] == [
        ("optim.lr", ["RFT lr 1e-05", "RFT lr 2e-05", "RFT lr 4e-05"]),
        ("optim.lr", ["SFT lr 1e-05", "SFT lr 2e-05", "SFT lr 4e-05"])]
    assert found[0].label == "RFT, optim.lr 1e-05 to 4e-05"
    # AvgAcc 60 + gain + mean FM: rft 59.9, 61.8, 63.5 (best at the top end); a grid bracketing its best
    best, inside = found[0].best()
    assert best.name == "RFT lr 4e-05" and not inside
    peaked = [experiment("rft", lr, gain, fms) for lr, gain, fms in zip(LRS, (0.0, 4.0, 1.0), FM["rft"])]
    assert families(peaked)[0].best()[0].name == "RFT lr 2e-05" and families(peaked)[0].best()[1]
    assert [f.label for f in families([*rft[:2], *sft])] == ["SFT, optim.lr 1e-05 to 4e-05"]  # 2 points: no curve
    # A primary comparison naming SFT first puts its family first.
    assert [(a.method, b.method) for a, b in pairs(found, [("SFT lr 2e-05", "RFT lr 1e-05")])] == [("sft", "rft")]
    assert [(a.method, b.method) for a, b in pairs(found)] == [("rft", "sft")]


def test_matched_values_and_their_intervals_by_hand():
    found = families([*grid("rft"), *grid("sft")])
    result = compare(found[0], found[1], {"fm": 3.0})
    assert result.seeds == SEEDS and not result.left_out
    # Overlap of gain over base: [0, 8]; matched at 2, 4 and 6, each between two lrs, or on the middle one.
    rows = [row for row in result.rows if row.x_key == "gain_over_base"]
    assert [row.x for row in rows] == [2.0, 4.0, 6.0]
    for row, (first, weight) in zip(rows, ((0, 0.5), (1, 0.0), (1, 0.5))):
        per_seed = {m: [(1 - weight) * FM[m][first][s] + weight * FM[m][first + 1][s] for s in SEEDS]
                    for m in ("rft", "sft")}
        expected = paired(zip(per_seed["rft"], per_seed["sft"]))
        assert row.difference.mean == pytest.approx(expected.mean)
        assert row.difference.interval() == pytest.approx(expected.interval(), abs=1e-9)
        assert row.a.mean == pytest.approx(np.mean(per_seed["rft"])) and row.reached == 1.0
        sd = np.std(per_seed["rft"], ddof=1)
        assert row.a.half_width == pytest.approx(3.182446 * sd / 2, rel=1e-5)  # t(0.975, 3), 4 seeds
    # At 6: RFT -3.0 +- ..., SFT -8.75: different, and its 90% interval is not inside +-3.
    assert rows[2].difference.mean == pytest.approx(np.mean([-3.0, -4.75, -2.0, -3.75]) - np.mean(
        [-8.5, -11.0, -7.25, -9.75]))
    assert rows[2].verdict == "different"
    # P[t][t] is gain over base plus a constant here: the same matched values
    diag = [row for row in result.rows if row.x_key == "diagonal"]
    assert [row.difference.mean for row in diag] == pytest.approx([row.difference.mean for row in rows])


def test_a_point_with_fewer_seeds_is_off_the_curve_and_a_collapse_ends_it():
    rft = grid("rft")
    collapsed = experiment("rft", 8e-5, -5.0, (-40.0, -50.0, -45.0, -42.0))  # learns less than 4e-5: past the top
    few = experiment("sft", 8e-5, 9.0, (-20.0, -25.0), seeds=(0, 1))
    found = families([*rft, collapsed, *grid("sft"), few])
    result = compare(found[0], found[1], {"fm": None})
    assert [p.name for p in result.curves[found[0]]] == ["RFT lr 1e-05", "RFT lr 2e-05", "RFT lr 4e-05"]
    assert [p.name for p in result.left_out] == ["SFT lr 8e-05"]
    assert {row.verdict for row in result.rows} == {"-"}  # no margin, no verdict


def test_curves_that_do_not_overlap_match_nothing():
    high = [experiment("sft", lr, gain + 20.0, fms) for lr, gain, fms in zip(LRS, GAINS, FM["sft"])]
    found = families([*grid("rft"), *high])
    result = compare(found[0], found[1], {"fm": 3.0})
    assert result.rows == () and result.ranges[("gain_over_base", found[1])] == (20.0, 28.0)
    assert result.reasons["gain_over_base"].startswith("the curves do not overlap: RFT, optim.lr 1e-05 to 4e-05 0.0 "
                                                       "to 8.0; SFT, optim.lr 1e-05 to 4e-05 20.0 to 28.0")


def test_a_dip_before_the_top_is_off_the_curve_and_one_seed_matches_nothing():
    # gains 5, 2, 6, 8: the rise without a break up to the top starts at the dip (2)
    dipped = [experiment("rft", lr, gain, FM["rft"][0]) for lr, gain in zip((1e-5, 2e-5, 3e-5, 4e-5),
                                                                              (5.0, 2.0, 6.0, 8.0))]
    found = families([*dipped, *grid("sft")])
    result = compare(found[0], found[1], {"fm": None})
    assert [p.name for p in result.curves[found[0]]] == ["RFT lr 2e-05", "RFT lr 3e-05", "RFT lr 4e-05"]
    single = [experiment(m, lr, gain, fms[:1], seeds=(0,)) for m in ("rft", "sft")
              for lr, gain, fms in zip(LRS, GAINS, FM[m])]
    found = families(single)
    result = compare(found[0], found[1], {"fm": None})
    assert result.rows == () and "share 1 seed(s)" in result.reasons["gain_over_base"]


def test_families_of_one_method_and_key_are_told_apart():
    low_kl = grid("rft")
    high_kl = [experiment("rft", lr, gain, fms, extra={"rft.kl.coef": 0.1})
               for lr, gain, fms in zip(LRS, GAINS, FM["rft"])]
    found = families([*low_kl, *high_kl])
    assert [f.label for f in found] == ["RFT, optim.lr 1e-05 to 4e-05 (rft.kl.coef=0.01)",
                                        "RFT, optim.lr 1e-05 to 4e-05 (rft.kl.coef=0.1)"]
    result = compare(*found, {"fm": None})
    assert set(result.curves) == set(found) and result.rows  # each its own curve (the same numbers here)


def test_where_learning_varies_by_seed_the_curve_moves_with_each_resample():
    # the same construction, no longer exactly t: finite, around the point, narrower than nothing
    rng = np.random.default_rng(0)
    runs = []
    for method in ("rft", "sft"):
        for lr, gain, fms in zip(LRS, GAINS, FM[method]):
            gains = [gain + d for d in rng.normal(0, 0.5, len(SEEDS))]
            values = [{"gain": g, "gain_over_base": g, "diagonal": 50.0 + g, "fm": fm, "avg_acc": 60.0}
                      for g, fm in zip(gains, fms)]
            e = experiment(method, lr, gain, fms)
            runs.append(Experiment(e.name, e.runs, values, e.config, list(SEEDS)))
    found = families(runs)
    rows = [row for row in compare(found[0], found[1], {"fm": 3.0}).rows if row.x_key == "gain_over_base"]
    assert len(rows) == 3
    for row in rows:
        low, high = row.difference.interval()
        assert low < row.difference.mean < high and row.reached >= 0.9


def test_compare_writes_the_grids_the_matched_values_and_the_figure(tmp_path, capsys):
    """Through the command: six-task-free runs written as `cpt fit` writes them, two methods at three lrs."""
    from cpt.commands.compare import main

    dirs = []
    for method in ("rft", "sft"):
        for lr, gain, fms in zip(LRS, GAINS, FM[method]):
            for seed, fm in zip(SEEDS, fms):
                # count learned by `gain` then forgotten by -fm; colour learned by `gain`: gain over base = gain
                matrix = [[50.0, 40.0], [50.0 + gain, 40.0], [50.0 + gain + fm, 40.0 + gain]]
                dirs.append(write_seed(tmp_path / f"{method}-{lr:g}/seed{seed}", f"{method.upper()} lr {lr:g}",
                                       method, seed, matrix, [40.0, 40.0, 40.0 + seed], lr))
    out = tmp_path / "cmp"
    assert main([*map(str, dirs), "--out", str(out), "--primary", "RFT lr 2e-05", "SFT lr 2e-05",
                 "--margin", "fm=3"]) == 0
    text = capsys.readouterr().out
    grids = text.split("where each one's best AvgAcc lies")[1]
    assert "optim.lr: 1e-05, 2e-05, 4e-05" in grids and "4e-05 (50.8 ± 1.0), at its edge" in grids  # AvgAcc 53 + FM / 2
    with open(out / "matched_plasticity.csv") as f:
        rows = list(csv.DictReader(f))
    fm_rows = [r for r in rows if r["plasticity"] == "gain_over_base" and r["measure"] == "fm"]
    assert [float(r["x"]) for r in fm_rows] == [2.0, 4.0, 6.0]
    assert float(fm_rows[1]["difference"]) == pytest.approx(np.mean(FM["rft"][1]) - np.mean(FM["sft"][1]))
    assert {r["measure"] for r in rows} == {"fm", "general_change"}  # the general set too (no margin: no verdict)
    assert {r["verdict"] for r in rows if r["measure"] == "general_change"} == {"-"}
    assert (out / "tradeoff_curves.png").stat().st_size > 10_000
    assert "Forgetting at matched plasticity" in (out / "comparison.md").read_text()


def test_matched_plasticity_of_experiments_without_a_family_is_empty():
    assert matched_plasticity(grid("rft")[:2], {"fm": 3.0}) == ([], [])
