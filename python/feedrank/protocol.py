"""The offline evaluation protocol of ``shared/EVAL.md``: the split, the features models read from
the train part, the models, and the metrics.

In short: every interaction is one implicit event (user, item, time); users with at least 5
interactions have their latest ``max(1, ceil(0.2 n))`` (ordered by time, then raw item id) held
out as test; each model ranks every catalog item not in the user's train set; ties go to the lower
item index; Precision/Recall/NDCG@10 and catalog coverage come from
:func:`feedrank.ranking_metrics` (Rust). Tuning (:mod:`feedrank.tune`) uses a validation split
cut from the train part the same way, never the test part.

Python users::

    from feedrank import datasets, protocol
    data = datasets.load_dataset("../shared/data/movielens-latest-small")
    split = protocol.temporal_split(data)
    # any model's lists: topk is int64 [n_eval_users, >= 10], rows aligned with split.eval_users
    protocol.score_topk(my_topk, split)          # {"precision@10": ..., "ndcg@10": ..., ...}

The table of every model, the chart and the command line are :mod:`feedrank.evaluate`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

import feedrank
from feedrank.datasets import DAY, Dataset

__all__ = [
    "EASE_L2",
    "Features",
    "MODELS",
    "Split",
    "curve_lists",
    "curves",
    "ease_item_weights",
    "features",
    "hybrid_ranking",
    "model_topk",
    "recommendation_quality",
    "score_topk",
    "single_component",
    "temporal_split",
]

MODELS = (
    "random",
    "popular",
    "recent",
    "user_user",
    "item_item",
    "content",
    "ease",
    "hybrid_default",
    "hybrid_tuned",
)
# EVAL.md's reference EASE: lambda 200 on ml-latest-small.
EASE_L2 = 200.0
# Two dense float64 items x items matrices at this size take 6 GiB.
EASE_MAX_ITEMS = 20_000


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
        w = feedrank.history_weights(self.train_users, self.train_ts, self.train_raw, half_life)
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


def hybrid_ranking(split: Split, feats: Features, config: dict[str, Any], users: np.ndarray, k: int,
                   batch: int = 2048) -> np.ndarray:
    """Top-k item lists of the hybrid kernel with one ScoringConfig (``top_k`` is ``k``), on the
    split's train part."""
    d = split.data
    x = feats.interactions(d.n_users, d.n_items, float(config.get("history_half_life", 0.0)))
    out = np.full((len(users), k), -1, np.int64)
    model = feedrank.HybridModel(x, feats.tfidf, feats.age_days, feats.engagement, feats.author,
                                 {**config, "top_k": k})
    for s in range(0, len(users), batch):
        part = users[s : s + batch]
        res = model.topk(part)
        got = res["indices"].shape[1]
        out[s : s + len(part), :got] = res["indices"]
    return out


def single_component(name: str, **overrides: Any) -> dict[str, Any]:
    """A config whose hybrid score is one component alone (the design's component as a model)."""
    w = dict.fromkeys(feedrank.component_names(), 0.0)
    w[name] = 1.0
    return feedrank.validate_config({"weights": w, **overrides})


def ease_item_weights(train: sp.csr_matrix, l2: float = EASE_L2) -> np.ndarray:
    """EASE (Steck 2019), dense: ``B = I - P diagMat(1 / diag P)`` with ``P = (XᵀX + l2 I)⁻¹``,
    zero diagonal; items x items float64. Cubic time and quadratic memory in the number of items:
    a reference to compare with, not a model that serves a feed (``ridge`` is its sparse form)."""
    n = train.shape[1]
    if n > EASE_MAX_ITEMS:
        raise ValueError(
            f"models: ease inverts a dense items x items matrix; {n:,} items would need "
            f"{2 * 8 * n * n / 2**30:.0f} GiB (it takes at most {EASE_MAX_ITEMS:,} items)"
        )
    g = np.asarray((train.T @ train).todense(), dtype=np.float64)
    g[np.diag_indices(n)] += l2
    p = scipy.linalg.inv(g, overwrite_a=True, check_finite=False)
    p /= -np.diag(p)  # column j divided by -P_jj
    np.fill_diagonal(p, 0.0)
    return p


def _ease_topk(split: Split, users: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    """Each user's top k of ``x_u B`` over items not in their train part, ties to the lower index."""
    b = ease_item_weights(split.train)
    out = np.full((len(users), k), -1, np.int64)
    for s in range(0, len(users), batch):
        rows = split.train[users[s : s + batch]]
        scores = np.asarray(rows @ b)
        scores[np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr)), rows.indices] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out[s : s + rows.shape[0], : top.shape[1]] = np.where(
            np.isfinite(np.take_along_axis(scores, top, axis=1)), top, -1
        )
    return out


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
        return hybrid_ranking(split, feats, single_component("collaborative", collaborative="user_user"), users, k)
    if model == "item_item":
        return hybrid_ranking(split, feats, single_component("collaborative", collaborative="item_item"), users, k)
    if model == "content":
        return hybrid_ranking(split, feats, single_component("content"), users, k)
    if model == "hybrid_default":
        return hybrid_ranking(split, feats, feedrank.default_config(), users, k)
    if model == "hybrid_tuned":
        if tuned is None:
            raise ValueError("config: hybrid_tuned needs a tuned config (feedrank tune, or tune=True)")
        return hybrid_ranking(split, feats, tuned, users, k)
    if model == "ease":
        return _ease_topk(split, users, k)
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


def curve_lists(topk: np.ndarray, split: Split, max_k: int = 50) -> dict[str, list]:
    c = curves(topk, split, max_k)
    return {"k": [int(x) for x in c["k"]], "ndcg": [float(x) for x in c["ndcg"]],
            "recall": [float(x) for x in c["recall"]]}


# --- the pipeline's check -----------------------------------------------------------------------


def recommendation_quality(data: Dataset, config: dict[str, Any], holdout_days: float = 1.0,
                           k: int = 10) -> dict[str, Any]:
    """The pipeline's quality check: each user's most recent ``holdout_days`` of interactions
    (counted back from that user's latest interaction) are held out, the rest scored with
    ``config``. Returns the metrics at ``k`` (``users`` is the users evaluated) and ``report``:
    :func:`feedrank.evaluate.evaluate`'s shape, one row ``current_config`` with its NDCG/Recall@k
    curves (what ``feedrank.evaluate.write_chart`` draws). Users whose whole history falls in the
    window are not evaluated."""
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
    topk = hybrid_ranking(split, feats, config, split.eval_users, max(k, 50))
    m = score_topk(topk, split, k=k)
    report = {"dataset": data.name, "users_evaluated": int(len(split.eval_users)),
              "rows": [{"model": "current_config", **{c: v for c, v in m.items() if c != "users"}, "seconds": 0.0}],
              "curves": {"current_config": curve_lists(topk, split, 50)}}
    return {**m, "report": report}
