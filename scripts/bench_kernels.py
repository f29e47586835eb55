"""Kernel benchmarks (`make bench`): each feedrank kernel against its usual Python baseline, same
data, same run. Repository tooling (it needs scikit-learn and implicit, which the feedrank wheel
does not depend on), so it lives beside the other scripts, not in the package.

    python scripts/bench_kernels.py kernels [--scale S] [--json PATH] [--threads N]

- tfidf: ``TfidfVectorizer().fit_transform`` of 200,000 short texts vs scikit-learn's;
- cosine_topk: item-item cosine top-50 neighbours + top-50 recommendations for every user of a
  power-law data set (200,000 users x 50,000 items x 10,000,000 interactions) vs implicit's
  ``CosineRecommender(K=50)`` ``fit`` + batch ``recommend``;
- shuffle: 10,000,000 int64 ids vs ``numpy.random.Generator.permutation``.

Sizes scale with ``--scale``. Every side runs in its own subprocess (data generated there from
the same seed), so its peak memory is its own: the peak RSS is reset after the data is built
(Linux ``clear_refs``), so ``*_peak_mib`` is the process's peak while the kernel ran (data
included) and ``*_kernel_mib`` that peak minus what was resident before the kernel started;
threads are pinned to ``--threads`` (default 2) on both sides through RAYON_NUM_THREADS,
OMP/OPENBLAS_NUM_THREADS and implicit's ``num_threads``. Outputs are compared in the parent:
``equal`` means same matrix within 1e-6 (tfidf), same neighbour and recommendation scores per
row (cosine: the sets agree up to ties), a permutation of the input (shuffle).
``ratio`` = baseline seconds / feedrank seconds (wall clock). The CPU seconds of both sides
(all threads, ``time.process_time``) are printed too: on a machine shared with other work the
wall clock of a 2-thread process depends on the load, its CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KERNELS = ("tfidf", "cosine_topk", "shuffle")
BASELINES = {
    "tfidf": "sklearn.TfidfVectorizer",
    "cosine_topk": "implicit.CosineRecommender(K=50) fit + recommend",
    "shuffle": "numpy.Generator.permutation",
}


# --- data, generated identically in every subprocess --------------------------------------------

def texts(scale: float) -> list[str]:
    n = max(100, int(200_000 * scale))
    rng = np.random.default_rng(1)
    vocab_size = 60_000
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "ph", "or", "el", "an"]
    words = np.array(
        ["".join(rng.choice(syll, rng.integers(1, 5))) + str(i % 7 if i % 5 == 0 else "") for i in range(vocab_size)]
    )
    lengths = rng.integers(10, 31, n)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    ranks = np.minimum(rng.zipf(1.25, size=starts[-1]), vocab_size) - 1
    caps = rng.random(starts[-1]) < 0.1
    toks = np.where(caps, np.char.capitalize(words[ranks]), words[ranks])
    return [" ".join(toks[starts[i] : starts[i + 1]]) + "." for i in range(n)]


def interactions(scale: float):
    import scipy.sparse as sp

    n_users = max(200, int(200_000 * scale))
    n_items = max(100, int(50_000 * scale))
    n_inter = max(2_000, int(10_000_000 * scale))
    rng = np.random.default_rng(2)
    # power laws on both sides: item popularity ~ rank^-0.9, user activity Pareto
    item_w = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_w = item_w[rng.permutation(n_items)]
    user_w = rng.pareto(1.5, n_users) + 0.2
    users = rng.choice(n_users, n_inter, p=user_w / user_w.sum())
    items = rng.choice(n_items, n_inter, p=item_w / item_w.sum())
    x = sp.csr_matrix((np.ones(n_inter, np.float32), (users, items)), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def ids(scale: float) -> np.ndarray:
    n = max(1000, int(10_000_000 * scale))
    return np.arange(n, dtype=np.int64) * 7 + 3


# --- one side of one kernel, in a subprocess ----------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> int | None:
    """Resets the process's peak RSS (Linux: clear_refs 5) so that the peak measured after the
    kernel is the kernel's, not the data generation's; returns the resident KiB now."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def run_side(kernel: str, side: str, scale: float, threads: int, out: Path) -> dict:
    import scipy.sparse as sp

    result: dict = {}
    rss0: int | None = None
    if kernel == "tfidf":
        docs = texts(scale)
        if side == "feedrank":
            from feedrank import TfidfVectorizer
        else:
            from sklearn.feature_extraction.text import TfidfVectorizer
        rss0 = reset_peak()
        t, c = time.perf_counter(), time.process_time()
        x = TfidfVectorizer().fit_transform(docs)
        result["seconds"] = time.perf_counter() - t
        result["cpu_seconds"] = time.process_time() - c
        x = x.tocsr()
        x.sort_indices()
        sp.save_npz(out / f"{side}.npz", x, compressed=False)
        result["shape"] = list(x.shape)
    elif kernel == "cosine_topk":
        x = interactions(scale)
        users = np.arange(x.shape[0])
        if side == "feedrank":
            import feedrank

            rss0 = reset_peak()
            t, c = time.perf_counter(), time.process_time()
            s = feedrank.item_neighbors(x, k=50, exclude_self=False)
            fit = time.perf_counter() - t
            rec_ids, rec_scores = feedrank.recommend_items(x, s, users, k=50)
        else:
            from implicit.nearest_neighbours import CosineRecommender

            model = CosineRecommender(K=50, num_threads=threads)
            rss0 = reset_peak()
            t, c = time.perf_counter(), time.process_time()
            model.fit(x, show_progress=False)
            fit = time.perf_counter() - t
            s = model.similarity.tocsr()
            rec_ids, rec_scores = model.recommend(users, x, N=50)
        result["seconds"] = time.perf_counter() - t
        result["cpu_seconds"] = time.process_time() - c
        result["fit_seconds"] = fit
        result["recommend_seconds"] = result["seconds"] - fit
        result["nnz"] = int(x.nnz)
        s.sort_indices()
        sp.save_npz(out / f"{side}.npz", s.astype(np.float32), compressed=False)
        np.save(out / f"{side}_rec_ids.npy", np.asarray(rec_ids, np.int64))
        np.save(out / f"{side}_rec_scores.npy", np.asarray(rec_scores, np.float32))
    elif kernel == "shuffle":
        a = ids(scale)
        if side == "feedrank":
            import feedrank

            rss0 = reset_peak()
            t, c = time.perf_counter(), time.process_time()
            b = feedrank.shuffle(a, seed=42)
        else:
            rng = np.random.default_rng(42)
            rss0 = reset_peak()
            t, c = time.perf_counter(), time.process_time()
            b = rng.permutation(a)
        result["seconds"] = time.perf_counter() - t
        result["cpu_seconds"] = time.process_time() - c
        np.save(out / f"{side}.npy", b)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm = _status_kib("VmHWM")
    if rss0 is not None and hwm is not None:
        # peak of the process while the kernel ran (data included) and its growth over the data
        result["peak_mib"] = hwm / 1024
        result["kernel_mib"] = max(0, hwm - rss0) / 1024
    result["cpu_seconds"] = result.get("cpu_seconds", 0.0)
    return result


# --- comparison in the parent ------------------------------------------------------------------

def _row_sorted(data: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return data[np.lexsort((-data, rows))]


def _csr_scores_equal(a, b, tol: float) -> bool:
    """Same number of entries per row and the same scores per row: the neighbour sets agree
    up to ties (two items with the same score may be swapped at the cut)."""
    if a.shape != b.shape or not np.array_equal(np.diff(a.indptr), np.diff(b.indptr)):
        return False
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    return bool(np.allclose(_row_sorted(a.data, rows), _row_sorted(b.data, rows), atol=tol))


def compare(kernel: str, d: Path, scale: float) -> bool:
    import scipy.sparse as sp

    if kernel == "tfidf":
        a, b = sp.load_npz(d / "feedrank.npz"), sp.load_npz(d / "baseline.npz")
        return a.shape == b.shape and (a.nnz == b.nnz) and abs(a - b).max() <= 1e-6
    if kernel == "cosine_topk":
        a, b = sp.load_npz(d / "feedrank.npz"), sp.load_npz(d / "baseline.npz")
        if not _csr_scores_equal(a, b, 1e-4):
            return False
        # Neighbour sets may differ at tied scores, and so may recommendations built on them:
        # compare the recommendations of both kernels on the *same* (implicit's) neighbours.
        import feedrank

        x = interactions(scale)
        fi, fs = feedrank.recommend_items(x, b, np.arange(x.shape[0]), k=50)
        bs = np.load(d / "baseline_rec_scores.npy")
        # implicit fills short lists with zero-score items (and -max float pads); feedrank returns
        # only positive scores and pads with -1: compare the positive-score entries
        bvalid = bs > 0
        if not np.array_equal((fi >= 0).sum(axis=1), bvalid.sum(axis=1)):
            return False
        fs = np.where(fi >= 0, fs, 0.0)
        bs = np.where(bvalid, bs, 0.0)
        return bool(np.allclose(fs, bs, rtol=1e-4, atol=1e-5))
    if kernel == "shuffle":
        a, b = np.load(d / "feedrank.npy"), np.load(d / "baseline.npy")
        return bool(np.array_equal(np.sort(a), np.sort(b)))
    raise ValueError(kernel)


def spawn(kernel: str, side: str, scale: float, threads: int, d: Path) -> dict:
    env = dict(os.environ)
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "_side", kernel, side, str(scale), str(threads), str(d)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kernel}/{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kernels(scale: float, threads: int, which: list[str]) -> dict:
    results = {}
    for kernel in which:
        with tempfile.TemporaryDirectory(prefix=f"feedrank-bench-{kernel}-") as tmp:
            d = Path(tmp)
            ours = spawn(kernel, "feedrank", scale, threads, d)
            base = spawn(kernel, "baseline", scale, threads, d)
            equal = compare(kernel, d, scale)
        r = {
            "feedrank_s": round(ours["seconds"], 3),
            "baseline": BASELINES[kernel],
            "baseline_s": round(base["seconds"], 3),
            "ratio": round(base["seconds"] / ours["seconds"], 2),
            "equal": bool(equal),
            "feedrank_cpu_s": round(ours["cpu_seconds"], 3),
            "baseline_cpu_s": round(base["cpu_seconds"], 3),
            "feedrank_peak_mib": round(ours["peak_mib"]),
            "baseline_peak_mib": round(base["peak_mib"]),
        }
        if "kernel_mib" in ours and "kernel_mib" in base:
            r["feedrank_kernel_mib"] = round(ours["kernel_mib"])
            r["baseline_kernel_mib"] = round(base["kernel_mib"])
        if kernel == "cosine_topk":
            r.update(
                feedrank_fit_s=round(ours["fit_seconds"], 3),
                feedrank_recommend_s=round(ours["recommend_seconds"], 3),
                baseline_fit_s=round(base["fit_seconds"], 3),
                baseline_recommend_s=round(base["recommend_seconds"], 3),
                interactions=ours["nnz"],
            )
        results[kernel] = r
        print_row(kernel, r)
    return results


def print_header(scale: float, threads: int) -> None:
    print(f"feedrank kernel benchmark  scale={scale}  threads={threads}  "
          f"{platform.machine()} {os.cpu_count()} cpus  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'kernel':<12} {'feedrank s':>11} {'baseline s':>11} {'ratio':>7} {'equal':>6} "
          f"{'feedrank MiB':>13} {'baseline MiB':>13} {'cpu s (f/b)':>15}  baseline")
    sys.stdout.flush()


def print_row(kernel: str, r: dict) -> None:
    print(f"{kernel:<12} {r['feedrank_s']:>11.3f} {r['baseline_s']:>11.3f} {r['ratio']:>6.2f}x "
          f"{str(r['equal']):>6} {r['feedrank_peak_mib']:>13} {r['baseline_peak_mib']:>13} "
          f"{r['feedrank_cpu_s']:>7.2f}/{r['baseline_cpu_s']:<7.2f}  {r['baseline']}")
    if "feedrank_kernel_mib" in r:
        print(f"{'':<12} memory while the kernel ran, above the data already resident: "
              f"feedrank {r['feedrank_kernel_mib']} MiB, baseline {r['baseline_kernel_mib']} MiB")
    if kernel == "cosine_topk":
        print(f"{'':<12} fit {r['feedrank_fit_s']:.2f} + recommend {r['feedrank_recommend_s']:.2f} s vs "
              f"fit {r['baseline_fit_s']:.2f} + recommend {r['baseline_recommend_s']:.2f} s "
              f"({r['interactions']:,} interactions)")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_side":
        kernel, side, scale, threads, d = argv[1:6]
        print(json.dumps(run_side(kernel, side, float(scale), int(threads), Path(d))))
        return 0
    p = argparse.ArgumentParser(prog="scripts/bench_kernels.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="time each kernel against its baseline")
    k.add_argument("--scale", type=float, default=1.0, help="size factor (0.1 for a quick run)")
    k.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    k.add_argument("--json", type=Path, help="also write the results as JSON here")
    k.add_argument("--only", nargs="+", choices=KERNELS, default=list(KERNELS))
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale: must be > 0")
    if args.threads < 1:
        p.error("--threads: must be >= 1")
    print_header(args.scale, args.threads)
    results = kernels(args.scale, args.threads, args.only)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
