"""Offline evaluation of feedrank's recommenders, exactly as ``shared/EVAL.md`` defines it.

The protocol, in short: every interaction is one implicit event (user, item, time); users with at
least 5 interactions have their latest ``max(1, ceil(0.2 n))`` (ordered by time, then raw item id)
held out as test; each model ranks every catalog item not in the user's train set; ties go to the
lower item index; Precision/Recall/NDCG@10 and catalog coverage come from
:func:`feedrank.ranking_metrics` (Rust). Tuning uses a validation split cut from the train part the
same way, never the test part (:mod:`feedrank.tune`).

Python users::

    import feedrank.evaluate as ev
    data = ev.load_dataset("../shared/data/movielens-latest-small")
    report = ev.evaluate(data, models=["popular", "hybrid_default"])
    print(ev.markdown_table(report))

    # any model's lists: topk is int64 [n_eval_users, >= 10], rows aligned with split.eval_users
    split = ev.temporal_split(data)
    ev.score_topk(my_topk, split)          # {"precision@10": ..., "ndcg@10": ..., ...}
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

import feedrank

__all__ = [
    "Dataset",
    "Split",
    "MODELS",
    "load_dataset",
    "load_movielens",
    "load_database",
    "temporal_split",
    "history_weights",
    "score_topk",
    "curves",
    "model_topk",
    "evaluate",
    "markdown_table",
    "write_chart",
    "recommendation_quality",
]

MODELS = (
    "random",
    "popular",
    "recent",
    "user_user",
    "item_item",
    "content",
    "hybrid_default",
    "hybrid_tuned",
)

DAY = 86400.0


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Implicit interactions plus item content. Users and items are dense indices."""

    name: str
    users: np.ndarray  # int64 [n]: user index of each interaction
    items: np.ndarray  # int64 [n]: item index of each interaction
    timestamps: np.ndarray  # int64 [n]: seconds
    raw_items: np.ndarray  # int64 [n]: the item's raw id (the split's tie-break), or its index
    user_ids: list[str]
    item_ids: list[str]
    item_text: list[str]  # content per item (title, genres, tags...); "" when none
    # When the item was published (seconds); None: its first interaction in train stands in.
    item_created: np.ndarray | None = None
    # Author of each item as a user index, -1 when not a user of the data set.
    item_author: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "timestamps", "raw_items"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: has {len(getattr(self, name))} entries, users has {n}")
        if len(self.item_text) != self.n_items:
            raise ValueError(f"item_text: has {len(self.item_text)} entries for {self.n_items} items")


def _index(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys, idx = np.unique(raw, return_inverse=True)
    return keys, idx.astype(np.int64)


def _dedupe_first(users, items, ts, raw):
    """One interaction per (user, item): the earliest (an item seen twice is one implicit event)."""
    order = np.lexsort((raw, ts, items, users))
    u, i = users[order], items[order]
    first = np.ones(len(u), bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = order[first]
    keep.sort()
    return users[keep], items[keep], ts[keep], raw[keep]


def load_movielens(path: str | Path) -> Dataset:
    """A MovieLens directory: ``ratings.csv`` (+ ``movies.csv``, ``tags.csv``; ml-latest format)
    or ``u.data`` (+ ``u.item``, ``u.genre``; MovieLens 100K format). Every rating is one
    interaction whatever its value; content is title + genres + tags."""
    root = Path(path)
    if (root / "ratings.csv").is_file():
        a = np.loadtxt(root / "ratings.csv", delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
        uid, mid, ts = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 3].astype(np.int64)
        text: dict[int, list[str]] = {}
        if (root / "movies.csv").is_file():
            with open(root / "movies.csv", newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    genres = row["genres"].replace("|", " ")
                    if genres == "(no genres listed)":
                        genres = ""
                    text[int(row["movieId"])] = [row["title"], genres]
        if (root / "tags.csv").is_file():
            with open(root / "tags.csv", newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    text.setdefault(int(row["movieId"]), []).append(row["tag"])
    elif (root / "u.data").is_file():
        a = np.loadtxt(root / "u.data", dtype=np.int64, ndmin=2)
        uid, mid, ts = a[:, 0], a[:, 1], a[:, 3]
        text = {}
        genres: list[str] = []
        if (root / "u.genre").is_file():
            for line in (root / "u.genre").read_text(encoding="latin-1").splitlines():
                if "|" in line:
                    genres.append(line.split("|")[0])
        if (root / "u.item").is_file():
            for line in (root / "u.item").read_text(encoding="latin-1").splitlines():
                parts = line.split("|")
                if len(parts) < 5:
                    continue
                flags = parts[5:]
                names = [g for g, f in zip(genres, flags) if f.strip() == "1" and g != "unknown"]
                text[int(parts[0])] = [parts[1], " ".join(names)]
    else:
        raise ValueError(f"dataset: {root} has neither ratings.csv nor u.data (not a MovieLens directory)")
    if len(uid) == 0:
        raise ValueError(f"dataset: {root} has no ratings")
    users_raw, users = _index(uid)
    items_raw, items = _index(mid)
    users, items, ts, raw = _dedupe_first(users, items, ts, mid)
    return Dataset(
        name=root.name,
        users=users,
        items=items,
        timestamps=ts,
        raw_items=raw,
        user_ids=[str(x) for x in users_raw],
        item_ids=[str(x) for x in items_raw],
        item_text=[" ".join(text.get(int(m), [])) for m in items_raw],
    )


def load_database(url: str, since_days: float | None = None) -> Dataset:
    """The project's PostgreSQL: positive interactions (every type but ``hide``) of
    ``user_interactions``, posts' content, creation time and author. The interactions come in bulk
    (``COPY`` into polars), not row by row: millions of them at the pipeline's scale."""
    import polars as pl
    import psycopg
    from psycopg import sql

    where = sql.SQL("WHERE i.interaction_type <> 'hide'")
    if since_days is not None:
        where = sql.SQL("{} AND i.created_at >= now() - make_interval(secs => {})").format(
            where, sql.Literal(float(since_days) * DAY)
        )
    query = sql.SQL(
        "COPY (SELECT i.user_id, i.post_id, floor(extract(epoch FROM i.created_at))::bigint "
        "FROM user_interactions i {}) TO STDOUT (FORMAT csv)"
    ).format(where)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        data = bytearray()
        with cur.copy(query) as copy:
            for block in copy:
                data += block
        if not data:
            raise ValueError("database-url: the database has no positive interactions to evaluate")
        frame = pl.read_csv(
            bytes(data), has_header=False, new_columns=["user", "post", "ts"],
            schema_overrides={"user": pl.String, "post": pl.String, "ts": pl.Int64},
        )
        # sorted distinct ids and each row's position among them (np.unique's order and codes)
        users_raw = frame["user"].unique().sort().to_numpy()
        items_raw = frame["post"].unique().sort().to_numpy()
        users = (frame["user"].rank("dense") - 1).cast(pl.Int64).to_numpy()
        items = (frame["post"].rank("dense") - 1).cast(pl.Int64).to_numpy()
        ts = frame["ts"].to_numpy()
        cur.execute(
            "SELECT id::text, content, extract(epoch FROM created_at)::float8, user_id::text "
            "FROM posts WHERE id = ANY(%s::uuid[])",
            (list(items_raw),),
        )
        posts = {r[0]: r[1:] for r in cur.fetchall()}
    user_pos = {u: k for k, u in enumerate(users_raw)}
    text = [posts.get(p, ("", None, None))[0] or "" for p in items_raw]
    created = np.array(
        [posts[p][1] if p in posts else np.nan for p in items_raw], dtype=np.float64
    )
    author = np.array([user_pos.get(posts.get(p, (None, None, None))[2], -1) for p in items_raw], np.int64)
    users, items, ts, raw = _dedupe_first(users, items, ts, items.copy())
    return Dataset(
        name="database",
        users=users,
        items=items,
        timestamps=ts,
        raw_items=raw,
        user_ids=[str(x) for x in users_raw],
        item_ids=[str(x) for x in items_raw],
        item_text=text,
        item_created=np.where(np.isfinite(created), created, np.nan),
        item_author=author,
    )


def load_dataset(dataset: str | None = None, database_url: str | None = None) -> Dataset:
    if database_url:
        return load_database(database_url)
    if not dataset:
        raise ValueError("dataset: give a MovieLens directory or --database-url")
    if not Path(dataset).is_dir():
        raise ValueError(f"dataset: {dataset} is not a directory")
    return load_movielens(dataset)


# --- split --------------------------------------------------------------------------------------


@dataclass
class Split:
    """Train and held-out parts of one data set (or of a train part, for validation)."""

    data: Dataset
    train_mask: np.ndarray  # bool over data's interactions
    test_mask: np.ndarray
    train: sp.csr_matrix = field(init=False)  # binary users x items
    test: sp.csr_matrix = field(init=False)
    eval_users: np.ndarray = field(init=False)  # users with a non-empty test part

    def __post_init__(self) -> None:
        d = self.data
        self.train = _binary(d.users[self.train_mask], d.items[self.train_mask], d.n_users, d.n_items)
        self.test = _binary(d.users[self.test_mask], d.items[self.test_mask], d.n_users, d.n_items)
        self.eval_users = np.flatnonzero(np.diff(self.test.indptr) > 0).astype(np.int64)

    def train_part(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        m = self.train_mask
        d = self.data
        return d.users[m], d.items[m], d.timestamps[m], d.raw_items[m]

    def validation(self, min_interactions: int = 5, test_fraction: float = 0.2) -> "Split":
        """The same split applied to the train part only: what tuning may look at."""
        m = self.train_mask
        inner = _split_mask(*self.train_part(), min_interactions, test_fraction)
        test = np.zeros_like(m)
        test[np.flatnonzero(m)[inner]] = True
        return Split(self.data, m & ~test, test)


def _binary(users, items, n_users, n_items) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items), dtype=np.float32
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _split_mask(users, items, ts, raw, min_interactions, test_fraction) -> np.ndarray:
    if not (0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
    if min_interactions < 2:
        raise ValueError(f"min_interactions: must be >= 2, got {min_interactions}")
    order = np.lexsort((raw, ts, users))
    u = users[order]
    n_users = int(users.max()) + 1 if len(users) else 0
    counts = np.bincount(u, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(u)) - starts[u]
    n = counts[u]
    n_test = np.maximum(1, np.ceil(test_fraction * n)).astype(np.int64)
    held = (n >= min_interactions) & (pos >= n - n_test)
    mask = np.zeros(len(users), bool)
    mask[order[held]] = True
    return mask


def temporal_split(data: Dataset, min_interactions: int = 5, test_fraction: float = 0.2) -> Split:
    """EVAL.md's per-user temporal split: users with >= ``min_interactions`` interactions, sorted
    by (timestamp, raw item id), hold out their last ``max(1, ceil(test_fraction * n))``."""
    test = _split_mask(data.users, data.items, data.timestamps, data.raw_items, min_interactions, test_fraction)
    return Split(data, ~test, test)


# --- features the models read from the train part ----------------------------------------------


def history_weights(users, timestamps, raw_items, half_life: float) -> np.ndarray:
    """Recency of a user's own interactions: the user's n-th most recent interaction (n = 0 for
    the latest, order by time then raw item id) weighs ``max(0.5 ** (n / half_life), 1e-6)``;
    ``half_life`` 0 gives every interaction weight 1."""
    if not (math.isfinite(half_life) and half_life >= 0):
        raise ValueError(f"history_half_life: must be finite and >= 0, got {half_life}")
    w = np.ones(len(users), np.float32)
    if half_life == 0 or len(users) == 0:
        return w
    order = np.lexsort((raw_items, timestamps, users))
    u = users[order]
    counts = np.bincount(u)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    from_end = counts[u] - 1 - (np.arange(len(u)) - starts[u])
    # Floored at 1e-6: the oldest interactions stay in the history (they still exclude their
    # items) and no weight underflows float32, which similarity norms would turn into inf.
    w[order] = np.maximum(np.power(0.5, from_end / half_life), 1e-6).astype(np.float32)
    return w


@dataclass
class Features:
    """Everything the hybrid kernel reads, built from one split's train part only."""

    tfidf: sp.csr_matrix
    age_days: np.ndarray
    engagement: np.ndarray
    author: np.ndarray
    train_users: np.ndarray
    train_items: np.ndarray
    train_ts: np.ndarray
    train_raw: np.ndarray

    def interactions(self, n_users: int, n_items: int, half_life: float = 0.0) -> sp.csr_matrix:
        w = history_weights(self.train_users, self.train_ts, self.train_raw, half_life)
        m = sp.csr_matrix((w, (self.train_users, self.train_items)), shape=(n_users, n_items), dtype=np.float32)
        m.sum_duplicates()
        return m


def features(split: Split, tfidf: sp.csr_matrix | None = None) -> Features:
    d = split.data
    u, i, t, raw = split.train_part()
    if tfidf is None:
        # Content is allowed to use every item's text (EVAL.md: titles, genres, all tags).
        tfidf = feedrank.TfidfVectorizer().fit_transform(d.item_text)
    now = float(t.max()) if len(t) else 0.0
    if d.item_created is not None and np.isfinite(d.item_created).any():
        created = np.array(d.item_created, dtype=np.float64)
    else:
        # No publication time: an item appears with its first interaction in train.
        created = np.full(d.n_items, np.nan)
        np.fmin.at(created, i, t.astype(np.float64))
    # Items never seen in train (only in the held-out part) count as the oldest.
    age = (now - created) / DAY
    finite = np.isfinite(age)
    oldest = float(age[finite].max()) if finite.any() else 0.0
    age = np.clip(np.where(finite, age, oldest), 0.0, None)
    engagement = np.bincount(i, minlength=d.n_items).astype(np.float32)
    author = d.item_author if d.item_author is not None else np.full(d.n_items, -1, np.int64)
    return Features(tfidf, age.astype(np.float32), engagement, author.astype(np.int64), u, i, t, raw)


# --- models -------------------------------------------------------------------------------------


def _topk_by_global_order(order: np.ndarray, train: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    """Each user's first k items of one global ranking, skipping the user's train items."""
    out = np.full((len(users), k), -1, np.int64)
    for r, u in enumerate(users):
        seen = train.indices[train.indptr[u] : train.indptr[u + 1]]
        need = k + len(seen)
        head = order[:need]
        out[r, : min(k, need)] = head[~np.isin(head, seen)][:k]
    return out


def _global_order(score: np.ndarray) -> np.ndarray:
    """Descending score, ties by lower index."""
    return np.lexsort((np.arange(len(score)), -np.asarray(score, np.float64)))


def hybrid_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The hybrid_topk keyword arguments a ScoringConfig (dict) sets."""
    kw: dict[str, Any] = {
        "weights": config["weights"],
        "neighbors": int(config["neighbors"]),
        "recency_tau_days": float(config["recency_tau_days"]),
        "collaborative": config["collaborative"],
        "weighting": config["weighting"],
    }
    if config["collaborative"] == "ridge":
        kw["ridge_l2"] = float(config["ridge_l2"])
    return kw


def hybrid_topk(split: Split, feats: Features, config: dict[str, Any], users: np.ndarray, k: int,
                batch: int = 2048) -> np.ndarray:
    """Top-k of the hybrid kernel with one ScoringConfig, on the split's train part."""
    d = split.data
    x = feats.interactions(d.n_users, d.n_items, float(config.get("history_half_life", 0.0)))
    out = np.full((len(users), k), -1, np.int64)
    model = feedrank.HybridModel(x, feats.tfidf, feats.age_days, feats.engagement, feats.author, k=k,
                                 **hybrid_kwargs(config))
    for s in range(0, len(users), batch):
        part = users[s : s + batch]
        res = model.topk(part)
        got = res["indices"].shape[1]
        out[s : s + len(part), :got] = res["indices"]
    return out


def single_component(name: str, **overrides: Any) -> dict[str, Any]:
    """A config whose hybrid score is one component alone (the design's component as a model)."""
    w = dict.fromkeys(("collaborative", "content", "recency", "engagement"), 0.0)
    w[name] = 1.0
    return feedrank.validate_config({"weights": w, **overrides})


def model_topk(model: str, split: Split, feats: Features, k: int = 50, seed: int = 0,
               tuned: dict[str, Any] | None = None) -> np.ndarray:
    """Top-k lists (int64 [len(split.eval_users), k], -1 padded) of one named model."""
    d, users = split.data, split.eval_users
    if model == "random":
        out = np.full((len(users), k), -1, np.int64)
        for r, u in enumerate(users):
            # One seeded shuffle of the catalog per user (the seed and the user index fix it).
            perm = feedrank.permutation(d.n_items, seed=int(seed) * 1_000_003 + int(u))
            seen = split.train.indices[split.train.indptr[u] : split.train.indptr[u + 1]]
            head = perm[: k + len(seen)]
            out[r, : min(k, len(head))] = head[~np.isin(head, seen)][:k]
        return out
    if model == "popular":
        return _topk_by_global_order(_global_order(feats.engagement), split.train, users, k)
    if model == "recent":
        return _topk_by_global_order(_global_order(-feats.age_days), split.train, users, k)
    if model == "user_user":
        return hybrid_topk(split, feats, single_component("collaborative", collaborative="user_user"), users, k)
    if model == "item_item":
        return hybrid_topk(split, feats, single_component("collaborative", collaborative="item_item"), users, k)
    if model == "content":
        return hybrid_topk(split, feats, single_component("content"), users, k)
    if model == "hybrid_default":
        return hybrid_topk(split, feats, feedrank.default_config(), users, k)
    if model == "hybrid_tuned":
        if tuned is None:
            raise ValueError("config: hybrid_tuned needs a tuned config (feedrank tune, or tune=True)")
        return hybrid_topk(split, feats, tuned, users, k)
    raise ValueError(f"models: unknown model {model!r}; known: {', '.join(MODELS)}")


# --- metrics ------------------------------------------------------------------------------------


def _test_rows(split: Split, users: np.ndarray | None = None) -> sp.csr_matrix:
    return split.test[split.eval_users if users is None else users]


def score_topk(topk: np.ndarray, split: Split, k: int = 10) -> dict[str, float]:
    """EVAL.md's metrics of any model's top-k lists. ``topk``: int64 [len(split.eval_users), >= k]
    item indices, best first, -1 padded, rows aligned with ``split.eval_users``."""
    topk = np.ascontiguousarray(topk, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[0] != len(split.eval_users):
        raise ValueError(
            f"topk: expected shape ({len(split.eval_users)}, >= {k}) aligned with split.eval_users, got {topk.shape}"
        )
    m = feedrank.ranking_metrics(topk, _test_rows(split), k=k, n_items=split.data.n_items)
    return {
        f"precision@{k}": float(m["precision"]),
        f"recall@{k}": float(m["recall"]),
        f"ndcg@{k}": float(m["ndcg"]),
        f"coverage@{k}": float(m["coverage"]),
        "users": int(m["users"]),
    }


def curves(topk: np.ndarray, split: Split, max_k: int = 50) -> dict[str, np.ndarray]:
    """NDCG@k and Recall@k for k = 1..max_k (the chart's data)."""
    ks = list(range(1, min(max_k, topk.shape[1]) + 1))
    return feedrank.metrics_at_k(np.ascontiguousarray(topk, np.int64), _test_rows(split), ks)


def _curve_lists(topk: np.ndarray, split: Split, max_k: int = 50) -> dict[str, list]:
    c = curves(topk, split, max_k)
    return {"k": [int(x) for x in c["k"]], "ndcg": [float(x) for x in c["ndcg"]],
            "recall": [float(x) for x in c["recall"]]}


# --- the whole evaluation -----------------------------------------------------------------------


def evaluate(data: Dataset, models: Sequence[str] = MODELS, config: dict[str, Any] | None = None,
             seed: int = 0, k: int = 10, chart_k: int = 50, tune_grid: str = "full",
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs the protocol for the named models. ``hybrid_tuned`` uses ``config`` (a ScoringConfig
    dict, e.g. from ``feedrank tune``) or, without one, tunes on the validation split first.
    Returns ``{"dataset", "users_evaluated", "rows": [...], "curves": {model: {...}}, "config"}``."""
    for m in models:
        if m not in MODELS:
            raise ValueError(f"models: unknown model {m!r}; known: {', '.join(MODELS)}")
    split = temporal_split(data)
    if len(split.eval_users) == 0:
        raise ValueError("dataset: no user has enough interactions (>= 5) to be evaluated")
    t0 = time.perf_counter()
    feats = features(split)
    feature_seconds = time.perf_counter() - t0
    tune_seconds = 0.0
    if "hybrid_tuned" in models:
        if config is None:
            from feedrank import tune as tuning

            t0 = time.perf_counter()
            config = tuning.tune(split, grid=tune_grid, log=log, tfidf=feats.tfidf)["config"]
            tune_seconds = time.perf_counter() - t0
        else:
            config = feedrank.validate_config(config)
    rows, curve_data = [], {}
    width = max(k, chart_k)
    for m in models:
        t0 = time.perf_counter()
        topk = model_topk(m, split, feats, k=width, seed=seed, tuned=config)
        seconds = time.perf_counter() - t0 + feature_seconds + (tune_seconds if m == "hybrid_tuned" else 0.0)
        row = {"model": m, **score_topk(topk, split, k=k), "seconds": round(seconds, 3)}
        row.pop("users")
        rows.append(row)
        curve_data[m] = _curve_lists(topk, split, chart_k)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="MovieLens directory (ratings.csv or u.data format)")
    parser.add_argument("--database-url", help="evaluate on the project's PostgreSQL instead")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--config", help="ScoringConfig JSON from `feedrank tune` for hybrid_tuned (else tuned here)")
    parser.add_argument("--json", dest="json_path", help="write the table as JSON to this path")
    parser.add_argument("--chart", help="write NDCG@k / Recall@k curves (k = 1..50) as a PNG to this path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model (default 0)")
    parser.add_argument("--grid", choices=("full", "small"), default="full", help="tuning grid when no --config")
    parser.add_argument("--quiet", action="store_true", help="print only the table")


def read_config(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"config: cannot read {path}: {e.strerror}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config: {path} is not JSON: {e}") from None
    return feedrank.validate_config(cfg)


def run(args: argparse.Namespace) -> int:
    import sys

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    config = read_config(args.config) if args.config else None
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    data = load_dataset(args.dataset, args.database_url)
    report = evaluate(data, models=models, config=config, seed=args.seed, tune_grid=args.grid, log=log)
    print(markdown_table(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report_json(report), indent=2) + "\n")
    if args.chart:
        write_chart(report, args.chart)
    return 0


# --- pipeline -----------------------------------------------------------------------------------


def recommendation_quality(data: Dataset, config: dict[str, Any], holdout_days: float = 1.0,
                           k: int = 10, chart_path: str | Path | None = None) -> dict[str, Any]:
    """The pipeline's quality check: each user's most recent ``holdout_days`` of interactions
    (counted back from that user's latest interaction) are held out, the rest scored with
    ``config``, and NDCG/Recall/coverage@k returned (plus the chart when ``chart_path``).
    Users whose whole history falls in the window are not evaluated."""
    if not (math.isfinite(holdout_days) and holdout_days > 0):
        raise ValueError(f"holdout_days: must be finite and > 0, got {holdout_days}")
    config = feedrank.validate_config(config)
    last = np.zeros(data.n_users, np.int64)
    np.maximum.at(last, data.users, data.timestamps)
    test = data.timestamps > last[data.users] - holdout_days * DAY
    # Only users who keep some history in train are evaluated.
    has_train = np.bincount(data.users[~test], minlength=data.n_users) > 0
    test &= has_train[data.users]
    split = Split(data, ~test, test)
    if len(split.eval_users) == 0:
        raise ValueError("data: no user has interactions both before and inside the held-out window")
    feats = features(split)
    topk = hybrid_topk(split, feats, config, split.eval_users, max(k, 50))
    m = score_topk(topk, split, k=k)
    report = {"dataset": data.name, "users_evaluated": int(len(split.eval_users)),
              "rows": [{"model": "current_config", **{c: v for c, v in m.items() if c != "users"}, "seconds": 0.0}]}
    report["curves"] = {"current_config": _curve_lists(topk, split, 50)}
    if chart_path is not None:
        write_chart(report, chart_path)
    return {**m, "users_evaluated": report["users_evaluated"], "report": report}
