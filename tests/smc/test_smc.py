"""Similarity matrix completion: S0, SMCNN/SMCNmF, baselines, metrics, the command line."""

import json
import math

import numpy as np
import pytest
import torch

from cpt.cli import main
from cpt.smc import complete, cosine, observed_cosine
from cpt.smc.baselines import (
    calibrate_columns,
    dmc,
    impute_mean,
    observed_or_zero,
    one_step_smc,
    one_step_smc_block,
    psd_factor,
    split,
    svc,
)
from cpt.smc.bench import extrapolated_dmc, missing_at_random, synthetic, timing_table
from cpt.smc.cli import read_matrix
from cpt.smc.finishing import finish
from cpt.smc.metrics import (
    ndcg_at_fraction,
    ranking_scores,
    recall_at_fraction,
    recall_at_k,
    relative_error,
    scores,
    spectral_floor,
    top_count,
)
from cpt.smc.similarity import SimilarityInputError

NAN = float("nan")


def test_observed_cosine_by_hand():
    X = torch.tensor([[1.0, 2.0, 3.0, NAN], [2.0, 1.0, NAN, 1.0], [1.0, NAN, 1.0, 1.0], [NAN, NAN, NAN, 5.0]],
                     dtype=torch.float64)
    S0 = observed_cosine(X, block_rows=3)  # two blocks
    assert S0[0, 1] == pytest.approx(4 / 5)  # features 0 and 1: (1*2 + 2*1) / (sqrt 5 * sqrt 5)
    assert S0[0, 2] == pytest.approx(4 / math.sqrt(20))  # features 0 and 2: (1 + 3) / (sqrt 10 * sqrt 2)
    assert S0[1, 2] == pytest.approx(3 / math.sqrt(10))  # features 0 and 3: (2 + 1) / (sqrt 5 * sqrt 2)
    assert S0[1, 3] == pytest.approx(1.0) and math.isnan(S0[0, 3])  # 0 and 3 share no feature
    # exactly symmetric: the blocks below the diagonal are the transposes of those above
    assert torch.equal(S0.isnan(), S0.T.isnan()) and torch.equal(S0.nan_to_num(), S0.T.nan_to_num())
    assert S0.diagonal().tolist() == [1.0] * 4
    assert torch.equal(S0.nan_to_num(), observed_cosine(X, block_rows=1).nan_to_num())  # one row per block
    assert torch.allclose(observed_cosine(X[:2, :2]), cosine(X[:2, :2]))  # complete data: the plain cosine


def test_completion_is_symmetric_psd_and_beats_s0_and_dmc_on_low_rank_data():
    X = synthetic(400, features=30, rank=4, ratio=0.5, seed=1).double()
    truth = cosine(synthetic(400, features=30, rank=4, ratio=0.0, seed=1).double())
    S0 = observed_cosine(X)
    floor = min(relative_error(observed_or_zero(S0), truth), relative_error(dmc(S0), truth))
    for method in ("smcnn", "smcnmf"):
        result = complete(S0, method, rank=30)
        S = result.S
        assert torch.allclose(S, S.T, atol=1e-12)
        assert torch.linalg.eigvalsh(S).min() > -1e-8  # PSD
        assert torch.allclose(S.diagonal(), torch.ones(400, dtype=S.dtype))  # a cosine matrix
        assert result.converged and result.effective_rank < 30  # the regularizer left columns unused
        assert relative_error(S, truth) < 0.85 * floor, method  # a clear margin over S0 and DMC
        assert recall_at_k(S, truth) > recall_at_k(dmc(S0), truth)


def test_smcnmf_shrinks_the_leading_eigenvalue_less():
    S0 = observed_cosine(synthetic(200, features=20, rank=3, ratio=0.5, seed=2).double())
    nn = complete(S0, "smcnn", rank=20, lam=20.0, finish="none").S
    nmf = complete(S0, "smcnmf", rank=20, lam=20.0, finish="none").S
    top = lambda S: float(torch.linalg.eigvalsh(S)[-1])  # noqa: E731
    assert top(nn) < top(nmf) <= top(dmc(S0)) + 1e-6


def test_unmasked_optimum_is_the_shrunk_spectrum():
    """Fully observed: the SMCNN optimum is S0's eigenvalues minus lam / 2, clipped at 0."""
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    S0 = A @ A.T / 30 + 0.2 * (lambda E: E + E.T)(torch.randn(30, 30, generator=generator, dtype=torch.float64))
    w, U = torch.linalg.eigh(S0)
    expected = (U * (w - 0.5).clamp_min(0)) @ U.T
    result = complete(S0, "smcnn", rank=30, lam=1.0, finish="none", tol=1e-12, max_iter=2000)
    assert relative_error(result.S, expected) < 1e-4


def test_plus_diagonal_keeps_the_shrinkage_that_the_rescale_undoes():
    """S0 = [[1, .5], [.5, 1]] (eigenvalues 1.5 and .5), lam = 1.2: SMCNN shrinks them by .6 to .9 and 0, so
    V V^T = .9 u u^T = .45 everywhere (u = (1, 1) / sqrt 2). The unit-diagonal rescale divides .45 by .45: 1 off the
    diagonal, the shrinkage undone. With the diagonal, Psi = 1 - .45 = .55 and S = [[1, .45], [.45, 1]] under
    either finishing step. SMCNmF (alpha = 1) leaves a rank-one part unshrunk: 1.5 u u^T = .75, Psi = .25."""
    S0 = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    plain = complete(S0, rank=2, lam=1.2, finish="none", plus_diagonal=False, tol=1e-12)
    assert torch.allclose(plain.S, torch.full((2, 2), 0.45, dtype=torch.float64), atol=1e-6) and plain.diagonal is None
    rescaled = complete(S0, rank=2, lam=1.2, plus_diagonal=False, tol=1e-12).S
    assert torch.allclose(rescaled, torch.ones(2, 2, dtype=torch.float64), atol=1e-6)
    for how in ("none", "unit-diagonal"):
        kept = complete(S0, rank=2, lam=1.2, finish=how, plus_diagonal=True, tol=1e-12)
        assert torch.allclose(kept.S, torch.tensor([[1.0, 0.45], [0.45, 1.0]], dtype=torch.float64), atol=1e-6)
        assert torch.allclose(kept.diagonal, torch.full((2,), 0.55, dtype=torch.float64), atol=1e-6)
    nmf = complete(S0, "smcnmf", rank=2, lam=1.2, finish="none", plus_diagonal=True, tol=1e-12)
    assert torch.allclose(nmf.S, torch.tensor([[1.0, 0.75], [0.75, 1.0]], dtype=torch.float64), atol=1e-6)
    # the diagonal is max(S0_ii, ||v_i||^2): Psi is never negative; a missing self-similarity adds nothing
    S0 = observed_cosine(synthetic(40, features=6, rank=3, ratio=0.2, seed=1).double())
    S0[3, 3] = NAN
    kept = complete(S0, rank=6, finish="none", plus_diagonal=True)
    low_rank = kept.V.square().sum(1)
    assert kept.diagonal[3] == 0 and kept.S[3, 3] == pytest.approx(float(low_rank[3]))
    others = torch.arange(40) != 3
    assert torch.allclose(kept.S.diagonal()[others], low_rank[others].clamp_min(1))
    assert (low_rank[others] > 1).any() and (low_rank[others] < 1).any()  # both sides of the clamp are exercised
    assert torch.linalg.eigvalsh(kept.S)[0] > -1e-10


def test_masked_variant_fits_only_the_observed_entries():
    generator = torch.Generator().manual_seed(3)
    V = torch.randn(120, 3, generator=generator, dtype=torch.float64)
    truth = V @ V.T
    hidden = torch.rand(120, 120, generator=generator) < 0.3
    hidden = (hidden | hidden.T).fill_diagonal_(False)
    S0 = truth.masked_fill(hidden, NAN)
    result = complete(S0, "smcnn", rank=3, lam=0.0, finish="none", tol=1e-12, max_iter=2000)
    # The hidden entries come back from the observed ones (reading them as 0 would be off by their whole size).
    assert relative_error(result.S[hidden], truth[hidden]) < 1e-3
    # At the solution the masked objective is stationary; the one that reads hidden entries as 0 is not.
    V_hat = result.V.clone().requires_grad_(True)
    for mask, stationary in ((~hidden, True), (torch.ones_like(hidden), False)):
        V_hat.grad = None
        ((mask * (V_hat @ V_hat.T - S0.nan_to_num())) ** 2).sum().backward()
        assert bool(V_hat.grad.norm() < 1e-3 * truth.norm()) is stationary


def test_sparse_and_dense_masks_agree(monkeypatch):
    import cpt.smc.solvers as solvers

    X = missing_at_random(torch.randn(150, 4, dtype=torch.float64), 0.6, seed=0)
    S0 = observed_cosine(X)
    assert S0.isnan().any()
    before = S0.clone()
    monkeypatch.setattr(solvers, "SPARSE_MISSING", 1.0)
    sparse = complete(S0, rank=4, lam=0.5)  # S0's NaNs set to 0 in place for the fit, then put back
    assert torch.equal(S0.isnan(), before.isnan()) and torch.equal(S0.nan_to_num(), before.nan_to_num())
    copied = complete(S0.T, rank=4, lam=0.5)  # not contiguous: a copy instead
    monkeypatch.setattr(solvers, "SPARSE_MISSING", -1.0)
    dense = complete(S0, rank=4, lam=0.5)
    assert torch.allclose(sparse.S, dense.S, atol=1e-8) and torch.allclose(sparse.S, copied.S, atol=1e-8)


def test_bad_input_is_named():
    with pytest.raises(SimilarityInputError, match="square, got shape \\(3, 4\\)"):
        complete(torch.zeros(3, 4))
    with pytest.raises(SimilarityInputError, match="every entry of the similarity matrix is missing"):
        complete(torch.full((3, 3), NAN))
    S = torch.eye(3)
    S[1, :] = NAN
    S[:, 1] = NAN
    with pytest.raises(SimilarityInputError, match="1 row\\(s\\) have no observed entry, e.g. row 1"):
        complete(S)
    with pytest.raises(SimilarityInputError, match="not symmetric"):
        complete(torch.tensor([[1.0, 0.5], [0.2, 1.0]]))
    with pytest.raises(SimilarityInputError, match="every value of the data is missing"):
        observed_cosine(torch.full((3, 2), NAN))
    with pytest.raises(SimilarityInputError, match="2 sample\\(s\\) have no observed value, e.g. row 0"):
        observed_cosine(torch.tensor([[NAN, NAN], [1.0, 2.0], [NAN, NAN]]))
    with pytest.raises(ValueError, match="unknown method 'svd'"):
        complete(torch.eye(3), "svd")


def test_baselines_and_metrics_by_hand():
    X = torch.tensor([[1.0, NAN], [3.0, 4.0], [NAN, 2.0]])
    assert impute_mean(X).tolist() == [[1.0, 3.0], [3.0, 4.0], [2.0, 2.0]]
    psd = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    assert torch.allclose(dmc(psd), psd)
    assert torch.allclose(dmc(torch.tensor([[1.0, 2.0], [2.0, 1.0]])), torch.full((2, 2), 1.5))  # eigenvalue -1 cut
    assert relative_error(torch.zeros(2, 2), psd) == pytest.approx(1.0)
    truth = torch.tensor([[1, 0.9, 0.1, 0.2], [0.9, 1, 0.3, 0.1], [0.1, 0.3, 1, 0.8], [0.2, 0.1, 0.8, 1]])
    guess = truth.clone()
    guess[0, 1], guess[0, 3] = 0.0, 0.95  # row 0's nearest becomes 3 instead of 1
    assert recall_at_k(truth, truth, 1) == 1.0 and recall_at_k(guess, truth, 1) == pytest.approx(3 / 4)


def test_spectral_floor_by_hand_and_as_a_bound():
    # S0's eigenvectors are (1, 1)/sqrt 2 and (1, -1)/sqrt 2 whatever its off-diagonal entry; a truth that shares
    # them is reached exactly, diag(1, 0) gets 1/2 on each: || I/2 - diag(1, 0) || / || diag(1, 0) || = sqrt(1/2).
    S0 = torch.tensor([[1.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    shared = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    assert spectral_floor(S0, shared) == pytest.approx(0, abs=1e-12)
    assert spectral_floor(S0, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)) == pytest.approx(0.5 ** 0.5)
    # Fully observed, SMCNN's optimum keeps S0's eigenvectors: no rank or lam gets below the floor.
    truth = cosine(synthetic(150, features=20, rank=4, ratio=0.0, seed=4).double())
    S0 = observed_cosine(synthetic(150, features=20, rank=4, ratio=0.4, seed=4).double())
    assert not S0.isnan().any()  # every pair shares a feature: the unmasked fit
    floor = spectral_floor(S0, truth)
    assert 0 < floor < relative_error(S0, truth)
    for rank, lam in ((2, 0.0), (4, 1.0), (20, 4.0)):
        assert relative_error(complete(S0, rank=rank, lam=lam, finish="none").S, truth) >= floor


def test_complete_command(tmp_path, capsys):
    X = missing_at_random(torch.randn(60, 5, dtype=torch.float64), 0.3, seed=0).numpy()
    np.savetxt(tmp_path / "data.csv", X, delimiter=",")  # NaN written as "nan"
    assert main(["smc", "complete", str(tmp_path / "data.csv"), str(tmp_path / "S.npy"), "--method", "smcnmf"]) == 0
    S = np.load(tmp_path / "S.npy")
    assert S.shape == (60, 60) and np.allclose(S, S.T) and np.linalg.eigvalsh(S).min() > -1e-8
    assert "smcnmf: n=60" in capsys.readouterr().out
    assert main(["smc", "complete", str(tmp_path / "data.csv"), str(tmp_path / "D.npy"), "--plus-diagonal"]) == 0
    S0 = observed_cosine(torch.as_tensor(X))
    assert np.allclose(np.load(tmp_path / "D.npy"), complete(S0, rank=5, plus_diagonal=True).S.numpy())
    assert not np.allclose(np.load(tmp_path / "D.npy"), complete(S0, rank=5).S.numpy())
    assert "smcnn + diagonal: n=60" in capsys.readouterr().out
    np.save(tmp_path / "rect.npy", np.zeros((3, 4)))
    assert main(["smc", "complete", str(tmp_path / "rect.npy"), str(tmp_path / "o.csv"), "--similarity"]) == 2
    assert "square, got shape (3, 4)" in capsys.readouterr().err
    assert main(["smc", "complete", str(tmp_path / "missing.npy"), str(tmp_path / "o.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_writes_tables_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["smc", "bench", "--datasets", "wine", "--ratios", "0.5", "--seeds", "1", "--sizes", "300",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted({r["method"] for r in rows["accuracy"]}) == sorted(
        ["S0", "DMC", "one-step SMC", "one-step SMC (block)", "SVC", "mean", "kNN", "SVT", "SMCNN", "SMCNmF",
         "SMCNN + diagonal", "SMCNmF + diagonal", "floor"])
    assert {r["finish"] for r in rows["accuracy"]} == {"unit-diagonal", "none"}
    smc = next(r for r in rows["accuracy"] if r["method"] == "one-step SMC")
    assert {"error", "recall10", "recall20pct", "ndcg20pct"} <= set(smc) and smc["least_eigenvalue"] > -1e-8
    error = {r["method"]: r["error"] for r in rows["accuracy"] if r["finish"] == "none"}
    # SMCNN's fit, unfinished, keeps S0's eigenvectors: it cannot go below the floor
    assert error["floor"] < error["S0"] and error["SMCNN"] >= error["floor"]
    assert {r["method"] for r in rows["timing"]} == {"S0 (shared)", "SMCNN", "SMCNmF", "DMC"}
    # each step's peak resident memory in the child, S0 (300 x 300) and torch included: above 0.05 GB, below 5
    assert all(0.05 < r["peak_gb"] < 5 and r["peak_reset"] for r in rows["timing"])
    assert {r.get("dtype") for r in rows["timing"]} == {None, "float32"}
    assert (out / "smc_bench.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| wine | 0.5 |" in printed and "| 300 |" in printed and "nDCG@20%" in printed
    assert f"| {error['floor']:.3f} |" in printed  # the floor's column, last


def test_bench_keeps_earlier_rows_and_runs_only_what_is_new(tmp_path, monkeypatch, capsys):
    from cpt.smc import bench

    out = tmp_path / "bench"
    options = ["--datasets", "iris", "--ratios", "0.5", "--seeds", "1", "--first-seed", "10", "--sizes", "--out",
               str(out)]
    assert bench.main(options) == 0
    first = json.loads((out / "results.json").read_text())["accuracy"]
    assert {r["seed"] for r in first} == {10} and {r["dataset"] for r in first} == {"iris"}
    # the same cases again: every row is kept, no method runs
    monkeypatch.setattr(bench, "estimate", lambda *args: pytest.fail("a kept row was computed again"))
    assert bench.main(options) == 0
    assert json.loads((out / "results.json").read_text())["accuracy"] == first
    assert f"Keeping the {len(first)} accuracy rows" in capsys.readouterr().out
    # a method the earlier run lacks is the only one computed; the others are kept as they were
    kept = [r for r in first if r["method"] != "SMCNN + diagonal"]
    (out / "results.json").write_text(json.dumps({"accuracy": kept, "timing": []}))
    ran = []
    monkeypatch.setattr(bench, "estimate", lambda method, *args: ran.append(method) or torch.eye(150).double())
    assert bench.main(options) == 0
    again = json.loads((out / "results.json").read_text())["accuracy"]
    assert ran == ["SMCNN + diagonal"] and [r for r in again if r["method"] != "SMCNN + diagonal"] == kept
    # a file that is not a bench's results is named and left as it was
    (out / "results.json").write_text('{"rows": []}')
    assert main(["smc", "bench"] + options) == 2
    assert "is not an earlier bench's results" in capsys.readouterr().err
    assert (out / "results.json").read_text() == '{"rows": []}'


def test_a_csv_with_text_is_refused_at_its_first_non_numeric_cell(tmp_path, capsys):
    (tmp_path / "text.csv").write_text("1,0.5,\n0.5, abc ,1\nx,1,1\n")
    assert main(["smc", "complete", str(tmp_path / "text.csv"), str(tmp_path / "o.csv")]) == 2
    assert "row 2, column 2 holds ' abc ', not a number" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    (tmp_path / "ragged.csv").write_text("1,0.5\n0.5\n")
    assert main(["smc", "complete", str(tmp_path / "ragged.csv"), str(tmp_path / "o.csv")]) == 2
    assert "row 2 has 1 values, row 1 has 2" in capsys.readouterr().err
    # Empty cells and nan are the missing values.
    (tmp_path / "ok.csv").write_text("1,,0.5\n0.2,NaN,1\n0.3,0.1,\n")
    assert np.isnan(read_matrix(tmp_path / "ok.csv")).tolist() == [[False, True, False], [False, True, False],
                                                                    [False, False, True]]


def rotation() -> torch.Tensor:
    """An orthogonal 3 x 3 (columns u1, u2, u3): a rotation by 30 degrees about the third axis."""
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_calibration_shrinkage_by_hand():
    # Offline S = U diag(4, 1, 0) U^T, C = U diag(2, 1, 0). Columns given by their coordinates y0 (v0 = C y0):
    #   (3, 0, 0) plus 5 u3 (outside C's range: the pseudo-inverse drops it): ||y0||^2 = 9 > 1, and
    #     (4 / (4 + lam))^2 9 = 1 gives lam = 8, y = (1, 0, 0), calibrated C y = 2 u1;
    #   (1, 1.2, 0): ||y0||^2 = 2.44 > 1, (4/5)^2 + (1.2/2)^2 = 1 at lam = 1: y = (0.8, 0.6, 0), C y = 1.6 u1 + 0.6 u2;
    #   (0.6, 0.8, 0): ||y0||^2 = 1 <= c: kept, lam = 0.
    U, s = rotation(), torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    C = U * s.sqrt()
    Y0 = torch.tensor([[3.0, 1.0, 0.6], [0.0, 1.2, 0.8], [0.0, 0.0, 0.0]], dtype=torch.float64)
    V0 = C @ Y0
    V0[:, 0] += 5 * U[:, 2]
    Y, lam = calibrate_columns(U, s, V0, c=1.0)
    assert lam.tolist() == pytest.approx([8.0, 1.0, 0.0], abs=1e-3)
    assert Y.T.tolist() == [pytest.approx(row, abs=1e-4) for row in ([1, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0])]
    norms = (Y * Y).sum(0)
    assert bool((norms <= 1).all()) and bool((norms >= 1 - 1e-4).all())  # the bisection's upper end: never above c
    assert torch.allclose(C @ Y[:, :2], torch.stack([2 * U[:, 0], 1.6 * U[:, 0] + 0.6 * U[:, 1]], 1), atol=1e-4)
    # c = 4 leaves the first column's ||y0||^2 = 9 shrunk to 4: 4 / (4 + lam) * 3 = 2, lam = 2
    assert float(calibrate_columns(U, s, V0[:, :1], c=4.0)[1][0]) == pytest.approx(2.0, abs=1e-3)


def test_block_form_and_svc_block_structure_by_hand():
    # Samples 0-2 offline (S above, already PSD, so DMC keeps it), 3-5 online with the three columns above.
    U, s = rotation(), torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    C = U * s.sqrt()
    Y0 = torch.tensor([[3.0, 1.0, 0.6], [0.0, 1.2, 0.8], [0.0, 0.0, 0.0]], dtype=torch.float64)
    online = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # eigenvalue -1
    S0 = torch.cat([torch.cat([(U * s) @ U.T, C @ Y0], 1), torch.cat([(C @ Y0).T, online], 1)])
    Y = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.8], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for method in (one_step_smc_block, svc):
        S = method(S0, offline=3, c=1.0)
        assert torch.allclose(S[:3, :3], S0[:3, :3]) and torch.allclose(S[:3, 3:], C @ Y, atol=1e-4)
        assert torch.allclose(S[3:, :3], S[:3, 3:].T)
    # the block form: online-online = y_i . y_j, c on the diagonal: 1.0 * 0.8 = 0.8, 1.0 * 0.6 = 0.6, 0.48 + 0.48
    expected = torch.tensor([[1.0, 0.8, 0.6], [0.8, 1.0, 0.96], [0.6, 0.96, 1.0]], dtype=torch.float64)
    assert torch.allclose(one_step_smc_block(S0, offline=3)[3:, 3:], expected, atol=1e-4)
    # SVC: DMC of the online block, eigenvalues 3, -1, 1 -> the -1 cut: [[1.5, 1.5, 0], [1.5, 1.5, 0], [0, 0, 1]]
    assert torch.allclose(svc(S0, offline=3, c=1.0)[3:, 3:], torch.tensor(
        [[1.5, 1.5, 0.0], [1.5, 1.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    # offline given as indices: the same result on a permuted matrix
    order = torch.tensor([3, 0, 4, 1, 5, 2])
    for method in (one_step_smc, one_step_smc_block):
        permuted = method(S0[order][:, order], offline=torch.tensor([1, 3, 5]))
        assert torch.allclose(permuted, method(S0, offline=3)[order][:, order])
    off, on = split(6, None, seed=0)  # default: a random half
    assert len(off) == 3 and sorted(off.tolist() + on.tolist()) == list(range(6))
    with pytest.raises(ValueError, match="between 1 and 5"):
        svc(S0, offline=6)


def test_one_step_smc_grows_sample_by_sample_as_its_authors_run_it():
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    # Sample 0 offline, 1 and 2 online, c = 1. Sample 1's 0.6 fits (0.36 <= 1) and is kept; the matrix so far is
    # [[1, .6], [.6, 1]]: eigenvalues 1.6 on u1 = (1, 1)/sqrt 2 and 0.4 on u2 = (1, -1)/sqrt 2. Sample 2's raw
    # similarities to both, (0.9, 0.9), lie on u1: ||y0||^2 = 0.81 * 2 / 1.6 = 1.0125 > 1, so y shrinks along u1
    # until ||y||^2 = 1, and the calibrated vector is sqrt(1.6 * 1) u1 = (sqrt .8, sqrt .8) = (0.8944, 0.8944).
    S0 = t([[1, .6, .9], [.6, 1, .9], [.9, .9, 1]])
    root = 0.8 ** 0.5
    assert torch.allclose(one_step_smc(S0, offline=1), t([[1, .6, root], [.6, 1, root], [root, root, 1]]), atol=1e-4)
    # The block form calibrates sample 2 against sample 0 alone (0.81 <= 1: kept at 0.9) and takes S12 from the
    # coordinates, y1 y2 = 0.6 * 0.9: it never reads the raw 0.9 between the two online samples.
    assert torch.allclose(one_step_smc_block(S0, offline=1), t([[1, .6, .9], [.6, 1, .54], [.9, .54, 1]]))
    # Where the raw vector fits (0.8, 0.9: ||y0||^2 = 0.915625 <= 1), the sequential form keeps it as it is.
    fits = t([[1, .6, .8], [.6, 1, .9], [.8, .9, 1]])
    assert torch.allclose(one_step_smc(fits, offline=1), fits)
    # Two offline samples, two online: the grown 3 x 3 matrix changes all three entries of the last row
    # (0.9, 0.9, 0.1 -> 0.7977, 0.8326, 0.1549; the block form: 0.8660, 0.8660, 0.4619), from the authors' formulas
    # computed apart from this code.
    four = t([[1, .5, .6, .9], [.5, 1, .2, .9], [.6, .2, 1, .1], [.9, .9, .1, 1]])
    assert one_step_smc(four, offline=2)[3, :3].tolist() == pytest.approx([0.7977, 0.8326, 0.1549], abs=2e-4)
    assert one_step_smc_block(four, offline=2)[3, :3].tolist() == pytest.approx([0.8660, 0.8660, 0.4619], abs=2e-4)
    # c is each sample's own S0[i, i] unless given; a missing one is named
    scaled = four.clone()
    scaled[3, 3] = 2.0
    assert float(one_step_smc(scaled, offline=2)[3, 3]) == 2.0
    scaled[3, 3] = NAN
    with pytest.raises(ValueError, match=r"sample 3's self-similarity S0\[3, 3\] is nan"):
        one_step_smc(scaled, offline=2)


def test_svc_takes_c_from_the_calibrated_offline_block():
    # The offline block [[1, 1.2], [1.2, 1]] has eigenvalues 2.2 and -0.2; DMC keeps 1.1 [[1, 1], [1, 1]], whose
    # last diagonal entry, 1.1, is SVC's c: the online sample's vector (1.2, 1.2) has ||y0||^2 = 2.88 / 2.2 > 1.1
    # and shrinks to ||y||^2 = 1.1 on u1 = (1, 1)/sqrt 2: C y = sqrt(2.2 * 1.1) u1 = (1.1, 1.1). With c = 1 it
    # would be sqrt(2.2) u1 = (1.0488, 1.0488).
    S0 = torch.tensor([[1, 1.2, 1.2], [1.2, 1, 1.2], [1.2, 1.2, 1]], dtype=torch.float64)
    assert svc(S0, offline=2)[:2, 2].tolist() == pytest.approx([1.1, 1.1], abs=1e-4)
    assert svc(S0, offline=2, c=1.0)[:2, 2].tolist() == pytest.approx([2.2 ** 0.5 / 2 ** 0.5] * 2, abs=1e-4)


def test_the_finishing_step_is_one_function_for_every_method(tmp_path, monkeypatch):
    S = torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    assert finish(S, "unit-diagonal").tolist() == [[1.0, 1.0], [1.0, 1.0]] and finish(S, "none") is S
    with pytest.raises(ValueError, match="unknown finishing step 'clip'"):
        finish(S, "clip")
    # complete() finishes through it: its default is the unfinished result after the same step
    S0 = observed_cosine(synthetic(80, features=10, rank=3, ratio=0.3, seed=2).double())
    raw = complete(S0, rank=10, finish="none").S
    assert torch.allclose(complete(S0, rank=10).S, finish(raw, "unit-diagonal"), atol=1e-12)
    # the bench: two methods that return the same matrix score the same, after either finishing step
    from cpt.smc import bench

    same = raw.clone()
    monkeypatch.setattr(bench, "estimate", lambda method, Xm, S0, seed: same.clone())
    monkeypatch.setattr(bench, "load", lambda name: synthetic(80, features=10, rank=3, ratio=0.0, seed=2).double())
    rows = bench.accuracy_rows([0.3], [2], ["wine"], progress=False)
    truth = cosine(synthetic(80, features=10, rank=3, ratio=0.0, seed=2).double())
    for how in ("unit-diagonal", "none"):
        scored = [r for r in rows if r.get("finish") == how and r["method"] != bench.FLOOR]
        assert {r["method"] for r in scored} == set(bench.METHODS)
        assert all(r["error"] == pytest.approx(scores(finish(same, how), truth)["error"]) for r in scored)
    assert scores(finish(same, "unit-diagonal"), truth)["error"] != pytest.approx(scores(same, truth)["error"])


def test_calibrations_are_psd_where_their_construction_says():
    X = missing_at_random(synthetic(120, features=10, rank=3, ratio=0.0, seed=5).double(), 0.6, seed=5)
    S0 = observed_cosine(X)
    assert torch.linalg.eigvalsh(S0.nan_to_num())[0] < -0.5  # S0 itself is far from PSD
    smc = one_step_smc(S0, seed=1)
    assert torch.linalg.eigvalsh(smc)[0] > -1e-8  # the whole matrix: each step borders a PSD matrix, PSD again
    block = one_step_smc_block(S0, seed=1)
    assert torch.linalg.eigvalsh(block)[0] > -1e-8  # W W^T plus a nonnegative diagonal
    assert torch.allclose(smc, smc.T)
    off, on = split(120, None, seed=1)
    S = svc(S0, seed=1)
    assert torch.allclose(S, S.T) and torch.allclose(S[off][:, off], smc[off][:, off])
    assert torch.linalg.eigvalsh(S[off][:, off])[0] > -1e-8 and torch.linalg.eigvalsh(S[on][:, on])[0] > -1e-8
    c = float(S[off[-1], off[-1]])  # SVC's c: the calibrated offline block's last diagonal entry
    for j in on.tolist():  # the offline block bordered by any one calibrated sample, c in the corner
        rows = torch.cat([off, torch.tensor([j])])
        bordered = S[rows][:, rows].clone()
        bordered[-1, -1] = c
        assert torch.linalg.eigvalsh(bordered)[0] > -1e-8
    # and the shrinkage did act: some online samples had ||y0||^2 > 1 before it
    U, s = psd_factor(S0[off][:, off])
    assert int((calibrate_columns(U, s, S0[off][:, on])[1] > 0).sum()) > 10


def test_ranking_metrics_by_hand():
    assert [top_count(n) for n in (2, 11, 178, 569, 1797)] == [1, 2, 35, 114, 359]  # 0.2 (n - 1), half up
    generator = torch.Generator().manual_seed(0)
    A = torch.rand(5, 5, generator=generator, dtype=torch.float64)
    truth = A + A.T  # distinct entries: no ties
    order = (truth[0, 1:]).argsort(descending=True) + 1  # row 0's others, most similar first
    first, second, third = order[:3].tolist()
    # k = 2: relevance of the true 1st = 1, of the 2nd = 1/2; ideal DCG = 1 + (1/2) / log2 3
    ideal = 1 + 0.5 / math.log2(3)
    guess = truth.clone()
    guess[0, 1:] = 0.0
    guess[0, second], guess[0, third] = 0.9, 0.8  # row 0's estimate: the true 2nd, then the true 3rd
    recall, ndcg = ranking_scores(guess, truth, 2)
    assert recall == pytest.approx((4 + 1 / 2) / 5)  # the other rows are exact
    assert ndcg == pytest.approx((4 + 0.5 / ideal) / 5)  # DCG of row 0: 1/2 at position 1, 0 at 2
    guess[0, first], guess[0, third] = 0.8, 0.0  # the true 2nd, then the true 1st: all found, in the wrong order
    recall, ndcg = ranking_scores(guess, truth, 2)
    assert recall == 1.0 and ndcg == pytest.approx((4 + (0.5 + 1 / math.log2(3)) / ideal) / 5)
    assert recall_at_fraction(guess, truth, 0.5) == recall and ndcg_at_fraction(guess, truth, 0.5) == ndcg
    assert recall_at_k(truth, truth, 4) == 1.0 and ndcg_at_fraction(truth, truth, 1.0) == pytest.approx(1.0)
    assert set(scores(truth, truth)) == {"error", "recall10", "recall20pct", "ndcg20pct"}


def test_float32_path_matches_float64_and_holds_no_float64_square():
    from torch.overrides import TorchFunctionMode

    n = 300
    X = synthetic(n, features=50, rank=5, ratio=0.5, seed=0)
    truth = cosine(synthetic(n, features=50, rank=5, ratio=0.0, seed=0).double())

    class Watch(TorchFunctionMode):
        squares: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for value in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(value, torch.Tensor) and value.dtype == torch.float64 and value.numel() >= n * n:
                    Watch.squares.append(getattr(func, "__name__", str(func)))
            return result

    for method in ("smcnn", "smcnmf"):
        with Watch():
            S0 = observed_cosine(X.float())
            single = complete(S0, method, rank=50)
        assert Watch.squares == [] and S0.dtype == single.S.dtype == single.V.dtype == torch.float32
        double = complete(observed_cosine(X.double()), method, rank=50)
        assert relative_error(single.S.double(), double.S) < 5e-3  # measured: 4.1e-4 (smcnmf), 7.7e-4 (smcnn)
        assert relative_error(single.S.double(), truth) == pytest.approx(relative_error(double.S, truth), abs=1e-3)
    with Watch():  # the watch does see one: a float64 n x n
        torch.zeros(n, n, dtype=torch.float64)
    assert Watch.squares


def test_extrapolated_dmc_and_the_timing_table():
    rows = [{"n": 1000, "method": "SMCNN", "seconds": 1.0, "peak_gb": 0.5},
            {"n": 1000, "method": "DMC", "seconds": 10.0, "peak_gb": 0.75},
            {"n": 500, "method": "DMC", "seconds": 2.0, "peak_gb": 0.25}]
    guessed = extrapolated_dmc(rows, [4000])
    assert guessed == [{"n": 4000, "method": "DMC", "seconds": 640.0, "extrapolated": True, "from_n": 1000}]
    table = timing_table(rows[:2] + guessed + [{"n": 4000, "method": "SMCNN", "seconds": 20.0, "peak_gb": 3.0}])
    assert "| 1000 | 1.00 s, 0.50 GB | 10.00 s, 0.75 GB | 10.0x |" in table
    assert "| 4000 | 20.00 s, 3.00 GB | ~640 s (extrapolated n^3 from n = 1000) | 32.0x |" in table


def test_complete_command_scores_against_a_truth(tmp_path, capsys):
    X = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "full.npy", X.numpy())
    np.save(tmp_path / "data.npy", missing_at_random(X, 0.4, seed=1).numpy())
    assert main(["smc", "complete", str(tmp_path / "data.npy"), str(tmp_path / "S.npy"),
                 "--truth", str(tmp_path / "full.npy")]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = scores(torch.as_tensor(np.load(tmp_path / "S.npy")), cosine(X))
    assert printed[-1] == "  smcnn: " + " / ".join(f"{expected[key]:.4f}" for key in
                                                    ("error", "recall10", "recall20pct", "ndcg20pct"))
    assert printed[-2].startswith("  S0 (missing entries as 0): ")
    # with --similarity, the truth is the similarity itself
    np.save(tmp_path / "truth.npy", cosine(X).numpy())
    np.save(tmp_path / "S0.npy", observed_cosine(missing_at_random(X, 0.4, seed=1)).numpy())
    assert main(["smc", "complete", str(tmp_path / "S0.npy"), str(tmp_path / "S2.npy"), "--similarity",
                 "--truth", str(tmp_path / "truth.npy")]) == 0
    assert "relative error / Recall@10 / Recall@20% / nDCG@20%" in capsys.readouterr().out
    # S0 is scored after the same finishing step as the completion: doubled, its unit-diagonal rescale is S0 again
    doubled = 2 * observed_cosine(missing_at_random(X, 0.4, seed=1))
    np.save(tmp_path / "S0x2.npy", doubled.numpy())
    for how in ("unit-diagonal", "none"):
        assert main(["smc", "complete", str(tmp_path / "S0x2.npy"), str(tmp_path / "S3.npy"), "--similarity",
                     "--finish", how, "--truth", str(tmp_path / "truth.npy")]) == 0
        expected = scores(finish(doubled.nan_to_num(0.0), how), cosine(X))
        assert capsys.readouterr().out.splitlines()[-2] == "  S0 (missing entries as 0): " + " / ".join(
            f"{expected[key]:.4f}" for key in ("error", "recall10", "recall20pct", "ndcg20pct"))
    assert main(["smc", "complete", str(tmp_path / "data.npy"), str(tmp_path / "o.npy"), "--truth",
                 str(tmp_path / "truth.npy")]) == 2
    assert "has shape (40, 40), the data in INPUT has (40, 6)" in capsys.readouterr().err
    # a truth that is not a real, symmetric, finite similarity is named, and nothing is written
    truth = cosine(X).numpy()
    for label, bad, message in (("complex", truth.astype(np.complex128), "not real numbers"),
                                ("asymmetric", truth + np.triu(np.full_like(truth, 0.1), 1), "is not symmetric"),
                                ("infinite", np.where(np.eye(40) > 0, np.inf, truth), "holds infinite values")):
        np.save(tmp_path / f"{label}.npy", bad)
        assert main(["smc", "complete", str(tmp_path / "S0.npy"), str(tmp_path / f"{label}-out.npy"), "--similarity",
                     "--truth", str(tmp_path / f"{label}.npy")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / f"{label}-out.npy").exists()
