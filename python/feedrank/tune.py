"""``feedrank tune``: choose the hybrid's configuration on a validation split.

The validation split is cut from the train part only (each user's latest 20% of train, as
``shared/EVAL.md`` asks); the test part is never read here (a test perturbs it and checks that the
chosen configuration does not move). The search, NDCG@10 on validation as the objective:

1. the model in the collaborative slot: ``user_user`` and ``item_item`` (neighbourhood size x
   interaction weighting) and ``ridge`` (neighbourhood size x ridge penalty), each crossed with
   the recency of the user's own history (``history_half_life``; 0 = off), scored alone;
2. with that model fixed, the weights of content, recency (with its time constant ``tau``) and
   engagement next to collaborative = 1, one component at a time (coordinate search); a weight
   stays 0 unless it improves validation NDCG.

Nothing here is specific to a data set: the grids are relative (weights) or span orders of
magnitude (penalties, half-lives), and the chosen values come out of the search.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

import feedrank
from feedrank import datasets, protocol

__all__ = ["GRIDS", "tune", "add_arguments", "run"]

GRIDS: dict[str, dict[str, Any]] = {
    "full": {
        # "binary": similarities from who-saw-what, scores from the (history-weighted) values.
        "user_user": {"neighbors": [25, 50, 100], "weighting": ["none", "binary", "bm25"]},
        "item_item": {"neighbors": [20, 50, 100, 200], "weighting": ["none", "binary", "tfidf", "bm25"]},
        "ridge": {"neighbors": [50, 100, 200], "ridge_l2": [30.0, 100.0, 300.0, 1000.0]},
        "history_half_life": [0.0, 5.0, 10.0, 20.0, 40.0],
        "content": [0.1, 0.2, 0.4],
        "recency": [0.05, 0.2],
        "recency_tau_days": [7.0, 30.0, 180.0],
        "engagement": [0.05, 0.2],
    },
    "small": {
        "user_user": {"neighbors": [50], "weighting": ["none"]},
        "item_item": {"neighbors": [50], "weighting": ["none"]},
        "ridge": {"neighbors": [50], "ridge_l2": [30.0, 100.0]},
        "history_half_life": [0.0, 10.0],
        "content": [0.1],
        "recency": [0.1],
        "recency_tau_days": [30.0],
        "engagement": [0.1],
    },
}


def _item_scorer_topk(s: sp.csr_matrix, x: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    """Top-k of ``x_u @ S`` over items the user has not interacted with (item-based models)."""
    idx, _ = feedrank.recommend_items(x, s, users, k=k, exclude_interacted=True)
    return np.asarray(idx, np.int64)


def tune(split: protocol.Split, grid: str | dict[str, Any] = "full", log: Callable[[str], None] | None = None,
         tfidf: sp.csr_matrix | None = None, k: int = 10) -> dict[str, Any]:
    """Chooses a ScoringConfig on ``split.validation()`` (never ``split``'s test part).
    Returns ``{"config": dict, "validation": metrics of the chosen config, "trials": [...]}``."""
    g = GRIDS[grid] if isinstance(grid, str) else grid
    say = log or (lambda s: None)
    valid = split.validation()
    if len(valid.eval_users) == 0:
        raise ValueError("dataset: no user has enough train interactions (>= 5) for a validation split")
    feats = protocol.features(valid, tfidf)
    d = valid.data
    users = valid.eval_users
    width = max(k, 10)
    trials: list[dict[str, Any]] = []
    base = feedrank.default_config()

    def record(params: dict[str, Any], topk: np.ndarray, seconds: float) -> float:
        m = protocol.score_topk(topk, valid, k=k)
        trials.append({**params, "ndcg": m[f"ndcg@{k}"], "coverage": m[f"coverage@{k}"], "seconds": round(seconds, 2)})
        say(f"  {params}: valid ndcg@{k}={m[f'ndcg@{k}']:.4f} cov={m[f'coverage@{k}']:.4f}")
        return m[f"ndcg@{k}"]

    histories = {h: feats.interactions(d.n_users, d.n_items, h) for h in g["history_half_life"]}
    binary = valid.train
    best: tuple[float, dict[str, Any]] = (-1.0, {})

    def consider(score: float, params: dict[str, Any]) -> None:
        nonlocal best
        if score > best[0]:  # strict: the first of equal candidates wins, so the result is stable
            best = (score, params)

    # 1. the collaborative model, alone.
    say("collaborative model (alone):")
    for nb in g["user_user"]["neighbors"]:
        for wt in g["user_user"]["weighting"]:
            for h in g["history_half_life"]:
                p = {"collaborative": "user_user", "neighbors": nb, "weighting": wt, "history_half_life": h}
                t = time.perf_counter()
                topk = protocol.hybrid_ranking(valid, feats, protocol.single_component("collaborative", **p), users, width)
                consider(record(p, topk, time.perf_counter() - t), p)
    for nb in g["item_item"]["neighbors"]:
        for wt in g["item_item"]["weighting"]:
            for h in g["history_half_life"]:
                # As the hybrid does: similarities from the (history-weighted) interaction values.
                p = {"collaborative": "item_item", "neighbors": nb, "weighting": wt, "history_half_life": h}
                t = time.perf_counter()
                s = feedrank.item_neighbors(histories[h], k=nb, weighting=wt)
                topk = _item_scorer_topk(s, histories[h], users, width)
                consider(record(p, topk, time.perf_counter() - t), p)
    for nb in g["ridge"]["neighbors"]:
        for l2 in g["ridge"]["ridge_l2"]:
            t = time.perf_counter()
            s = feedrank.ridge_item_neighbors(binary, neighbors=nb, l2=l2)
            fit = time.perf_counter() - t
            for h in g["history_half_life"]:
                p = {"collaborative": "ridge", "neighbors": nb, "weighting": "binary", "ridge_l2": l2,
                     "history_half_life": h}
                t = time.perf_counter()
                topk = _item_scorer_topk(s, histories[h], users, width)
                consider(record(p, topk, fit + time.perf_counter() - t), p)
    collab_score, collab = best
    say(f"chosen collaborative model: {collab} (valid ndcg@{k}={collab_score:.4f})")

    # 2. the other components' weights next to collaborative = 1, one at a time.
    weights = {c: 1.0 if c == "collaborative" else 0.0 for c in feedrank.component_names()}
    cfg = feedrank.validate_config({**base, **collab, "weights": weights})

    def hybrid_score(c: dict[str, Any], label: dict[str, Any]) -> float:
        t = time.perf_counter()
        topk = protocol.hybrid_ranking(valid, feats, c, users, width)
        return record(label, topk, time.perf_counter() - t)

    current = hybrid_score(cfg, {"weights": dict(weights)})
    say("component weights (collaborative = 1):")
    for comp in (c for c in weights if c != "collaborative"):
        taus = g["recency_tau_days"] if comp == "recency" else [cfg["recency_tau_days"]]
        chosen = None
        for w in g[comp]:
            for tau in taus:
                trial = {**cfg, "weights": {**cfg["weights"], comp: w}, "recency_tau_days": tau}
                sc = hybrid_score(feedrank.validate_config(trial), {"weights": trial["weights"], "recency_tau_days": tau})
                if sc > current:
                    current, chosen = sc, trial
        if chosen is not None:
            cfg = feedrank.validate_config(chosen)
    # Weights summing to 1 read like the design's; the ranking does not change.
    total = sum(cfg["weights"].values())
    cfg = feedrank.validate_config({**cfg, "weights": {c: round(w / total, 6) for c, w in cfg["weights"].items()}})
    say(f"chosen config: {json.dumps(_chosen(cfg))} (valid ndcg@{k}={current:.4f})")
    return {"config": cfg, "validation": {"ndcg@10": current}, "trials": trials}


def _chosen(cfg: dict[str, Any]) -> dict[str, Any]:
    keys = ("weights", "collaborative", "neighbors", "weighting", "ridge_l2", "history_half_life", "recency_tau_days")
    return {k: cfg[k] for k in keys if k in cfg}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="MovieLens directory (ratings.csv or u.data format)")
    parser.add_argument("--database-url", help="tune on the project's PostgreSQL instead")
    parser.add_argument("--output", "-o", default="feedrank-config.json",
                        help="where to write the chosen ScoringConfig JSON (default feedrank-config.json)")
    parser.add_argument("--grid", choices=tuple(GRIDS), default="full", help="search grid (default full)")
    parser.add_argument("--trials", help="also write every trial (params, validation NDCG) as JSON here")
    parser.add_argument("--quiet", action="store_true", help="do not print each trial")


def run(args: argparse.Namespace) -> int:
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    data = datasets.load_dataset(args.dataset, args.database_url)
    split = protocol.temporal_split(data)
    t = time.perf_counter()
    result = tune(split, grid=args.grid, log=log)
    seconds = time.perf_counter() - t
    cfg = result["config"]
    Path(args.output).write_text(json.dumps(cfg, indent=2) + "\n")
    feats = protocol.features(split)
    test = protocol.score_topk(protocol.model_topk("hybrid_tuned", split, feats, k=10, tuned=cfg), split)
    print(f"Chosen on the validation split of {data.name} in {seconds:.0f} s "
          f"(validation NDCG@10 {result['validation']['ndcg@10']:.4f}):")
    for key, value in _chosen(cfg).items():
        print(f"  {key}: {json.dumps(value)}")
    print(f"Test part ({test['users']} users): " + ", ".join(
        f"{name} {test[name]:.4f}" for name in ("precision@10", "recall@10", "ndcg@10", "coverage@10")))
    print(f"Config written to {args.output}")
    if args.trials:
        Path(args.trials).write_text(json.dumps(result["trials"], indent=2) + "\n")
    return 0
