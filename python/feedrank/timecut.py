"""Items born over time: a global time cut, the nightly model trained strictly before it, and the
feed the API serves replayed at serve times after it (``shared/EVAL.md``'s "Items born over time";
issue 13's offline proof). ``feedrank evaluate --protocol time-cut`` prints its table.

1. **The cut.** MovieLens: the 90th percentile of the rating times, a movie is born at its first
   rating. The synthetic demo data (``feedrank demo-data``'s generator): the start of its last
   day. Events at or after the cut are *live*; a post created at or after it is *born after the
   cut*.
2. **The nightly model** is what the pipeline publishes from a snapshot at the cut (the posts
   created before it and every interaction before it): the TF-IDF vocabulary, each user's
   top-``top_k`` hybrid list (``HybridModel``, hidden posts excluded), each user's stored profile
   (``feedrank.user_profiles``) and item-item neighbours (``feedrank.item_neighbors`` of the same
   interaction matrix, ``sources.because_you_liked.neighbors`` per post).
3. **Serve times** every ``step`` from the cut. At serve time ``t`` a user gets what the API
   serves: ``feedrank.blend`` (``sources.blend`` shares) of
   - ``personalized``: the nightly list without the posts the user interacted with since;
   - ``fresh``: ``feedrank.fresh_topk`` over the pool at ``t`` (the posts of the last
     ``sources.fresh.window_hours``), posts born in [cut, t], the stored profile, live
     engagement = the weighted events of the trending window;
   - ``because_you_liked``: the neighbours of the user's latest likes and shares since the cut;
   - ``trending``: the posts with the most weighted events in the trending window, decayed.
   Every source leaves out the posts the user interacted with by ``t`` and the user's own; the
   blended list then passes the API's author cap (at most ``feedrank.AUTHOR_CAP`` posts of one
   author on a page). ``nightly_only`` is the personalized list alone, capped too (the feed before issue 13).
4. **Ground truth** of ``(user, t)``: the posts the user first interacts with (any type but
   ``hide``) in ``(t, t + step]``. Pairs with any are evaluated, for users with at least
   ``min_history`` posts engaged with before the cut.
5. **Metrics** per pair, averaged, standard errors clustered by user: NDCG@10, recall@10,
   fresh-item recall@10 (over the ground truth born after the cut, pairs that have some) and
   intra-list diversity (1 - mean pairwise TF-IDF cosine of the 10). On the synthetic data also
   the ``oracle``: each post ranked by the generator's own chance that the user's exposure to it
   falls in the window (topic affinities, quality and the post's age).

Nothing at ``t`` reads an event after ``t`` (a test perturbs them). In Python::

    from feedrank import timecut
    log = timecut.synthetic_log()                 # or timecut.movielens_log(directory)
    valid, test = timecut.windows(log)
    result = timecut.replay(log, test, feedrank.default_config())
    print(timecut.markdown_table(timecut.report(result)))
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

import feedrank
from feedrank import demo_data

__all__ = [
    "BLENDED",
    "EventLog",
    "Planted",
    "ReplayResult",
    "Window",
    "blend_lists",
    "diversity",
    "evaluate",
    "markdown_table",
    "movielens_log",
    "pair_metrics",
    "replay",
    "report",
    "search_shares",
    "share_grid",
    "synthetic_log",
    "windows",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
INTERACTION_TYPES = tuple(feedrank.interaction_types())
_HIDE = INTERACTION_TYPES.index("hide")
# what stands for a like: a like or a share (MovieLens: a rating >= 4 is loaded as a like)
_LIKES = np.array([INTERACTION_TYPES.index("like"), INTERACTION_TYPES.index("share")])
# the sources that share a page's slots, in sources.blend's order (fallback only fills what is left)
BLENDED = tuple(s for s in feedrank.source_names() if s != "fallback")
# the synthetic data's fixed end, so that the table is reproducible
SYNTHETIC_END = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
_NEVER = np.iinfo(np.int64).max


# --- data -----------------------------------------------------------------------------------------


@dataclass
class Planted:
    """The synthetic generator's truth, for the oracle."""

    user_topics: np.ndarray  # float [users, topics]: each user's topic mixture
    post_topics: np.ndarray  # int [posts]
    post_quality: np.ndarray  # float [posts]


@dataclass
class EventLog:
    """Every event with its type and time, and every post with its creation time, author and
    text. Users and posts are dense indices; times are epoch milliseconds, events in time order."""

    name: str
    n_users: int
    user: np.ndarray  # int64 [n]
    post: np.ndarray  # int64 [n]
    kind: np.ndarray  # int8 [n]: code into feedrank.interaction_types()
    time_ms: np.ndarray  # int64 [n], ascending
    post_created_ms: np.ndarray  # int64 [posts]
    post_author: np.ndarray  # int64 [posts]: a user index, or -1
    post_text: list[str]
    end_ms: int  # nothing happens at or after it
    planted: Planted | None = None

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("post", "kind", "time_ms"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: has {len(getattr(self, name))} entries, user has {n}")
        m = len(self.post_created_ms)
        for name in ("post_author", "post_text"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"{name}: has {len(getattr(self, name))} entries for {m} posts")
        if n and np.any(np.diff(self.time_ms) < 0):
            raise ValueError("time_ms: events must be in time order")
        if n and (self.post.min() < 0 or self.post.max() >= m or self.user.min() < 0 or self.user.max() >= self.n_users):
            raise ValueError("post: an event names a user or post outside the log")

    @property
    def n_posts(self) -> int:
        return len(self.post_created_ms)


def _from_demo_data(ds: demo_data.Dataset, end_ms: int, planted: Planted | None = None) -> EventLog:
    order = np.argsort(ds.interaction_created_at, kind="stable")
    return EventLog(
        name=ds.source,
        n_users=ds.n_users,
        user=ds.interaction_user[order].astype(np.int64),
        post=ds.interaction_post[order].astype(np.int64),
        kind=ds.interaction_type[order].astype(np.int8),
        time_ms=ds.interaction_created_at[order] // 1000,
        post_created_ms=ds.post_created_at // 1000,
        post_author=ds.post_author.astype(np.int64),
        post_text=list(ds.post_content),
        end_ms=int(end_ms),
        planted=planted,
    )


def synthetic_log(seed: int = 42, users: int = 2_000, posts: int = 10_000, interactions: int = 200_000,
                  end: dt.datetime = SYNTHETIC_END) -> EventLog:
    """``feedrank demo-data``'s synthetic data set (same arguments, same rows), with its planted
    topics and qualities."""
    ds = demo_data.generate_synthetic(seed, users, posts, interactions, end)
    assert ds.user_topics is not None and ds.post_topics is not None and ds.post_quality is not None
    planted = Planted(ds.user_topics, ds.post_topics, ds.post_quality)
    return _from_demo_data(ds, int(end.timestamp() * 1000), planted)


def movielens_log(path: str | Path) -> EventLog:
    """An ml-latest MovieLens directory as ``feedrank demo-data --movielens`` loads it: a movie
    is a post created at its first rating, a rating >= 4 is a ``like``, any other a ``view``."""
    ds = demo_data.load_movielens(path)
    end = int(ds.interaction_created_at.max()) // 1000 + 1 if ds.n_interactions else 0
    return _from_demo_data(ds, end)


# --- windows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Live from ``cut_ms``; served every ``step_ms`` until ``end_ms``."""

    name: str
    cut_ms: int
    end_ms: int
    step_ms: int

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError(f"step_ms: must be > 0, got {self.step_ms}")
        if self.end_ms <= self.cut_ms:
            raise ValueError(f"end_ms: must be after cut_ms ({self.cut_ms}), got {self.end_ms}")

    @property
    def serve_ms(self) -> np.ndarray:
        return np.arange(self.cut_ms, self.end_ms, self.step_ms, dtype=np.int64)


def windows(log: EventLog, quantile: float = 0.9, step_ms: int | None = None) -> tuple[Window, Window]:
    """(validation, test). Synthetic data (it has planted topics): the test window is the last
    day, served hourly, the validation window the day before. Other data: the test cut is the
    ``quantile`` of the event times (EVAL.md: the 90th percentile) and the validation window runs
    from the quantile 0.1 lower to it, served daily. Shares are chosen on validation only."""
    if log.planted is not None:
        step = step_ms or HOUR_MS
        cut = log.end_ms - DAY_MS
        return Window("validation", cut - DAY_MS, cut, step), Window("test", cut, log.end_ms, step)
    if not (0.1 < quantile < 1.0):
        raise ValueError(f"quantile: must be in (0.1, 1), got {quantile}")
    if len(log.time_ms) == 0:
        raise ValueError("dataset: has no events")
    step = step_ms or DAY_MS
    cut, valid_cut = (int(math.ceil(np.percentile(log.time_ms, 100 * q))) for q in (quantile, quantile - 0.1))
    return Window("validation", valid_cut, cut, step), Window("test", cut, log.end_ms, step)


# --- the nightly model ----------------------------------------------------------------------------


def _type_weights(config: dict[str, Any]) -> np.ndarray:
    return np.array([config["interaction_weights"][t] for t in INTERACTION_TYPES], np.float32)


@dataclass
class Nightly:
    """What the pipeline publishes from a snapshot at ``cut_ms``. Post ids are the log's."""

    cut_ms: int
    posts: np.ndarray  # the snapshot's posts (created before the cut)
    tfidf: sp.csr_matrix  # every post's row under the run's vocabulary (how the API reads a new post)
    lists: np.ndarray  # int64 [n_users, top_k], -1 padded (rows of users not asked for: -1)
    profiles: sp.csr_matrix  # users x terms
    author_affinity: sp.csr_matrix  # users x users
    neighbors: sp.csr_matrix  # posts x posts


def fit_nightly(log: EventLog, cut_ms: int, config: dict[str, Any], users: np.ndarray,
                batch: int = 2048) -> Nightly:
    """The pipeline's run on a snapshot at ``cut_ms`` (its assets' definitions: type-weighted
    values times the recency of the user's own history, hidden posts excluded, engagement = the
    weighted event count, age from ``created_at``); lists for ``users`` only. Every interaction
    before the cut is read (``lookback_days`` is not applied: MovieLens spans 22 years)."""
    snap = np.flatnonzero(log.post_created_ms < cut_ms)
    if len(snap) == 0:
        raise ValueError(f"cut_ms: no post was created before the cut ({cut_ms})")
    local = np.full(log.n_posts, -1, np.int64)
    local[snap] = np.arange(len(snap))
    before = slice(0, int(np.searchsorted(log.time_ms, cut_ms, side="left")))
    u, p, kind, t = log.user[before], local[log.post[before]], log.kind[before], log.time_ms[before]
    if (p < 0).any():
        raise ValueError("post_created_ms: an event precedes its post's creation")
    vectorizer = feedrank.TfidfVectorizer()
    vectorizer.fit([log.post_text[i] for i in snap])
    tfidf = sp.csr_matrix(vectorizer.transform(log.post_text), dtype=np.float32)
    tfidf_snap = tfidf[snap]
    weight = _type_weights(config)
    values = weight[kind] * feedrank.history_weights(u, t, p, float(config["history_half_life"]))
    shape = (log.n_users, len(snap))
    positive = values > 0
    x = sp.csr_matrix((values[positive], (u[positive], p[positive])), shape=shape, dtype=np.float32)
    x.sum_duplicates()
    hide = kind == _HIDE
    hidden = sp.csr_matrix((np.ones(int(hide.sum()), np.float32), (u[hide], p[hide])), shape=shape)
    hidden.sum_duplicates()
    hidden.data[:] = 1.0
    age_days = np.maximum((cut_ms - log.post_created_ms[snap]) / DAY_MS, 0.0).astype(np.float32)
    engagement = np.bincount(p, weights=weight[kind], minlength=len(snap)).astype(np.float32)
    author = log.post_author[snap]
    model = feedrank.HybridModel(x, tfidf_snap, age_days, engagement, author, config, exclude=hidden)
    lists = np.full((log.n_users, int(config["top_k"])), -1, np.int64)
    for s in range(0, len(users), batch):
        part = users[s : s + batch]
        idx = model.topk(part)["indices"]
        lists[part, : idx.shape[1]] = np.where(idx >= 0, snap[np.maximum(idx, 0)], -1)
    profiles = feedrank.user_profiles(x, tfidf_snap, author, np.arange(log.n_users), config)
    k = int(config["sources"]["because_you_liked"]["neighbors"])
    nb = feedrank.item_neighbors(x, k=k).tocoo()
    neighbors = sp.csr_matrix((nb.data, (snap[nb.row], snap[nb.col])), shape=(log.n_posts, log.n_posts))
    return Nightly(cut_ms, snap, tfidf, lists, profiles["terms"].tocsr(), profiles["authors"].tocsr(), neighbors)


# --- what is known at a serve time --------------------------------------------------------------


@dataclass
class FirstTouches:
    """Each (user, post)'s first event (any type) and first positive one (not hide), users
    ascending, then by first event: what "seen" and the ground truth are read from."""

    user: np.ndarray
    post: np.ndarray
    first_ms: np.ndarray
    first_positive_ms: np.ndarray  # _NEVER: only hidden
    indptr: np.ndarray  # rows of each user

    @classmethod
    def of(cls, log: EventLog) -> "FirstTouches":
        key = log.user * log.n_posts + log.post
        order = np.lexsort((log.time_ms, key))  # per pair, earliest first
        keys, first = np.unique(key[order], return_index=True)
        first_ms = log.time_ms[order][first]
        pos = order[log.kind[order] != _HIDE]
        pkeys, pfirst = np.unique(key[pos], return_index=True)
        first_positive = np.full(len(keys), _NEVER, np.int64)
        first_positive[np.searchsorted(keys, pkeys)] = log.time_ms[pos][pfirst]
        user, post = keys // log.n_posts, keys % log.n_posts
        by_user = np.lexsort((post, first_ms, user))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(user, minlength=log.n_users))])
        return cls(user[by_user], post[by_user], first_ms[by_user], first_positive[by_user], indptr)

    def seen(self, user: int, t_ms: int) -> np.ndarray:
        """The posts ``user`` had touched by ``t_ms`` (any event at or before it), sorted."""
        lo, hi = self.indptr[user], self.indptr[user + 1]
        n = int(np.searchsorted(self.first_ms[lo:hi], t_ms, side="right"))
        return np.sort(self.post[lo : lo + n])


class Replay:
    """The feed at any serve time of one window, for any users: each blended source's list."""

    def __init__(self, log: EventLog, window: Window, config: dict[str, Any], users: np.ndarray,
                 touches: FirstTouches | None = None, nightly: Nightly | None = None) -> None:
        self.log, self.window = log, window
        self.config = feedrank.validate_config(config)
        self.touches = touches or FirstTouches.of(log)
        self.nightly = nightly or fit_nightly(log, window.cut_ms, self.config, users)
        self.weight = _type_weights(self.config)
        by_author = np.argsort(log.post_author, kind="stable")
        self._own = (by_author, np.searchsorted(log.post_author[by_author], np.arange(log.n_users + 1)))
        self._live_from = int(np.searchsorted(log.time_ms, window.cut_ms, side="left"))

    def own(self, user: int) -> np.ndarray:
        order, start = self._own
        return order[start[user] : start[user + 1]]

    def engagement(self, t_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Per post at ``t_ms``: the weighted events counted in the trending window's buckets
        (the fresh source's live engagement) and the same decayed by bucket age (the trending
        score). The buckets read are the ``window_hours x 60 / bucket_minutes`` latest,
        the current one up to ``t_ms``; a bucket ``a`` buckets old weighs ``0.5^(a x
        bucket_minutes / 60 / half_life_hours)``."""
        tr = self.config["sources"]["trending"]
        width = int(tr["bucket_minutes"]) * 60_000
        current = t_ms // width
        oldest = current - max(1, int(tr["window_hours"]) * HOUR_MS // width) + 1
        lo = int(np.searchsorted(self.log.time_ms, oldest * width, side="left"))
        hi = int(np.searchsorted(self.log.time_ms, t_ms, side="right"))
        sl = slice(lo, hi)
        post, w = self.log.post[sl], self.weight[self.log.kind[sl]].astype(np.float64)
        age = current - self.log.time_ms[sl] // width
        decay = 0.5 ** (age * width / (float(tr["half_life_hours"]) * HOUR_MS))
        n = self.log.n_posts
        return np.bincount(post, w, n), np.bincount(post, w * decay, n)

    def sources(self, t_ms: int, users: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Per user, each blended source's list at ``t_ms`` (post ids, best first)."""
        if not (self.window.cut_ms <= t_ms):
            raise ValueError(f"t_ms: serve times start at the cut ({self.window.cut_ms}), got {t_ms}")
        ids = np.asarray(users, np.int64)
        cfg = self.config["sources"]
        blocked = [np.union1d(self.touches.seen(int(u), t_ms), self.own(int(u))) for u in ids]
        engagement, trending_score = self.engagement(t_ms)
        fresh = self._fresh(t_ms, ids, blocked, engagement)
        trending_order = np.lexsort((np.arange(self.log.n_posts), -trending_score))
        trending_order = trending_order[trending_score[trending_order] > 0]
        live = np.arange(self._live_from, int(np.searchsorted(self.log.time_ms, t_ms, side="right")))
        live = live[np.isin(self.log.kind[live], _LIKES)]
        live = live[np.argsort(self.log.user[live], kind="stable")]  # by user, each in time order
        liker = self.log.user[live]
        out = []
        for r, u in enumerate(ids):
            personal = self.nightly.lists[u]
            personal = personal[(personal >= 0) & ~np.isin(personal, blocked[r])]
            mine = live[np.searchsorted(liker, u, "left") : np.searchsorted(liker, u, "right")]
            likes = self.log.post[mine][::-1]  # most recent first
            _, first = np.unique(likes, return_index=True)
            likes = likes[np.sort(first)][: int(cfg["because_you_liked"]["likes"])]
            out.append({
                "personalized": personal,
                "fresh": fresh[r],
                "because_you_liked": self._because_you_liked(likes, blocked[r]),
                "trending": _first_unblocked(trending_order, blocked[r], int(cfg["trending"]["candidates"])),
            })
        return out

    def _fresh(self, t_ms: int, users: np.ndarray, blocked: list[np.ndarray], engagement: np.ndarray) -> list[np.ndarray]:
        created = self.log.post_created_ms
        window = int(self.config["sources"]["fresh"]["window_hours"]) * HOUR_MS
        pool = np.flatnonzero((created > t_ms - window) & (created <= t_ms))
        if len(pool) == 0 or len(users) == 0:
            return [np.zeros(0, np.int64) for _ in users]
        at = np.full(self.log.n_posts, -1, np.int64)
        at[pool] = np.arange(len(pool))
        rows = np.repeat(np.arange(len(users)), [len(b) for b in blocked])
        cols = at[np.concatenate(blocked)] if rows.size else np.zeros(0, np.int64)
        keep = cols >= 0
        exclude = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
                                shape=(len(users), len(pool)))
        exclude.sum_duplicates()
        n = self.nightly
        got = feedrank.fresh_topk(
            n.tfidf[pool], created[pool], self.log.post_author[pool], engagement[pool].astype(np.float32),
            t_ms, n.profiles[users], n.author_affinity[users],
            # born in [cut, t]: the API's (list built, now]
            np.full(len(users), self.window.cut_ms - 1, np.int64), t_ms, self.config, exclude=exclude,
        )["indices"]
        return [pool[row[row >= 0]] for row in got]

    def _because_you_liked(self, likes: np.ndarray, blocked: np.ndarray) -> np.ndarray:
        cfg = self.config["sources"]["because_you_liked"]
        per_like, cap = int(cfg["per_like"]), int(cfg["candidates"])
        nb = self.nightly.neighbors
        out: list[int] = []
        for p in likes:
            cols, scores = nb.indices[nb.indptr[p] : nb.indptr[p + 1]], nb.data[nb.indptr[p] : nb.indptr[p + 1]]
            ranked = cols[np.lexsort((cols, -scores))]
            fresh = ranked[~np.isin(ranked, blocked) & ~np.isin(ranked, out)]
            out.extend(fresh[:per_like].tolist())
        return np.array(out[:cap], np.int64)


def _first_unblocked(order: np.ndarray, blocked: np.ndarray, n: int) -> np.ndarray:
    head = order[: n + len(blocked)]
    return head[~np.isin(head, blocked)][:n]


def blend_lists(sources: Sequence[dict[str, np.ndarray]], shares: Sequence[float], post_author: np.ndarray,
                k: int = 10, author_cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` posts the API serves each pair: ``feedrank.blend`` of its source lists (in
    ``BLENDED`` order) by ``shares``, then the author cap (``author_cap``, default the API's:
    ``feedrank.AUTHOR_CAP``). Returns the posts and the source (an index into ``BLENDED``) of
    each slot, int64 [pairs, k], -1 padded."""
    cap = feedrank.AUTHOR_CAP if author_cap is None else author_cap
    weights = np.asarray(shares, np.float32)
    ids_out = np.full((len(sources), k), -1, np.int64)
    src_out = np.full((len(sources), k), -1, np.int64)
    for r, lists in enumerate(sources):
        ordered = [lists[name] for name in BLENDED]
        total = sum(len(x) for x in ordered)
        width = min(total, 4 * k)  # usually enough; the whole blend when the cap passes over more
        while True:
            src, idx = feedrank.blend(ordered, weights, width)
            ids = [ordered[s][i] for s, i in zip(src, idx)]
            # the API's author cap on a page of `k` posts (the same code: feedrank.diversify)
            kept = feedrank.diversify(post_author[ids], window=k, cap=cap, max_out=k) if ids else []
            if len(kept) == k or width >= total:
                break
            width = total
        ids_out[r, : len(kept)] = [ids[i] for i in kept]
        src_out[r, : len(kept)] = src[kept]
    return ids_out, src_out


# --- the oracle (synthetic data only) -------------------------------------------------------------


def _oracle_topk(log: EventLog, t_ms: int, step_ms: int, users: np.ndarray, blocked: list[np.ndarray],
                 k: int, block: int = 256) -> np.ndarray:
    """Per user the ``k`` posts born by ``t_ms`` with the generator's highest chance of the user's
    exposure in ``(t, t + step]``: P(topic | user) x the post's share of its topic's tickets x
    P(the exposure's delay after the post's creation falls in the window)."""
    pl = log.planted
    if pl is None:
        raise ValueError("log: the oracle needs the synthetic data's planted topics and qualities")
    theta = pl.user_topics / pl.user_topics.sum(axis=1, keepdims=True)
    n_topics = theta.shape[1]
    p_topic = (1 - demo_data.EXPLORE_SHARE) * theta + demo_data.EXPLORE_SHARE / n_topics
    tickets = demo_data.post_tickets(pl.post_quality).astype(np.float64)
    share = tickets / np.bincount(pl.post_topics, tickets, n_topics)[pl.post_topics]
    born = np.flatnonzero(log.post_created_ms <= t_ms)
    created = log.post_created_ms[born].astype(np.float64)
    # the delay's CDF: exponential, but one that would pass the horizon is uniform up to it
    horizon = log.end_ms - demo_data.QUIET_END_US // 1000
    span = np.maximum(horizon - created, 1.0)
    mean = demo_data.EVENT_DELAY_MEAN_DAYS * DAY_MS

    def cdf(a: np.ndarray) -> np.ndarray:
        a = np.clip(a, 0.0, span)
        return 1 - np.exp(-a / mean) + np.exp(-span / mean) * a / span

    weight = share[born] * (cdf(t_ms + step_ms - created) - cdf(t_ms - created))
    at = np.full(log.n_posts, -1, np.int64)
    at[born] = np.arange(len(born))
    width = min(k, len(born))
    out = np.full((len(users), k), -1, np.int64)
    if width == 0:
        return out
    for start in range(0, len(users), block):  # users x born posts, a block at a time
        rows = np.arange(start, min(start + block, len(users)))
        score = p_topic[np.ix_(users[rows], pl.post_topics[born])] * weight[None, :]
        for j, r in enumerate(rows):
            cols = at[blocked[r]]
            score[j, cols[cols >= 0]] = -1.0
        head = np.argpartition(-score, width - 1, axis=1)[:, :width]
        for j, r in enumerate(rows):
            top = head[j][np.lexsort((head[j], -score[j, head[j]]))]
            top = top[score[j, top] >= 0]
            out[r, : len(top)] = born[top]
    return out


# --- the replay of a window -----------------------------------------------------------------------


@dataclass
class ReplayResult:
    """Every evaluated (user, serve time) of one window: the sources' lists, the oracle's, the
    ground truth, and what the metrics need."""

    log_name: str
    window: Window
    config: dict[str, Any]
    users_qualified: int
    user: np.ndarray  # int64 [pairs]
    t_ms: np.ndarray  # int64 [pairs]
    truth: sp.csr_matrix  # pairs x posts
    fresh_truth: sp.csr_matrix  # the part born after the cut
    sources: list[dict[str, np.ndarray]]
    oracle: np.ndarray | None  # int64 [pairs, k]
    tfidf: sp.csr_matrix  # posts x terms (the run's vocabulary), for diversity
    post_author: np.ndarray
    k: int = 10
    author_cap: int = feedrank.AUTHOR_CAP

    @property
    def n_posts(self) -> int:
        return len(self.post_author)

    def served(self, shares: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Each pair's first k posts and their sources under ``shares`` (:func:`blend_lists`)."""
        return blend_lists(self.sources, shares, self.post_author, self.k, self.author_cap)

    def nightly_only(self) -> np.ndarray:
        """The personalized list alone, author cap applied: the feed before issue 13."""
        return self.served([1.0] + [0.0] * (len(BLENDED) - 1))[0]


def replay(log: EventLog, window: Window, config: dict[str, Any], *, min_history: int = 5, k: int = 10,
           author_cap: int = feedrank.AUTHOR_CAP, oracle: bool = True,
           log_fn: Callable[[str], None] | None = None) -> ReplayResult:
    """Replays ``window``: the nightly model at its cut, then each serve time's sources for the
    users with ground truth in the next step (users with >= ``min_history`` posts engaged with
    before the cut). ``author_cap``: the API's cap applied to every served list."""
    if min_history < 1:
        raise ValueError(f"min_history: must be >= 1, got {min_history}")
    if author_cap < 1:
        raise ValueError(f"author_cap: must be >= 1, got {author_cap}")
    config = feedrank.validate_config(config)
    say = log_fn or (lambda s: None)
    touches = FirstTouches.of(log)
    cut, step = window.cut_ms, window.step_ms
    history = np.bincount(touches.user[touches.first_positive_ms < cut], minlength=log.n_users)
    qualified = history >= min_history
    # a pair's serve time: the last one before its first positive event, and nothing seen by then
    fp = touches.first_positive_ms
    live = (fp > cut) & (fp <= window.end_ms) & (fp != _NEVER) & qualified[touches.user]
    slot = (fp[live] - cut - 1) // step
    t_of = cut + slot * step
    ok = touches.first_ms[live] > t_of
    g_user, g_post, g_t = touches.user[live][ok], touches.post[live][ok], t_of[ok]
    pairs, pair_of = np.unique(np.stack([g_t, g_user]), axis=1, return_inverse=True)
    pair_of = pair_of.ravel()
    p_t, p_user = pairs[0], pairs[1]
    users = np.unique(p_user)
    say(f"{window.name}: {int(qualified.sum())} users qualify, {len(p_t)} (user, serve time) pairs; "
        "fitting the nightly model")
    rp = Replay(log, window, config, users, touches)
    truth = sp.csr_matrix((np.ones(len(g_post), np.float32), (pair_of, g_post)), shape=(len(p_t), log.n_posts))
    truth.sum_duplicates()
    truth.data[:] = 1.0
    born_after = (log.post_created_ms >= cut).astype(np.float32)
    fresh_truth = sp.csr_matrix(truth.multiply(born_after[None, :]))
    fresh_truth.eliminate_zeros()
    sources: list[dict[str, np.ndarray]] = []
    oracle_lists = []
    with_oracle = oracle and log.planted is not None
    for t in np.unique(p_t):
        at = np.flatnonzero(p_t == t)
        us = p_user[at]
        sources.extend(rp.sources(int(t), us))
        if with_oracle:
            blocked = [np.union1d(touches.seen(int(u), int(t)), rp.own(int(u))) for u in us]
            oracle_lists.append(_oracle_topk(log, int(t), step, us, blocked, k))
    return ReplayResult(
        log_name=log.name, window=window, config=config, users_qualified=int(qualified.sum()),
        user=p_user, t_ms=p_t, truth=truth, fresh_truth=fresh_truth, sources=sources,
        oracle=np.concatenate(oracle_lists) if with_oracle and oracle_lists else None,
        tfidf=rp.nightly.tfidf, post_author=log.post_author, k=k, author_cap=author_cap,
    )


# --- metrics --------------------------------------------------------------------------------------


def diversity(lists: np.ndarray, tfidf: sp.csr_matrix) -> np.ndarray:
    """Per list: 1 - the mean pairwise cosine of its posts' TF-IDF rows (NaN under 2 posts). With
    unit rows ``v_i`` and ``s`` their sum, the sum of the pairwise cosines is ``|s|^2 - sum |v_i|^2``."""
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    unit = sp.csr_matrix(sp.diags(np.where(norms > 0, 1 / np.maximum(norms, 1e-30), 0.0)) @ tfidf)
    valid = lists >= 0
    rows, cols = np.nonzero(valid)
    member = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(lists), len(rows)))
    v = unit[lists[rows, cols]]
    total = member @ v
    own = member @ np.asarray(v.multiply(v).sum(axis=1)).ravel()
    pairs_sum = np.asarray(total.multiply(total).sum(axis=1)).ravel() - own
    n = valid.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 2, 1.0 - pairs_sum / (n * (n - 1)), np.nan)


def _per_row(lists: np.ndarray, truth: sp.csr_matrix, k: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """NDCG@k and recall@k of each row (NaN: no truth) through feedrank.ranking_metrics, one row
    at a time: the binding returns means only, and the standard errors need each row's value."""
    ndcg, recall = np.full(len(lists), np.nan), np.full(len(lists), np.nan)
    lists = np.ascontiguousarray(lists, np.int64)
    ptr, indices, data = truth.indptr, truth.indices, truth.data
    for r in np.flatnonzero(np.diff(ptr) > 0):
        a, b = ptr[r], ptr[r + 1]
        row = (np.array([0, b - a]), indices[a:b], data[a:b], (1, truth.shape[1]))
        m = feedrank.ranking_metrics(lists[r : r + 1], row, k=k, n_items=n_items)
        ndcg[r], recall[r] = m["ndcg"], m["recall"]
    return ndcg, recall


def pair_metrics(lists: np.ndarray, result: ReplayResult) -> dict[str, np.ndarray]:
    """Per pair: ndcg, recall, fresh_recall (NaN: no ground truth born after the cut), diversity."""
    k = result.k
    ndcg, recall = _per_row(lists, result.truth, k, result.n_posts)
    _, fresh_recall = _per_row(lists, result.fresh_truth, k, result.n_posts)
    return {"ndcg": ndcg, "recall": recall, "fresh_recall": fresh_recall,
            "diversity": diversity(lists[:, :k], result.tfidf)}


def _mean_se(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean over the finite values and its standard error clustered by group (the pairs of one
    user are not independent): sqrt(G / (G - 1) x sum over groups of (sum of residuals)^2) / n."""
    ok = np.isfinite(values)
    x, g = values[ok], groups[ok]
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    mean = float(x.mean())
    _, inv = np.unique(g, return_inverse=True)
    sums = np.bincount(inv.ravel(), x - mean)
    m = len(sums)
    se = math.sqrt(m / (m - 1) * float((sums**2).sum())) / n if m > 1 else float("nan")
    return {"mean": mean, "se": se, "n": n}


def _shares(config: dict[str, Any]) -> list[float]:
    return [float(config["sources"]["blend"][s]) for s in BLENDED]


def report(result: ReplayResult, shares: Sequence[float] | None = None,
           more: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The window's table: nightly_only, the blend (``shares``, default the config's), any
    ``more`` named share vectors and the oracle; each metric's mean, standard error and pairs;
    NDCG@k of each blend relative to nightly_only (paired); each source's share of the slots."""
    blend_shares = list(shares) if shares is not None else _shares(result.config)
    feeds: dict[str, tuple[np.ndarray, np.ndarray | None, list[float] | None]] = {
        "nightly_only": (result.nightly_only(), None, None),
        "blend": (*result.served(blend_shares), blend_shares)}
    for name, extra in (more or {}).items():
        feeds[name] = (*result.served(extra), list(extra))
    if result.oracle is not None:
        feeds["oracle"] = (result.oracle, None, None)
    per = {name: pair_metrics(lists, result) for name, (lists, _, _) in feeds.items()}
    base = per["nightly_only"]["ndcg"]
    rows = []
    for name, (lists, src, s) in feeds.items():
        row: dict[str, Any] = {"feed": name}
        if s is not None and src is not None:
            row["shares"] = dict(zip(BLENDED, s))
            counts = np.bincount(src[src >= 0], minlength=len(BLENDED))
            row["slots"] = {n: round(float(c / max(counts.sum(), 1)), 4) for n, c in zip(BLENDED, counts)}
        for metric, values in per[name].items():
            row[metric] = _mean_se(values, result.user)
        if name != "nightly_only":
            row["ndcg_change"] = _relative_change(per[name]["ndcg"], base, result.user)
        rows.append(row)
    w = result.window
    return {
        "dataset": result.log_name,
        "window": {"name": w.name, "cut": _iso(w.cut_ms), "end": _iso(w.end_ms), "step_hours": w.step_ms / HOUR_MS},
        "users_qualified": result.users_qualified,
        "users_evaluated": int(len(np.unique(result.user))),
        "pairs": int(len(result.user)),
        "pairs_with_fresh_truth": int((np.diff(result.fresh_truth.indptr) > 0).sum()),
        "k": result.k,
        "author_cap": result.author_cap,
        "rows": rows,
    }


def _relative_change(values: np.ndarray, base: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """mean(values - base) / mean(base), with the paired difference's clustered error."""
    d = _mean_se(values - base, groups)
    b = float(np.nanmean(base))
    return {"relative": d["mean"] / b if b else float("nan"), "se": d["se"] / b if b else float("nan")}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def markdown_table(rep: dict[str, Any]) -> str:
    w = rep["window"]
    step = f"{w['step_hours']:g} h" if w["step_hours"] < 24 else f"{w['step_hours'] / 24:g} day(s)"
    lines = [
        f"Dataset {rep['dataset']}, {w['name']} window: cut {w['cut']}, served every {step} until {w['end']}; "
        f"{rep['users_qualified']} users qualify, {rep['users_evaluated']} evaluated over {rep['pairs']} "
        f"(user, serve time) pairs, {rep['pairs_with_fresh_truth']} with ground truth born after the cut",
        "",
        f"| feed | NDCG@{rep['k']} | R@{rep['k']} | fresh R@{rep['k']} | diversity | NDCG vs nightly_only |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        name = r["feed"]
        if "shares" in r:
            name += " " + "/".join(f"{v:g}" for v in r["shares"].values())
        cells = [f"{r[m]['mean']:.4f} ± {r[m]['se']:.4f}" for m in ("ndcg", "recall", "fresh_recall", "diversity")]
        change = r.get("ndcg_change")
        cells.append(f"{100 * change['relative']:+.1f}% ± {100 * change['se']:.1f}%" if change else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    slots = [r for r in rep["rows"] if "slots" in r]
    if slots:
        lines.append("")
        lines.append("Slots of the top " + str(rep["k"]) + " by source (" + " / ".join(BLENDED) + "): " + "; ".join(
            f"{r['feed']} " + " / ".join(f"{v:.2f}" for v in r["slots"].values()) for r in slots))
    return "\n".join(lines)


# --- choosing the shares on the validation window -------------------------------------------------


def share_grid(step: float = 0.1) -> list[tuple[float, ...]]:
    """Every share vector of multiples of ``step`` that sums to 1 and keeps some personalized."""
    n = int(round(1 / step))
    grid = []
    for parts in itertools.product(range(n + 1), repeat=len(BLENDED)):
        if sum(parts) == n and parts[0] > 0:
            grid.append(tuple(round(p * step, 10) for p in parts))
    return grid


def search_shares(valid: ReplayResult, max_ndcg_drop: float = 0.02, grid: Sequence[Sequence[float]] | None = None
                  ) -> dict[str, Any]:
    """The shares with the highest fresh-item recall@k on the validation window among those whose
    NDCG@k is at most ``max_ndcg_drop`` below nightly_only's (ties: the higher NDCG, then the
    earlier in the grid). Never reads a test window."""
    k, n = valid.k, valid.n_posts
    base = feedrank.ranking_metrics(valid.nightly_only(), valid.truth, k=k, n_items=n)["ndcg"]
    trials: list[dict[str, Any]] = []
    for shares in grid or share_grid():
        lists, _ = valid.served(shares)
        ndcg = feedrank.ranking_metrics(lists, valid.truth, k=k, n_items=n)["ndcg"]
        fresh = feedrank.ranking_metrics(lists, valid.fresh_truth, k=k, n_items=n)["recall"]
        trials.append({"shares": list(shares), "ndcg": float(ndcg), "fresh_recall": float(fresh)})
    allowed = [t for t in trials if t["ndcg"] >= (1 - max_ndcg_drop) * base]
    best = max(allowed, key=lambda t: (t["fresh_recall"], t["ndcg"]), default=None) if allowed else None
    return {"nightly_ndcg": float(base), "chosen": best, "trials": trials}


# --- the whole protocol ---------------------------------------------------------------------------


def evaluate(log: EventLog, config: dict[str, Any] | None = None, *, search: bool = False, min_history: int = 5,
             k: int = 10, max_ndcg_drop: float = 0.02, log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The test window's report (nightly_only, the config's blend, the oracle where there is
    one); with ``search``, shares are first chosen on the validation window
    (:func:`search_shares`) and the test report gains their blend as ``blend_chosen``."""
    config = feedrank.validate_config(config if config is not None else feedrank.default_config())
    say = log_fn or (lambda s: None)
    valid_window, test_window = windows(log)
    out: dict[str, Any] = {"protocol": "time-cut", "dataset": log.name}
    more: dict[str, Sequence[float]] = {}
    if search:
        valid = replay(log, valid_window, config, min_history=min_history, k=k, oracle=False, log_fn=say)
        found = search_shares(valid, max_ndcg_drop)
        say(f"validation: {len(found['trials'])} share vectors tried, chosen {found['chosen']}")
        if found["chosen"] is not None:
            more["blend_chosen"] = found["chosen"]["shares"]
        out["validation"] = {
            "report": report(valid, more=more),
            "nightly_ndcg": found["nightly_ndcg"],
            "max_ndcg_drop": max_ndcg_drop,
            "chosen": found["chosen"],
            "trials": found["trials"],
        }
    test = replay(log, test_window, config, min_history=min_history, k=k, log_fn=say)
    out["test"] = report(test, more=more)
    return out
