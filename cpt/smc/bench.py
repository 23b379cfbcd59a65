"""`python -m cpt smc bench`: SMCNN and SMCNmF against every baseline, on real data and in time against n.

Accuracy: scikit-learn's wine (178 x 13), breast cancer (569 x 30) and digits (1797 x 64), standardised, with
entries missing completely at random at each ratio and seed. A sample left with no observed value gets one
random feature back, so that every method sees the same samples. Truth: the cosine of the complete data.
Next to the methods, the spectral floor: the least error of any matrix with S0's eigenvectors (found with the
truth; see `metrics.spectral_floor`), which no tuning of SMCNN/SMCNmF (without the diagonal) on that S0 can go
below without a finishing step (shown with finish "none").
SMCNN and SMCNmF run with and without the diagonal (rows "+ diagonal"; `complete(plus_diagonal=True)`).
One-step SMC and SVC split each dataset into a random half of offline samples (seeded) and the online rest.
Every method's result goes through the same finishing step before it is scored (`cpt.smc.finishing`; by default
both, as separate tables: the unit-diagonal rescale and none). Scores: relative error, Recall@10, Recall and nDCG
at the top 20% (`metrics.scores`). Four more datasets (SELECTION_DATASETS) are there to choose changes to
SMCNN/SMCNmF on, so that the reported datasets do not. results.json is written after each case, and a run into
the same directory keeps the rows already there, computing only what is new (--fresh: everything).
Timing: synthetic rank-5 data with 50 features, half of it missing, n up to 40,000, in float32 by default (S0,
the factor and the result; `--dtype`). Each size runs in a fresh child process: S0 is built once there and
shared, so the times compared are the completion's (SMCNN/SMCNmF: the lam estimate, the sketch, the iterations
and forming S; DMC: the eigendecomposition). The peak memory of each step is the child's peak resident set size
(VmHWM) while it ran, S0 included: the peak is reset before each step (/proc/self/clear_refs) and read after it.
DMC is timed up to --dmc-max-n; above, its time is extrapolated as n^3 from the largest measured size and marked
so.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import re
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cpt import flags
from cpt.smc.baselines import dmc, imputed_cosine, observed_or_zero, one_step_smc, one_step_smc_block, svc
from cpt.smc.finishing import FINISHES, finish
from cpt.smc.metrics import scores, spectral_floor
from cpt.smc.similarity import cosine, observed_cosine
from cpt.smc.solvers import complete

DATASETS = ("wine", "breast_cancer", "digits")  # the bench reports these
# Changes to SMCNN/SMCNmF are chosen on these instead (and on other seeds, --first-seed), so that the reported
# datasets do not choose them: scikit-learn's iris (150 x 4) and diabetes (442 x 10), and two generated sets.
SELECTION_DATASETS = ("iris", "diabetes", "classification", "low_rank")
METHODS = ("S0", "DMC", "one-step SMC", "one-step SMC (block)", "SVC", "mean", "kNN", "SVT", "SMCNN", "SMCNmF",
           "SMCNN + diagonal", "SMCNmF + diagonal")
# the authors' earlier methods (and the block form): their rows also record the least eigenvalue
CALIBRATIONS = ("one-step SMC", "one-step SMC (block)", "SVC")
METRICS = {"error": "relative error", "recall10": "Recall@10", "recall20pct": "Recall@20%",
           "ndcg20pct": "nDCG@20%"}  # key: title; lower is better only for the error
OURS = ("SMCNN", "SMCNmF", "SMCNN + diagonal", "SMCNmF + diagonal")
FLOOR = "floor"  # not a method: it needs the truth


def load(name: str) -> torch.Tensor:
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    if name == "classification":  # 400 x 20, 6 informative features
        data = datasets.make_classification(400, 20, n_informative=6, random_state=7)[0]
    elif name == "low_rank":  # 400 x 30, singular values decaying from an effective rank of 5
        data = datasets.make_low_rank_matrix(400, 30, effective_rank=5, random_state=7)
    else:
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
    """A method's result before the finishing step, which the caller applies to every method alike."""
    if method == "S0":
        return observed_or_zero(S0)
    if method == "DMC":
        return dmc(S0)
    if method == "one-step SMC":
        return one_step_smc(S0, seed=seed)
    if method == "one-step SMC (block)":
        return one_step_smc_block(S0, seed=seed)
    if method == "SVC":
        return svc(S0, seed=seed)
    if method in ("mean", "kNN", "SVT"):
        return imputed_cosine(Xm, method.lower())
    solver, _, diagonal = method.lower().partition(" + ")
    return complete(S0, solver, rank=Xm.shape[1], finish="none", plus_diagonal=bool(diagonal), seed=seed).S


def row_key(row: dict) -> tuple:
    return row["dataset"], row["ratio"], row["seed"], row["method"], row["finish"]


def with_earlier(rows: list[dict], previous: list[dict]) -> list[dict]:
    """rows, then the earlier rows of cases and methods this run did not compute (kept in results.json)."""
    computed = {row_key(row) for row in rows}
    return rows + [row for row in previous if row_key(row) not in computed]


def accuracy_rows(ratios, seeds, datasets=DATASETS, finishes=FINISHES, progress: bool = True,
                  previous: list[dict] = (), save=None) -> list[dict]:
    """One row per dataset, ratio, seed, method and finishing step: each method runs once, and its result is
    scored after each finishing step (the same step for every method). The spectral floor, a bound on the
    unfinished SMCNN/SMCNmF, is computed once, with finish "none". A method whose rows for a case are all in
    `previous` (an earlier run's) is not run again; save(rows) is called after each case."""
    earlier = {row_key(row): row for row in previous}
    rows = []
    cases = [(name, ratio, seed) for name in datasets for ratio in ratios for seed in seeds]
    for name, ratio, seed in tqdm(cases, desc="Completing", disable=not progress):
        X = load(name)
        truth = cosine(X)
        Xm = missing_at_random(X, ratio, seed)
        S0 = observed_cosine(Xm)
        for method in METHODS:
            kept = [earlier.get((name, ratio, seed, method, how)) for how in finishes]
            if all(kept):
                rows += kept
                continue
            started = time.perf_counter()
            S = estimate(method, Xm, S0, seed)
            seconds = time.perf_counter() - started
            extra = {"least_eigenvalue": float(torch.linalg.eigvalsh(S)[0])} if method in CALIBRATIONS else {}
            for how in finishes:
                rows.append({"dataset": name, "ratio": ratio, "seed": seed, "method": method, "finish": how,
                             **scores(finish(S, how), truth), "seconds": seconds, **extra})
        floor = earlier.get((name, ratio, seed, FLOOR, "none"))
        rows.append(floor or {"dataset": name, "ratio": ratio, "seed": seed, "method": FLOOR, "finish": "none",
                              "error": spectral_floor(S0, truth)})
        if save is not None:
            save(rows)
    return rows


def synthetic(n: int, features: int = 50, rank: int = 5, ratio: float = 0.5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=generator) @ torch.randn(rank, features, generator=generator)
    return missing_at_random(X, ratio, seed)


def reset_peak() -> bool:
    """Reset this process's peak resident set size to the current one (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_gb() -> float:
    """This process's peak resident set size in GB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        kilobytes = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes * 1024 / 1e9


def time_one_size(n: int, dtype: str, with_dmc: bool, threads: int = 0) -> list[dict]:
    """Run in a fresh child process: S0 of synthetic data at n, then each method on it; time and peak memory
    of each step (the peak reset before it; without the reset, the peak since the child started). threads: torch's
    CPU threads (0: its default)."""
    if threads:
        torch.set_num_threads(threads)
    rows = []
    Xm = synthetic(n).to(getattr(torch, dtype))
    gc.collect()
    resettable = reset_peak()
    started = time.perf_counter()
    S0 = observed_cosine(Xm)
    rows.append({"n": n, "method": "S0 (shared)", "seconds": time.perf_counter() - started, "peak_gb": peak_gb()})
    for method in ("smcnn", "smcnmf"):
        gc.collect()
        reset_peak()
        result = complete(S0, method, rank=Xm.shape[1])
        rows.append({"n": n, "method": method.replace("smc", "SMC").replace("nmf", "NmF").replace("nn", "NN"),
                     "seconds": result.seconds, "iterations": result.iterations, "peak_gb": peak_gb(),
                     "dtype": str(result.S.dtype).removeprefix("torch.")})
        del result
    if with_dmc:
        gc.collect()
        reset_peak()
        started = time.perf_counter()
        dmc(S0)
        rows.append({"n": n, "method": "DMC", "seconds": time.perf_counter() - started, "peak_gb": peak_gb()})
    for row in rows:
        row["peak_reset"] = resettable
    return rows


def timing_rows(sizes, dmc_max_n: int, dtype: str = "float32", threads: int = 0, progress: bool = True) -> list[dict]:
    """Each size in a fresh child process (so that each peak is that size's own); DMC above dmc_max_n
    extrapolated as n^3 from the largest size it was timed at, with "extrapolated": true."""
    rows = []
    context = multiprocessing.get_context("spawn")
    for n in tqdm(sizes, desc="Timing", disable=not progress):
        with ProcessPoolExecutor(1, mp_context=context) as child:
            done = child.submit(time_one_size, n, dtype, n <= dmc_max_n, threads).result()
        rows += done
        if progress:
            tqdm.write(f"n = {n}: " + ", ".join(f"{r['method']} {r['seconds']:.2f} s, {r['peak_gb']:.2f} GB"
                                                for r in done))
    rows += extrapolated_dmc(rows, [n for n in sizes if n > dmc_max_n])
    return sorted(rows, key=lambda r: r["n"])  # stable: each n's steps keep their order


def extrapolated_dmc(rows: list[dict], sizes) -> list[dict]:
    """DMC's time at each of `sizes`, extrapolated as n^3 from the largest n it was timed at (none if never)."""
    measured = [(r["n"], r["seconds"]) for r in rows if r["method"] == "DMC" and not r.get("extrapolated")]
    if not measured:
        return []
    largest, seconds = max(measured)
    return [{"n": n, "method": "DMC", "seconds": seconds * (n / largest) ** 3, "extrapolated": True,
             "from_n": largest} for n in sizes]


def mean_over_seeds(rows: list[dict], name: str, ratio: float, method: str, key: str = "error",
                    how: str = "none") -> float:
    """The mean of `key` over seeds; the floor, computed unfinished, for any finishing step."""
    how = "none" if method == FLOOR else how
    return statistics.mean(r[key] for r in rows
                           if (r["dataset"], r["ratio"], r["method"], r["finish"]) == (name, ratio, method, how))


FINISH_TITLES = {"unit-diagonal": "finishing step: the unit-diagonal rescale D^-1/2 S D^-1/2, for every method",
                 "none": "finishing step: none, every method scored as it returns S"}


def accuracy_table(rows: list[dict], metric: str = "error", how: str = "none") -> str:
    """Mean of one metric over seeds after the finishing step `how`, a row per dataset and ratio; the best in bold
    (lowest error, highest recall or nDCG). With the error and no finishing step, the spectral floor, when
    measured, in the last column (it bounds the unfinished SMCNN/SMCNmF only)."""
    floor = metric == "error" and how == "none" and any(r["method"] == FLOOR for r in rows)
    lines = ["| dataset | missing | " + " | ".join(METHODS) + (" | S0 spectral floor |" if floor else " |"),
             "|---|---|" + "---:|" * (len(METHODS) + floor)]
    choose = min if metric == "error" else max
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for ratio in dict.fromkeys(r["ratio"] for r in rows if r["dataset"] == name):
            cells = [mean_over_seeds(rows, name, ratio, method, metric, how) for method in METHODS]
            best = f"{choose(cells):.3f}"
            shown = [f"**{value:.3f}**" if f"{value:.3f}" == best else f"{value:.3f}" for value in cells]
            if floor:
                shown.append(f"{mean_over_seeds(rows, name, ratio, FLOOR):.3f}")
            lines.append(f"| {name} | {ratio:.1f} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def finishes_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["finish"] for r in rows if r["method"] != FLOOR))


def accuracy_tables(rows: list[dict]) -> str:
    return "\n\n".join(f"{title} (mean over seeds; {'lower' if key == 'error' else 'higher'} is better; "
                       f"{FINISH_TITLES[how]})\n\n" + accuracy_table(rows, key, how)
                       for how in finishes_of(rows) for key, title in METRICS.items())


def timing_table(rows: list[dict]) -> str:
    """Seconds and peak memory (GB) per method and n; DMC's extrapolated times marked with (extrapolated)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| n | " + " | ".join(methods) + " | DMC / SMCNN |", "|---:|" + "---:|" * (len(methods) + 1)]
    for n in dict.fromkeys(r["n"] for r in rows):
        cell = {r["method"]: r for r in rows if r["n"] == n}

        def shown(method: str, cell: dict = cell) -> str:
            if method not in cell:
                return "-"
            row = cell[method]
            if row.get("extrapolated"):
                return f"~{row['seconds']:.0f} s (extrapolated n^3 from n = {row['from_n']})"
            return f"{row['seconds']:.2f} s, {row['peak_gb']:.2f} GB"

        ratio = f"{cell['DMC']['seconds'] / cell['SMCNN']['seconds']:.1f}x" if "DMC" in cell else "-"
        lines.append(f"| {n} | " + " | ".join(shown(m) for m in methods) + f" | {ratio} |")
    return "\n".join(lines)


def plot(accuracy: list[dict], timing: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["dataset"] for r in accuracy))
    how = finishes_of(accuracy)[0] if accuracy else "none"
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.8), constrained_layout=True,
                             squeeze=False)
    axes = axes[0]
    colours = [f"C{index}" for index in range(10)] + ["black", "dimgrey"]  # twelve distinct colours
    for ax, name in zip(axes, names):
        ratios = sorted({r["ratio"] for r in accuracy if r["dataset"] == name})
        for index, method in enumerate(METHODS):
            means = [mean_over_seeds(accuracy, name, ratio, method, how=how) for ratio in ratios]
            ax.plot(ratios, means, marker="o", linewidth=2.2 if method in OURS else 1.2,
                    color=colours[index % len(colours)], label=method,
                    linestyle="-" if method in OURS else ("-." if method in CALIBRATIONS else "--"))
        if how == "none" and any(r["method"] == FLOOR for r in accuracy):
            ax.plot(ratios, [mean_over_seeds(accuracy, name, ratio, FLOOR) for ratio in ratios], color="grey",
                    linestyle=":", linewidth=2, label="S0 spectral floor")
        ax.set(title=f"{name} (finish: {how})", xlabel="missing ratio", ylabel="relative error", xticks=ratios)
    if names:
        axes[0].legend(fontsize=7)
    ax = axes[-1]
    for method in dict.fromkeys(r["method"] for r in timing):
        points = [(r["n"], r["seconds"]) for r in timing if r["method"] == method and not r.get("extrapolated")]
        line = ax.plot(*zip(*points), marker="o", label=method)[0] if points else None
        guessed = [(r["n"], r["seconds"]) for r in timing if r["method"] == method and r.get("extrapolated")]
        if guessed:
            if points:
                guessed.insert(0, points[-1])
            ax.plot(*zip(*guessed), marker="o", markerfacecolor="none", linestyle=":",
                    color=line.get_color() if line else None, label=f"{method} (extrapolated n^3)")
    if timing:
        ax.set(title="time against n (rank-5 data, 50% missing)", xlabel="n", ylabel="seconds", xscale="log",
               yscale="log")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no timing sweep (--sizes)", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def earlier_results(path: Path) -> tuple[list[dict], list[dict]]:
    """The accuracy and timing rows of an earlier run in `path` (empty if there is none); a file that cannot be
    read stops the bench, so that it is never overwritten."""
    if not path.exists():
        return [], []
    try:
        results = json.loads(path.read_text())
        rows = results["accuracy"]
        required = {"dataset", "ratio", "seed", "method", "finish", "error"}
        if not all(required <= set(row) for row in rows):
            raise ValueError("a row lacks one of " + ", ".join(sorted(required)))
        return rows, results.get("timing", [])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an earlier bench's results ({error}); move it away or pass --fresh") from None


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt smc bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=flags.RATIO, nargs="+", default=[0.2, 0.5, 0.8],
                        help="shares of missing values, each in (0, 1)")
    parser.add_argument("--seeds", type=flags.COUNT, default=3, help="seeds per dataset and ratio")
    parser.add_argument("--first-seed", type=flags.SEED, default=0,
                        help="the seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS + SELECTION_DATASETS,
                        help="datasets of the accuracy part (none: skip it); the reported ones by default, the "
                             f"others ({', '.join(SELECTION_DATASETS)}) for choosing changes without them")
    parser.add_argument("--sizes", type=flags.Number("[2, inf)", integer=True), nargs="*",
                        default=[1000, 2000, 5000, 10000, 20000, 40000], help="n of the timing sweep (none: skip it)")
    parser.add_argument("--dmc-max-n", type=flags.COUNT, default=20000,
                        help="largest n DMC is timed at (O(n^3)); above it, extrapolated as n^3")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision of the timing sweep (S0, the factor, the result); the accuracy part is float64")
    parser.add_argument("--threads", type=flags.NATURAL, default=0,
                        help="torch CPU threads of the timing sweep (default 0: torch's own default)")
    parser.add_argument("--finish", nargs="+", choices=FINISHES, default=list(FINISHES),
                        help="the finishing step(s) every method's result gets before it is scored, each its own "
                             "tables (default: both; the figure shows the first)")
    parser.add_argument("--out", type=flags.OUTPUT_DIR, default=Path("runs/smc-bench"))
    parser.add_argument("--fresh", action="store_true",
                        help="recompute every accuracy row (default: rows already in OUT/results.json are kept)")
    return parser


def main(args: list[str]) -> int:
    options = flags.parse(build_parser(), args)
    options.out.mkdir(parents=True, exist_ok=True)
    finishes = list(dict.fromkeys(options.finish))
    saved = options.out / "results.json"
    previous, earlier_timing = ([], []) if options.fresh else earlier_results(saved)
    if previous:
        print(f"Keeping the {len(previous)} accuracy rows already in {saved} (--fresh recomputes them)")
    else:  # timing rows are kept beside accuracy rows: a file without the latter is started afresh
        earlier_timing = []

    def save(rows: list[dict]) -> None:  # after each case, so that an interrupted run keeps what it computed
        saved.write_text(json.dumps({"accuracy": with_earlier(rows, previous), "timing": earlier_timing},
                                    indent=1))

    seeds = range(options.first_seed, options.first_seed + options.seeds)
    accuracy = (accuracy_rows(options.ratios, seeds, options.datasets, finishes, previous=previous, save=save)
                if options.datasets else [])
    tables = []
    if accuracy:
        tables.append(accuracy_tables(accuracy))
        print(tables[-1])
    timing = timing_rows(options.sizes, options.dmc_max_n, options.dtype, options.threads) if options.sizes else []
    if timing:
        threads = f"{options.threads} thread(s)" if options.threads else f"{torch.get_num_threads()} threads"
        tables.append(f"Wall time and peak memory of each step ({options.dtype}, {threads}; S0 built once per n, "
                      "shared; each n in a fresh process)\n\n" + timing_table(timing))
        print("\n" + tables[-1])
    saved.write_text(json.dumps({"accuracy": with_earlier(accuracy, previous), "timing": timing or earlier_timing},
                                indent=1))
    (options.out / "results.md").write_text("\n\n".join(tables) + "\n")
    plot(accuracy, timing, options.out / "smc_bench.png")
    print(f"\nTables, raw rows and smc_bench.png in {options.out}")
    return 0
