"""`python -m cpt smc bench`: SMCNN and SMCNmF against every baseline, on real data and in time against n.

Accuracy: scikit-learn's wine (178 x 13), breast cancer (569 x 30) and digits (1797 x 64), standardised, with
entries missing completely at random at each ratio and seed. A sample left with no observed value gets one
random feature back, so that every method sees the same samples. Truth: the cosine of the complete data.
Next to the methods, the spectral floor: the least error of any matrix with S0's eigenvectors (found with the
truth; see `metrics.spectral_floor`), which no tuning of SMCNN/SMCNmF on that S0 can go below but for their
unit-diagonal rescale.
Timing: synthetic rank-5 data with 50 features, half of it missing, n up to 20,000; S0 is built once and shared,
so the times compared are the completion's (SMCNN/SMCNmF: the lam estimate, the sketch and the iterations;
DMC: the eigendecomposition).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cpt.smc.baselines import dmc, imputed_cosine, observed_or_zero
from cpt.smc.metrics import recall_at_k, relative_error, spectral_floor
from cpt.smc.similarity import cosine, observed_cosine
from cpt.smc.solvers import complete

DATASETS = ("wine", "breast_cancer", "digits")
METHODS = ("S0", "DMC", "mean", "kNN", "SVT", "SMCNN", "SMCNmF")
OURS = ("SMCNN", "SMCNmF")
FLOOR = "floor"  # not a method: it needs the truth


def load(name: str) -> torch.Tensor:
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    data = getattr(datasets, f"load_{name}")().data
    return torch.as_tensor(StandardScaler().fit_transform(data), dtype=torch.float64)


def missing_at_random(X: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    missing = torch.rand(X.shape, generator=generator) < ratio
    empty = missing.all(1).nonzero().flatten()
    keep = torch.randint(X.shape[1], (len(empty),), generator=generator)
    missing[empty, keep] = False
    return X.masked_fill(missing, float("nan"))


def estimate(method: str, Xm: torch.Tensor, S0: torch.Tensor, seed: int) -> torch.Tensor:
    if method == "S0":
        return observed_or_zero(S0)
    if method == "DMC":
        return dmc(S0)
    if method in ("mean", "kNN", "SVT"):
        return imputed_cosine(Xm, method.lower())
    return complete(S0, method.lower(), rank=Xm.shape[1], seed=seed).S


def accuracy_rows(ratios, seeds, datasets=DATASETS, progress: bool = True) -> list[dict]:
    rows = []
    cases = [(name, ratio, seed) for name in datasets for ratio in ratios for seed in seeds]
    for name, ratio, seed in tqdm(cases, desc="Completing", disable=not progress):
        X = load(name)
        truth = cosine(X)
        Xm = missing_at_random(X, ratio, seed)
        S0 = observed_cosine(Xm)
        for method in METHODS:
            started = time.perf_counter()
            S = estimate(method, Xm, S0, seed)
            seconds = time.perf_counter() - started
            rows.append({"dataset": name, "ratio": ratio, "seed": seed, "method": method,
                         "error": relative_error(S, truth), "recall10": recall_at_k(S, truth, 10),
                         "seconds": seconds})
        rows.append({"dataset": name, "ratio": ratio, "seed": seed, "method": FLOOR,
                     "error": spectral_floor(S0, truth)})
    return rows


def synthetic(n: int, features: int = 50, rank: int = 5, ratio: float = 0.5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=generator) @ torch.randn(rank, features, generator=generator)
    return missing_at_random(X, ratio, seed)


def timing_rows(sizes, dmc_max_n: int, progress: bool = True) -> list[dict]:
    rows = []
    for n in tqdm(sizes, desc="Timing", disable=not progress):
        Xm = synthetic(n)
        started = time.perf_counter()
        S0 = observed_cosine(Xm)
        rows.append({"n": n, "method": "S0 (shared)", "seconds": time.perf_counter() - started})
        for method in ("smcnn", "smcnmf"):
            result = complete(S0, method, rank=Xm.shape[1])
            rows.append({"n": n, "method": method.replace("smc", "SMC").replace("nmf", "NmF").replace("nn", "NN"),
                         "seconds": result.seconds, "iterations": result.iterations})
        if n <= dmc_max_n:
            started = time.perf_counter()
            dmc(S0)
            rows.append({"n": n, "method": "DMC", "seconds": time.perf_counter() - started})
        del S0
    return rows


def mean_over_seeds(rows: list[dict], name: str, ratio: float, method: str, key: str = "error") -> float:
    return statistics.mean(r[key] for r in rows if (r["dataset"], r["ratio"], r["method"]) == (name, ratio, method))


def accuracy_table(rows: list[dict]) -> str:
    """Mean relative error / Recall@10 over seeds, a row per dataset and ratio; the best error in bold. The
    spectral floor, when measured, in the last column."""
    floor = any(r["method"] == FLOOR for r in rows)
    lines = ["| dataset | missing | " + " | ".join(METHODS) + (" | S0 spectral floor |" if floor else " |"),
             "|---|---|" + "---:|" * (len(METHODS) + floor)]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for ratio in dict.fromkeys(r["ratio"] for r in rows if r["dataset"] == name):
            cells = {method: (mean_over_seeds(rows, name, ratio, method),
                              mean_over_seeds(rows, name, ratio, method, "recall10")) for method in METHODS}
            best = min(error for error, _ in cells.values())
            shown = [(f"**{e:.3f}**" if e == best else f"{e:.3f}") + f" / {r:.2f}" for e, r in cells.values()]
            if floor:
                shown.append(f"{mean_over_seeds(rows, name, ratio, FLOOR):.3f}")
            lines.append(f"| {name} | {ratio:.1f} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def timing_table(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| n | " + " | ".join(methods) + " | DMC / SMCNN |", "|---:|" + "---:|" * (len(methods) + 1)]
    for n in dict.fromkeys(r["n"] for r in rows):
        seconds = {r["method"]: r["seconds"] for r in rows if r["n"] == n}
        ratio = f"{seconds['DMC'] / seconds['SMCNN']:.1f}x" if "DMC" in seconds else "-"
        lines.append(f"| {n} | " + " | ".join(f"{seconds[m]:.2f} s" if m in seconds else "-" for m in methods)
                     + f" | {ratio} |")
    return "\n".join(lines)


def plot(accuracy: list[dict], timing: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in accuracy))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.6), constrained_layout=True)
    for ax, name in zip(axes, names):
        ratios = sorted({r["ratio"] for r in accuracy if r["dataset"] == name})
        for method in METHODS:
            means = [mean_over_seeds(accuracy, name, ratio, method) for ratio in ratios]
            ax.plot(ratios, means, marker="o", linewidth=2.2 if method in OURS else 1.2,
                    linestyle="-" if method in OURS else "--", label=method)
        if any(r["method"] == FLOOR for r in accuracy):
            ax.plot(ratios, [mean_over_seeds(accuracy, name, ratio, FLOOR) for ratio in ratios], color="grey",
                    linestyle=":", linewidth=2, label="S0 spectral floor")
        ax.set(title=name, xlabel="missing ratio", ylabel="relative error", xticks=ratios)
    ax = axes[-1]
    for method in dict.fromkeys(r["method"] for r in timing):
        points = [(r["n"], r["seconds"]) for r in timing if r["method"] == method]
        ax.plot(*zip(*points), marker="o", label=method)
    if timing:
        ax.set(title="time against n (rank-5 data, 50% missing)", xlabel="n", ylabel="seconds", xscale="log",
               yscale="log")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no timing sweep (--sizes)", ha="center", va="center", transform=ax.transAxes)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpt smc bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dataset and ratio")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 2000, 5000, 10000, 20000],
                        help="n of the timing sweep (none: skip it)")
    parser.add_argument("--dmc-max-n", type=int, default=20000, help="largest n DMC is timed at (O(n^3))")
    parser.add_argument("--out", type=Path, default=Path("runs/smc-bench"))
    options = parser.parse_args(args)
    if options.seeds < 1:
        parser.error("--seeds must be at least 1")
    options.out.mkdir(parents=True, exist_ok=True)
    accuracy = accuracy_rows(options.ratios, range(options.seeds), options.datasets)
    print("Relative error / Recall@10 (mean over seeds; lower error is better)\n")
    print(accuracy_table(accuracy))
    timing = timing_rows(options.sizes, options.dmc_max_n) if options.sizes else []
    if timing:
        print("\nWall time of the completion (S0 built once, shared)\n")
        print(timing_table(timing))
    (options.out / "results.json").write_text(json.dumps({"accuracy": accuracy, "timing": timing}, indent=1))
    tables = accuracy_table(accuracy) + "\n\n" + (timing_table(timing) if timing else "")
    (options.out / "results.md").write_text(tables)
    plot(accuracy, timing, options.out / "smc_bench.png")
    print(f"\nTables, raw rows and smc_bench.png in {options.out}")
    return 0
