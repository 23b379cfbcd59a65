"""`python -m cpt smc complete INPUT OUTPUT` and `python -m cpt smc bench`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from cpt import flags
from cpt.smc.finishing import FINISHES, finish
from cpt.smc.metrics import scores
from cpt.smc.similarity import SimilarityInputError, cosine, observed_cosine
from cpt.smc.solvers import METHODS, complete

USAGE = """usage: python -m cpt smc COMMAND ...

commands:
  complete INPUT OUTPUT   complete the similarity of a data matrix (samples x features, NaN = missing) or, with
                          --similarity, of a similarity matrix with NaNs; .npy or .csv in and out; with
                          --truth TRUTH, score the result against a complete reference
  bench                   SMCNN/SMCNmF against S0, DMC, one-step SMC, SVC and imputation on real data, and time
                          and peak memory against n
"""


def read_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SimilarityInputError(f"input {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            matrix = read_csv_matrix(path)
        else:
            raise SimilarityInputError(f"input {str(path)!r}: use a .npy or .csv file")
    except ValueError as error:
        if isinstance(error, SimilarityInputError):
            raise
        with open(path, "rb") as head:
            numpy_file = head.read(6) == b"\x93NUMPY"
        if suffix == ".npy" and not numpy_file:  # not numpy's format at all
            raise SimilarityInputError(f"input {str(path)!r} is not a .npy file (no numpy header): save the matrix "
                                       "with numpy.save, or give it as a .csv") from None
        raise SimilarityInputError(f"input {str(path)!r} is not a numeric matrix: {error}") from None
    if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
        raise SimilarityInputError(f"input {str(path)!r} holds {matrix.dtype} values, not real numbers")
    return np.atleast_2d(matrix).astype(np.float64)


def read_csv_matrix(path: Path) -> np.ndarray:
    """A numeric CSV without a header; an empty cell or `nan` is a missing value. Any other text is refused with
    its row and column (read as missing, it would silently change the result)."""
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            values = []
            for j, cell in enumerate(row, 1):
                text = cell.strip()
                try:
                    values.append(float("nan") if text == "" else float(text))
                except ValueError:
                    raise SimilarityInputError(
                        f"input {str(path)!r}: row {i}, column {j} holds {cell!r}, not a number (leave the cell empty "
                        "or write nan for a missing value; the file has no header row)") from None
            if rows and len(values) != len(rows[0]):
                raise SimilarityInputError(f"input {str(path)!r}: row {i} has {len(values)} values, row 1 has "
                                           f"{len(rows[0])}")
            rows.append(values)
    if not rows:
        raise SimilarityInputError(f"input {str(path)!r} is empty")
    return np.array(rows, dtype=np.float64)


def write_matrix(matrix: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, matrix)
    elif path.suffix.lower() == ".csv":
        np.savetxt(path, matrix, delimiter=",", fmt="%.8g")
    else:
        raise SimilarityInputError(f"output {str(path)!r}: use a .npy or .csv file")


def complete_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt smc complete", description=(
        "Complete a similarity matrix: from a data matrix (rows are samples, NaN marks a missing value) the "
        "cosine on co-observed features is completed into a PSD, low-rank similarity."))
    parser.add_argument("input", type=flags.INPUT, help="the data (.npy or .csv; NaN or an empty field: missing)")
    parser.add_argument("output", type=flags.OUTPUT_FILE, help="where the completion goes (.npy or .csv)")
    parser.add_argument("--similarity", action="store_true", help="the input is a similarity matrix with NaNs")
    parser.add_argument("--method", choices=METHODS, default="smcnn")
    parser.add_argument("--rank", type=flags.COUNT, help="columns of the factor (default: the features, at most 128)")
    parser.add_argument("--lam", type=flags.NON_NEGATIVE,
                        help="regularizer weight (default: from S0's most negative eigenvalue)")
    parser.add_argument("--alpha", type=flags.Number("(0, 1]"), default=1.0,
                        help="smcnmf: weight of the Frobenius term, in (0, 1]")
    parser.add_argument("--finish", choices=FINISHES, default="unit-diagonal", help=(
        "the finishing step of the result, and of S0 where --truth scores it: the unit-diagonal rescale "
        "D^-1/2 S D^-1/2 (default, as a cosine has) or none"))
    parser.add_argument("--plus-diagonal", action="store_true", help=(
        "S = V V^T + Psi: the part of each sample's self-similarity the low-rank part leaves out goes back on the "
        "diagonal, so the unit-diagonal rescale does not undo the shrinkage: a lower error, but neighbours ranked "
        "by the inner product rather than the angle (see docs/smc.md)"))
    parser.add_argument("--seed", type=flags.SEED, default=0)
    parser.add_argument("--truth", type=flags.INPUT, help=(
        "a complete reference (.npy or .csv, no NaN): the true similarity (n x n, with --similarity) or the complete "
        "data (same shape as INPUT; its cosine is the truth); prints relative error, Recall@10, Recall@20%% and "
        "nDCG@20%% of S0 and of the completion"))
    return parser


def complete_command(args: list[str]) -> int:
    options = flags.parse(complete_parser(), args)
    if options.output.suffix.lower() not in (".npy", ".csv"):
        raise SimilarityInputError(f"output {str(options.output)!r}: use a .npy or .csv file")
    matrix = torch.as_tensor(read_matrix(options.input))
    truth = read_truth(options.truth, matrix, options.similarity) if options.truth else None
    S0 = matrix if options.similarity else observed_cosine(matrix)
    rank = options.rank or (None if options.similarity else min(matrix.shape[1], 128))
    result = complete(S0, options.method, rank=rank, lam=options.lam, alpha=options.alpha, finish=options.finish,
                      plus_diagonal=options.plus_diagonal, seed=options.seed)
    write_matrix(result.S.numpy(), options.output)
    missing = float(torch.isnan(matrix).double().mean())
    name = options.method + (" + diagonal" if options.plus_diagonal else "")
    print(f"{name}: n={S0.shape[0]}, {100 * missing:.1f}% of the input missing, lam={result.lam:.4g}, "
          f"{result.iterations} iterations ({'converged' if result.converged else 'iteration cap reached'}), "
          f"rank {result.effective_rank} of {result.rank}, {result.seconds:.2f} s -> {options.output}")
    if truth is not None:
        print(f"against {options.truth}: relative error / Recall@10 / Recall@20% / nDCG@20% (top 20% of the "
              f"n - 1 others; see cpt.smc.metrics), both after the finishing step {options.finish!r}")
        for label, S in (("S0 (missing entries as 0)", finish(S0.nan_to_num(0.0), options.finish)),
                         (name, result.S)):
            score = scores(S, truth)
            print(f"  {label}: {score['error']:.4f} / {score['recall10']:.4f} / {score['recall20pct']:.4f} / "
                  f"{score['ndcg20pct']:.4f}")
    return 0


def read_truth(path: Path, matrix: torch.Tensor, similarity: bool) -> torch.Tensor:
    """The reference similarity: the file itself with --similarity, else the cosine of the complete data."""
    reference = torch.as_tensor(read_matrix(path))
    if torch.isnan(reference).any():
        raise SimilarityInputError(f"truth {str(path)!r} has missing values (NaN); it must be complete")
    if torch.isinf(reference).any():
        raise SimilarityInputError(f"truth {str(path)!r} holds infinite values")
    if reference.shape != matrix.shape:
        what = "the similarity matrix" if similarity else "the data"
        raise SimilarityInputError(f"truth {str(path)!r} has shape {tuple(reference.shape)}, {what} in INPUT has "
                                   f"{tuple(matrix.shape)}")
    if similarity and not torch.allclose(reference, reference.T, atol=1e-6, rtol=1e-5):
        raise SimilarityInputError(f"truth {str(path)!r} is not symmetric (S[i, j] != S[j, i]); a similarity is")
    return reference if similarity else cosine(reference)


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command == "complete":
            return complete_command(rest)
        if command == "bench":
            from cpt.smc.bench import main as bench

            return bench(rest)
    except (SimilarityInputError, ValueError) as error:  # bad input or a bad option (rank, lam, alpha)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"error: unknown smc command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
