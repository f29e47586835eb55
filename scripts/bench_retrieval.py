"""Candidate retrieval against exhaustive scoring (issue 17): the same users scored by both paths
of ``feedrank.HybridModel.topk`` in one run, on the benchmark's synthetic data, without
PostgreSQL.

    make bench-retrieval [RETRIEVAL='{"budget": 4000}']
    PYTHONPATH=. python scripts/bench_retrieval.py [--users 30000] [--posts 60000] [--interactions 1500000]
                                      [--config PATH] [--retrieval JSON] [--sample N] [--json PATH]
    PYTHONPATH=. python scripts/bench_retrieval.py --growth 30000,100000,300000 --sample 3000

The data set is ``feedrank demo-data --synthetic``'s (``demo_data.generate_synthetic``, the one
``make bench-pipeline`` loads); the features and the model are built by the pipeline's own
functions (``compute_post_features``, ``user_features``, ``prepare_model`` of
dagster_pipeline/assets.py) from a snapshot assembled in memory, so both paths see what the
pipeline would give them. ``--config``: a ScoringConfig file (e.g. ``feedrank tune``'s output);
``--retrieval``: the candidate path's settings laid over it as JSON
(``'{"budget": 3000, "posting_limit": 500}'``; ``mode`` is set by the script).

Printed: each path's ``topk`` time over the same users (model preparation apart) and their ratio,
and the distribution over users of the top-k overlap, |candidate list ∩ exhaustive list| / |the
exhaustive list| (users with an empty exhaustive list are left out), where the misses sit (the
exhaustive rank of each user's best missed post), and how often the scores of the shared posts
differ (the candidate path's approximate normalizations).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl

import feedrank
from feedrank import growth
from feedrank.config import load_config
from feedrank.demo_data import INTERACTION_TYPES, generate_synthetic


def snapshot(users: int, posts: int, interactions: int, seed: int) -> dict:
    """A ``user_interactions_snapshot`` bundle of the synthetic data set, built in memory."""
    ds = generate_synthetic(seed, users, posts, interactions)
    snapshot_at = float(ds.post_created_at.max()) / 1e6 + 60.0
    return {
        "users": pl.DataFrame({"user_id": [str(i) for i in range(ds.n_users)],
                               "shard_hash": np.zeros(ds.n_users, np.int64)}),
        "posts": pl.DataFrame({"post_id": [str(i) for i in range(ds.n_posts)], "content": ds.post_content,
                               "created_at": ds.post_created_at / 1e6,
                               "author_idx": ds.post_author}),
        "interactions": pl.DataFrame({"user_idx": ds.interaction_user, "post_idx": ds.interaction_post,
                                      "type": ds.interaction_type.astype(np.int8),
                                      "created_at": ds.interaction_created_at / 1e6}),
        "snapshot_at": snapshot_at,
        "interaction_types": list(INTERACTION_TYPES),
        "experiments": [],
    }


def timed_topk(
    model: feedrank.HybridModel, users: np.ndarray, batch: int = 1000
) -> tuple[np.ndarray, np.ndarray, float]:
    indices, scores, seconds = [], [], 0.0
    for s in range(0, len(users), batch):
        t0 = time.perf_counter()
        res = model.topk(users[s : s + batch])
        seconds += time.perf_counter() - t0
        indices.append(res["indices"])
        scores.append(res["scores"])
    return np.concatenate(indices), np.concatenate(scores), seconds


def misses(exhaustive: np.ndarray, retrieved: np.ndarray) -> list[np.ndarray]:
    """Per user with a non-empty exhaustive list: which of its posts, in its order, the candidate
    list misses (users with an empty exhaustive list are left out)."""
    return [~np.isin(a[a >= 0], b[b >= 0]) for a, b in zip(exhaustive, retrieved) if (a >= 0).any()]


def overlap(missed: list[np.ndarray]) -> np.ndarray:
    """Per user: the share of the exhaustive list the candidate list holds."""
    return np.asarray([(~m).sum() / m.size for m in missed])


def first_miss(missed: list[np.ndarray]) -> np.ndarray:
    """Per user: the rank (1-based) in the exhaustive list of the best post the candidate list
    misses, or its length + 1 when none is missed. With the cosine normalization the shared posts
    score the same in both lists, so a user's first ``first_miss - 1`` posts are the exhaustive
    ones, in the same order."""
    return np.asarray([np.argmax(m) + 1 if m.any() else m.size + 1 for m in missed])


def measure(users_n: int, posts_n: int, interactions_n: int, args) -> dict:
    """Both paths on one synthetic data set: their times, and the overlap of their lists."""
    from dagster_pipeline.assets import compute_post_features, prepare_model, user_features

    t0 = time.perf_counter()
    snap = snapshot(users_n, posts_n, interactions_n, args.seed)
    base = load_config(args.config)
    exhaustive_cfg = load_config(None, {**base, "retrieval": {**base["retrieval"], "mode": "exhaustive"}})
    candidates_cfg = load_config(
        None, {**base, "retrieval": {**base["retrieval"], **json.loads(args.retrieval), "mode": "candidates"}}
    )
    post_features = compute_post_features(exhaustive_cfg, snap).value
    features = user_features(SimpleNamespace(scoring_config=exhaustive_cfg), snap).value
    del snap
    print(f"data: {users_n:,} users x {posts_n:,} posts x {interactions_n:,} interactions, "
          f"{post_features['tfidf'].shape[1]:,} terms, built in {time.perf_counter() - t0:.1f} s", flush=True)
    users = np.arange(users_n, dtype=np.int64)
    if args.sample:
        users = np.sort(np.random.default_rng(args.seed).choice(users, min(args.sample, users.size), replace=False))

    figures: dict = {"data": {"users": users_n, "posts": posts_n, "interactions": interactions_n},
                     "users": int(users.size), "config": candidates_cfg["retrieval"],
                     "collaborative": candidates_cfg["collaborative"], "top_k": candidates_cfg["top_k"]}
    results = {}
    for mode, cfg in (("exhaustive", exhaustive_cfg), ("candidates", candidates_cfg)):
        t0 = time.perf_counter()
        model = prepare_model(cfg, post_features, features)
        prepare = time.perf_counter() - t0
        idx, sc, seconds = timed_topk(model, users)
        del model
        results[mode] = (idx, sc)
        figures[f"{mode}_prepare_seconds"] = prepare
        figures[f"{mode}_topk_seconds"] = seconds
        # every user's scoring time, from the users scored (the same users for both paths)
        figures[f"{mode}_topk_all_users_seconds"] = seconds * users_n / users.size
        print(f"{mode:>10}: prepare {prepare:6.2f} s, topk {seconds:7.2f} s "
              f"({1e3 * seconds / users.size:.3f} ms per user)", flush=True)
    figures["topk_ratio"] = figures["exhaustive_topk_seconds"] / figures["candidates_topk_seconds"]
    missed = misses(results["exhaustive"][0], results["candidates"][0])
    ov = overlap(missed)
    dist = {"min": float(ov.min()), "p1": float(np.percentile(ov, 1)), "p5": float(np.percentile(ov, 5)),
            "median": float(np.median(ov)), "mean": float(ov.mean()),
            "same_set": float((ov == 1.0).mean()), "under_99": int((ov < 0.99).sum())}
    figures["overlap"] = dist
    # where the misses sit: how far down the exhaustive list the best missed post is
    miss = first_miss(missed)
    figures["first_miss"] = {"min": int(miss.min()), "p1": float(np.percentile(miss, 1)),
                             "same_first_10": float((miss > 10).mean()), "same_first_50": float((miss > 50).mean())}
    # the posts both lists hold: is their score the same (normalizations exact)?
    (ei, es), (ci, cs) = results["exhaustive"], results["candidates"]
    same = differ = 0
    for a, sa, b, sb in zip(ei, es, ci, cs):
        common, ia, ib = np.intersect1d(a[a >= 0], b[b >= 0], return_indices=True)
        d = np.abs(sa[a >= 0][ia] - sb[b >= 0][ib]) > 1e-6
        differ += int(d.sum())
        same += int((~d).sum())
    figures["shared_posts_with_other_score"] = differ / max(1, same + differ)
    print(f"topk ratio (exhaustive / candidates): {figures['topk_ratio']:.2f}x")
    print("top-{k} overlap over {n:,} users: min {min:.4f}  p1 {p1:.4f}  p5 {p5:.4f}  median {median:.4f}  "
          "mean {mean:.4f}  (users with the same set: {same_set:.1%}; under 0.99: {under_99})".format(
              k=candidates_cfg["top_k"], n=ov.size, **dist))
    print("rank of the best post missed ({none}: none): min {min}  p1 {p1:.0f}  (users whose first 10 / 50 posts "
          "are all in the candidate list: {same_first_10:.2%} / {same_first_50:.2%})".format(
              none=candidates_cfg["top_k"] + 1, **figures["first_miss"]))
    print(f"shared posts scored differently (approximate normalization): "
          f"{figures['shared_posts_with_other_score']:.2%}", flush=True)
    return figures


def exponents(a: dict, b: dict) -> str:
    """Each path's growth exponent e from run a to run b (time ~ users^e), "exhaustive / candidates"."""
    e = [growth.exponent(a["data"]["users"], a[f"{m}_topk_all_users_seconds"],
                         b["data"]["users"], b[f"{m}_topk_all_users_seconds"])
         for m in ("exhaustive", "candidates")]
    return f"{e[0]:.2f} / {e[1]:.2f}"


def growth_table(runs: list[dict]) -> str:
    """Scoring time of every user by size, each path's growth exponent between sizes (time ~
    users^e, posts and interactions growing with users), as a markdown table."""
    rows = ["| users x posts x interactions | exhaustive topk, all users | candidates topk, all users "
            "| exponent exhaustive / candidates | overlap mean / p1 / min |",
            "|---|---:|---:|---|---|"]
    for i, r in enumerate(runs):
        d = r["data"]
        exp = exponents(runs[i - 1], r) if i else ""
        o = r["overlap"]
        rows.append(f"| {d['users']:,} x {d['posts']:,} x {d['interactions']:,} "
                    f"| {r['exhaustive_topk_all_users_seconds']:.1f} s | {r['candidates_topk_all_users_seconds']:.1f} s "
                    f"| {exp} | {o['mean']:.3f} / {o['p1']:.3f} / {o['min']:.3f} |")
    if len(runs) > 1:
        rows.append(f"| first to last | | | {exponents(runs[0], runs[-1])} | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=30_000)
    ap.add_argument("--posts", type=int, default=60_000)
    ap.add_argument("--interactions", type=int, default=1_500_000)
    ap.add_argument("--growth", help="comma-separated user counts (posts 2x, interactions 50x each, "
                    "as issue 17 sets them): both paths at each size, and the growth exponents")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--config", help="a ScoringConfig JSON file (default: the core's defaults)")
    ap.add_argument("--retrieval", default="{}", help="retrieval settings as JSON, over the config's")
    ap.add_argument("--sample", type=int, default=0, help="score this many random users (0: all)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)

    if args.growth:
        runs = [measure(*growth.size(int(x)), args) for x in args.growth.split(",")]
        print(growth_table(runs))
        figures: dict | list = runs
    else:
        figures = measure(args.users, args.posts, args.interactions, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
