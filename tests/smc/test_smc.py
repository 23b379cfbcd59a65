"""Similarity matrix completion: S0, SMCNN/SMCNmF, baselines, metrics, the command line."""

import json
import math

import numpy as np
import pytest
import torch

from cpt.cli import main
from cpt.smc import complete, cosine, observed_cosine
from cpt.smc.baselines import dmc, impute_mean, observed_or_zero
from cpt.smc.bench import missing_at_random, synthetic
from cpt.smc.cli import read_matrix
from cpt.smc.metrics import recall_at_k, relative_error, spectral_floor
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
    assert torch.equal(S0.isnan(), S0.T.isnan()) and torch.allclose(S0.nan_to_num(), S0.T.nan_to_num())
    assert S0.diagonal().tolist() == [1.0] * 4
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
    nn = complete(S0, "smcnn", rank=20, lam=20.0, unit_diagonal=False).S
    nmf = complete(S0, "smcnmf", rank=20, lam=20.0, unit_diagonal=False).S
    top = lambda S: float(torch.linalg.eigvalsh(S)[-1])  # noqa: E731
    assert top(nn) < top(nmf) <= top(dmc(S0)) + 1e-6


def test_unmasked_optimum_is_the_shrunk_spectrum():
    """Fully observed: the SMCNN optimum is S0's eigenvalues minus lam / 2, clipped at 0."""
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    S0 = A @ A.T / 30 + 0.2 * (lambda E: E + E.T)(torch.randn(30, 30, generator=generator, dtype=torch.float64))
    w, U = torch.linalg.eigh(S0)
    expected = (U * (w - 0.5).clamp_min(0)) @ U.T
    result = complete(S0, "smcnn", rank=30, lam=1.0, unit_diagonal=False, tol=1e-12, max_iter=2000)
    assert relative_error(result.S, expected) < 1e-4


def test_masked_variant_fits_only_the_observed_entries():
    generator = torch.Generator().manual_seed(3)
    V = torch.randn(120, 3, generator=generator, dtype=torch.float64)
    truth = V @ V.T
    hidden = torch.rand(120, 120, generator=generator) < 0.3
    hidden = (hidden | hidden.T).fill_diagonal_(False)
    S0 = truth.masked_fill(hidden, NAN)
    result = complete(S0, "smcnn", rank=3, lam=0.0, unit_diagonal=False, tol=1e-12, max_iter=2000)
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
    monkeypatch.setattr(solvers, "SPARSE_MISSING", 1.0)
    sparse = complete(S0, rank=4, lam=0.5)
    monkeypatch.setattr(solvers, "SPARSE_MISSING", -1.0)
    dense = complete(S0, rank=4, lam=0.5)
    assert torch.allclose(sparse.S, dense.S, atol=1e-8)


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
        assert relative_error(complete(S0, rank=rank, lam=lam, unit_diagonal=False).S, truth) >= floor


def test_complete_command(tmp_path, capsys):
    X = missing_at_random(torch.randn(60, 5, dtype=torch.float64), 0.3, seed=0).numpy()
    np.savetxt(tmp_path / "data.csv", X, delimiter=",")  # NaN written as "nan"
    assert main(["smc", "complete", str(tmp_path / "data.csv"), str(tmp_path / "S.npy"), "--method", "smcnmf"]) == 0
    S = np.load(tmp_path / "S.npy")
    assert S.shape == (60, 60) and np.allclose(S, S.T) and np.linalg.eigvalsh(S).min() > -1e-8
    assert "smcnmf: n=60" in capsys.readouterr().out
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
        ["S0", "DMC", "mean", "kNN", "SVT", "SMCNN", "SMCNmF", "floor"])
    error = {r["method"]: r["error"] for r in rows["accuracy"]}
    # SMCNN's default fit keeps S0's eigenvectors: no further from the floor than its unit-diagonal rescale moves it
    assert error["floor"] < error["S0"] and error["SMCNN"] > 0.95 * error["floor"]
    assert {r["method"] for r in rows["timing"]} == {"S0 (shared)", "SMCNN", "SMCNmF", "DMC"}
    assert (out / "smc_bench.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| wine | 0.5 |" in printed and "| 300 |" in printed
    assert f"| {error['floor']:.3f} |" in printed  # the floor's column, last


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
