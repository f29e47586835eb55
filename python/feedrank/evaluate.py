"""``feedrank evaluate``: every model of the offline evaluation on one data set, as a table, a JSON
document and a chart (``shared/EVAL.md``'s protocol, :mod:`feedrank.protocol`).

Python users::

    from feedrank import datasets, evaluate
    data = datasets.load_dataset("../shared/data/movielens-latest-small")
    report = evaluate.evaluate(data, models=["popular", "hybrid_default"])
    print(evaluate.markdown_table(report))

``hybrid_tuned`` is tuned first (:mod:`feedrank.tune`) unless a config is given; ``ease`` is the
dense EASE reference (lambda 200) the tuned hybrid is compared with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import feedrank
from feedrank import datasets, protocol, tune
from feedrank.config import load_config
from feedrank.datasets import Dataset

__all__ = ["add_arguments", "evaluate", "markdown_table", "report_json", "run", "write_chart"]


def evaluate(data: Dataset, models: Sequence[str] = protocol.MODELS, config: dict[str, Any] | None = None,
             seed: int = 0, k: int = 10, chart_k: int = 50, tune_grid: str = "full",
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs the protocol for the named models. ``hybrid_tuned`` uses ``config`` (a ScoringConfig
    dict, e.g. from ``feedrank tune``) or, without one, tunes on the validation split first.
    Returns ``{"dataset", "users_evaluated", "rows": [...], "curves": {model: {...}}, "config"}``."""
    for m in models:
        if m not in protocol.MODELS:
            raise ValueError(f"models: unknown model {m!r}; known: {', '.join(protocol.MODELS)}")
    split = protocol.temporal_split(data)
    if len(split.eval_users) == 0:
        raise ValueError("dataset: no user has enough interactions (>= 5) to be evaluated")
    t0 = time.perf_counter()
    feats = protocol.features(split)
    feature_seconds = time.perf_counter() - t0
    tune_seconds = 0.0
    if "hybrid_tuned" in models:
        if config is None:
            t0 = time.perf_counter()
            config = tune.tune(split, grid=tune_grid, log=log, tfidf=feats.tfidf)["config"]
            tune_seconds = time.perf_counter() - t0
        else:
            config = feedrank.validate_config(config)
    rows, curve_data = [], {}
    width = max(k, chart_k)
    for m in models:
        t0 = time.perf_counter()
        topk = protocol.model_topk(m, split, feats, k=width, seed=seed, tuned=config)
        seconds = time.perf_counter() - t0 + feature_seconds + (tune_seconds if m == "hybrid_tuned" else 0.0)
        row = {"model": m, **protocol.score_topk(topk, split, k=k), "seconds": round(seconds, 3)}
        row.pop("users")
        rows.append(row)
        curve_data[m] = protocol.curve_lists(topk, split, chart_k)
        if log:
            log(f"{m}: ndcg@{k}={row[f'ndcg@{k}']:.4f} ({row['seconds']:.1f}s)")
    return {
        "dataset": data.name,
        "users_evaluated": int(len(split.eval_users)),
        "rows": rows,
        "curves": curve_data,
        "config": config,
    }


def markdown_table(report: dict[str, Any], k: int = 10) -> str:
    cols = [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"coverage@{k}"]
    lines = [
        f"Dataset {report['dataset']}: {report['users_evaluated']} users evaluated",
        "",
        "| model | " + " | ".join(c.replace("precision", "P").replace("recall", "R").replace("ndcg", "NDCG")
                                  .replace("coverage", "Cov") for c in cols) + " | seconds |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + f" | {r['seconds']:.1f} |")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: str | Path) -> None:
    """NDCG@k and Recall@k (k = 1..50) per model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, c in report["curves"].items():
        axes[0].plot(c["k"], c["ndcg"], label=model)
        axes[1].plot(c["k"], c["recall"], label=model)
    for ax, name in zip(axes, ("NDCG@k", "Recall@k")):
        ax.set_xlabel("k")
        ax.set_ylabel(name)
        ax.set_title(f"{name} on {report['dataset']} ({report['users_evaluated']} users)")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_json(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's JSON shape (plus the hybrid_tuned config when there is one)."""
    out = {"dataset": report["dataset"], "users_evaluated": report["users_evaluated"], "rows": report["rows"]}
    if report.get("config") is not None:
        out["config"] = report["config"]
    return out


# --- command line -------------------------------------------------------------------------------


PROTOCOLS = ("per-user", "time-cut")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="MovieLens directory (ratings.csv or u.data format)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="per-user",
                        help="per-user: EVAL.md's per-user temporal split (default); time-cut: items born "
                             "over time, the API's blend replayed after a global cut (feedrank.timecut)")
    parser.add_argument("--database-url", help="evaluate on the project's PostgreSQL instead")
    parser.add_argument("--models", default=",".join(protocol.MODELS),
                        help="comma-separated subset of: " + ", ".join(protocol.MODELS))
    parser.add_argument("--config", help="ScoringConfig JSON from `feedrank tune` for hybrid_tuned (else tuned here)")
    parser.add_argument("--json", dest="json_path", help="write the table as JSON to this path")
    parser.add_argument("--chart", help="write NDCG@k / Recall@k curves (k = 1..50) as a PNG to this path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model (default 0)")
    parser.add_argument("--grid", choices=("full", "small"), default="full", help="tuning grid when no --config")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    cut = parser.add_argument_group("time-cut protocol")
    cut.add_argument("--synthetic", action="store_true",
                     help="replay feedrank demo-data's synthetic data (generated here) instead of a MovieLens directory")
    cut.add_argument("--data-seed", type=int, default=42, help="seed of the synthetic data (default 42)")
    cut.add_argument("--users", type=int, default=2_000, help="synthetic users (default 2000)")
    cut.add_argument("--posts", type=int, default=10_000, help="synthetic posts (default 10000)")
    cut.add_argument("--interactions", type=int, default=200_000, help="synthetic interactions (default 200000)")
    cut.add_argument("--min-history", type=int, default=5,
                     help="users evaluated: at least this many posts engaged with before the cut (default 5)")
    cut.add_argument("--search-shares", action="store_true",
                     help="also choose sources.blend shares on the validation window and report their blend")


def run(args: argparse.Namespace) -> int:
    if args.protocol == "time-cut":
        return _run_time_cut(args)
    if args.synthetic:
        raise ValueError("synthetic: the synthetic data is replayed by --protocol time-cut only")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    config = load_config(args.config) if args.config else None
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    data = datasets.load_dataset(args.dataset, args.database_url)
    report = evaluate(data, models=models, config=config, seed=args.seed, tune_grid=args.grid, log=log)
    print(markdown_table(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report_json(report), indent=2) + "\n")
    if args.chart:
        write_chart(report, args.chart)
    return 0


def _run_time_cut(args: argparse.Namespace) -> int:
    from feedrank import timecut

    if args.database_url or args.chart:
        raise ValueError("protocol: time-cut reads a MovieLens directory or --synthetic (no --database-url, no --chart)")
    if args.synthetic == bool(args.dataset):
        raise ValueError("dataset: time-cut takes a MovieLens directory or --synthetic, exactly one")
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    config = load_config(args.config) if args.config else None
    if args.synthetic:
        events = timecut.synthetic_log(args.data_seed, args.users, args.posts, args.interactions)
    else:
        events = timecut.movielens_log(args.dataset)
    report = timecut.evaluate(events, config, search=args.search_shares, min_history=args.min_history, log_fn=log)
    if "validation" in report:
        print(timecut.markdown_table(report["validation"]["report"]))
        print()
    print(timecut.markdown_table(report["test"]))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0
