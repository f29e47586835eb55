"""``feedrank demo-data``: fills the database with a synthetic Threads-like data set (the default) or
a MovieLens directory.

Synthetic data has planted structure, so that a recommender that learns it measurably beats random:

- ``N_TOPICS`` topics, each with its own vocabulary; every post is written from one topic's words.
- Users have a topic mixture (Dirichlet, concentrated on a few topics) and an activity level drawn
  from a power law (a few heavy users, a long tail of light ones; some never interact).
- Authors (also power-law) write posts on topics drawn from their own mixture, over the 30 days
  before ``end``; posts have a latent quality (log-normal) that drives popularity.
- Interactions come from exposures: a user sees a post mostly from their own topics (80%) and
  sometimes from any topic. Each exposure is a ``view``; then ``click``, ``like`` and ``share``
  follow with probabilities that grow with the user's affinity to the post's topic, and ``hide``
  grows with its absence. Events follow the post's creation and each other in time.

Everything is drawn from one seed with numpy (vectorized), including the UUIDs, so the same seed,
sizes and ``end`` give the same rows. ``generate_synthetic`` returns the arrays (with the planted
topics) without touching a database; ``write_dataset`` loads them.

Loading uses ``COPY``: users and posts through psycopg's row writer, interactions as one binary
``COPY`` stream built by numpy. The whole load is one transaction (all or nothing):

- the tables are truncated in it, so every ``COPY`` uses ``FREEZE`` (rows written frozen and
  all-visible: no vacuum has to revisit 10 million rows afterwards);
- the interaction table's primary key, unique event-id key and indexes are dropped before its
  ``COPY`` and rebuilt after it: building a btree once is far cheaper than 10 million inserts,
  and time-ordered UUIDv7 ids make the primary key's input nearly sorted;
- foreign keys: a superuser skips the per-row triggers (``session_replication_role = replica``;
  every row references a user or post of the same load, checked in Python first); another role
  drops the foreign keys and adds them back, one validation query each.

``--reset`` truncates feedrank's tables first (``TRUNCATE ... CASCADE``: anything referencing
users or posts goes too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

import feedrank

__all__ = [
    "INTERACTION_TYPES",
    "EVENT_DELAY_MEAN_DAYS",
    "EXPLORE_SHARE",
    "N_TOPICS",
    "QUIET_END_US",
    "TOPICS",
    "TOPIC_NAMES",
    "Dataset",
    "LoadReport",
    "add_arguments",
    "binary_copy_tuples",
    "generate_synthetic",
    "load_movielens",
    "post_tickets",
    "run",
    "uuid_strings",
    "write_dataset",
]

# The core's interaction types; an interaction's type is stored as its position here.
INTERACTION_TYPES = tuple(feedrank.interaction_types())
# What an exposure can lead to, in the order the generator draws it (a view, then a click, like or
# share, or a hide), as codes into INTERACTION_TYPES.
VIEW, CLICK, LIKE, SHARE, HIDE = (INTERACTION_TYPES.index(k) for k in ("view", "click", "like", "share", "hide"))
_EVENT_CODES = np.array([VIEW, CLICK, LIKE, SHARE, HIDE], np.int8)

# Topic vocabularies (topics.json, beside this file): distinct words per topic so that content
# similarity carries the signal.
TOPICS: dict[str, tuple[str, ...]] = {
    topic: tuple(words)
    for topic, words in json.loads(resources.files("feedrank").joinpath("topics.json").read_text()).items()
}
TOPIC_NAMES = tuple(TOPICS)
N_TOPICS = len(TOPICS)

_FILLER = ("today", "honestly", "finally", "new", "best", "really", "so", "this", "week", "weekend",
           "love", "trying", "thoughts", "again", "little", "first", "time", "favorite", "great",
           "still", "just", "morning", "tonight", "friends", "more", "good", "about", "small",
           "big", "fun", "quick", "update", "notes", "learned", "working", "on")
_OPENERS = ("Hot take:", "Just finished", "Can't stop thinking about", "Anyone else into",
            "Weekend plans:", "Today I learned", "Unpopular opinion:", "Quick thread on",
            "Finally tried", "PSA:", "Small win:", "Currently obsessed with", "Notes from",
            "Asking for a friend:", "Lowkey", "Reminder:")
_FIRST = ("maria", "james", "aiko", "liam", "sofia", "noah", "amara", "lucas", "priya", "mateo",
          "chloe", "omar", "elena", "kenji", "zara", "diego", "nina", "arjun", "ines", "felix",
          "yara", "leo", "hana", "samuel", "mila", "tariq", "isla", "jonas", "lea", "kwame",
          "freya", "hugo", "anya", "ravi", "lucia", "theo", "nadia", "emil", "sara", "malik",
          "ivy", "pablo", "alma", "ezra", "rosa", "caleb", "mei", "oskar", "ada", "tomas")
_LAST = ("garcia", "smith", "tanaka", "nguyen", "rossi", "muller", "okafor", "silva", "kim",
         "patel", "dubois", "jensen", "kowalski", "haddad", "lopez", "novak", "sato", "ahmed",
         "johansson", "moreau", "costa", "fischer", "mensah", "ivanova", "park", "brown", "walsh",
         "khan", "ortiz", "berg", "reyes", "lindqvist", "chen", "murphy", "farah", "weber",
         "yilmaz", "santos", "cohen", "adeyemi")

_DAY_US = 86_400_000_000
# How the generator draws exposures (also read by the evaluation's oracle, feedrank.timecut):
# an exposure's topic is uniform with this probability, else drawn from the user's mixture;
EXPLORE_SHARE = 0.2
# it follows its post's creation by an exponential delay of this mean;
EVENT_DELAY_MEAN_DAYS = 1.5
# and none starts in the last hour before `end`: a delay that would pass that horizon is drawn
# again, uniformly between the post's creation and the horizon.
QUIET_END_US = 3_600_000_000
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds: PostgreSQL's binary epoch


@dataclass
class Dataset:
    """A data set in arrays, ready to load. Times are Unix microseconds (UTC); ids are UUIDs as a
    ``(n, 16)`` uint8 array. ``user_topics`` / ``post_topics`` are the planted structure of a
    synthetic set (``None`` for MovieLens)."""

    source: str
    user_ids: np.ndarray
    usernames: list[str]
    display_names: list[str]
    avatar_urls: list[str]
    user_created_at: np.ndarray
    post_ids: np.ndarray
    post_author: np.ndarray  # index into the users
    post_content: list[str]
    post_media_urls: list[list[str]]
    post_created_at: np.ndarray
    interaction_ids: np.ndarray
    interaction_user: np.ndarray  # index into the users
    interaction_post: np.ndarray  # index into the posts
    interaction_type: np.ndarray  # code into INTERACTION_TYPES
    interaction_created_at: np.ndarray
    # Optional per-interaction jsonb, as codes into a small table of JSON texts (None = NULL).
    interaction_metadata: np.ndarray | None = None
    metadata_table: list[str | None] = field(default_factory=list)
    user_topics: np.ndarray | None = None
    post_topics: np.ndarray | None = None
    post_quality: np.ndarray | None = None  # the latent quality behind a post's exposures
    # Set by generate_synthetic(defer_interactions=True): fills the interaction_* fields.
    # write_dataset runs it in a thread while users and posts are loaded.
    pending_interactions: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_posts(self) -> int:
        return len(self.post_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.interaction_ids)


def _uuid4_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` version-4 UUIDs from the generator's bits, as an ``(n, 16)`` uint8 array."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw


def _uuid7_bytes(rng: np.random.Generator, times_us: np.ndarray) -> np.ndarray:
    """Time-ordered version-7 UUIDs (48-bit Unix milliseconds, then random bits) for events at
    ``times_us``. Events are stored in time order, so their primary key arrives nearly sorted,
    which makes its index cheap to build."""
    raw = rng.integers(0, 256, size=(len(times_us), 16), dtype=np.uint8)
    ms = np.ascontiguousarray((times_us // 1000).astype(">u8")).view(np.uint8).reshape(-1, 8)
    raw[:, :6] = ms[:, 2:]
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70  # version 7
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 9562 variant
    return raw


def uuid_strings(ids: np.ndarray) -> list[str]:
    """The ``(n, 16)`` uint8 ids as canonical UUID strings."""
    return [str(uuid.UUID(bytes=row.tobytes())) for row in ids]


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row of ``probs`` (rows sum to 1), vectorized."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cum[:, -1:]
    return np.minimum((cum < u).sum(axis=1), probs.shape[1] - 1)


def _usernames(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    first = rng.integers(0, len(_FIRST), n)
    last = rng.integers(0, len(_LAST), n)
    style = rng.integers(0, 4, n)
    number = rng.integers(1, 100, n)
    names, displays, seen = [], [], set()
    for i in range(n):
        f, l = _FIRST[first[i]], _LAST[last[i]]
        s = int(style[i])
        name = (f"{f}.{l}", f"{f}_{l}{number[i]}", f"{f[0]}{l}", f"{f}{l}")[s]
        if name in seen:  # unique by construction: the index makes a collision impossible
            name = f"{name}_{i}"
        seen.add(name)
        names.append(name)
        displays.append(f"{f.capitalize()} {l.capitalize()}")
    return names, displays


def _post_texts(
    rng: np.random.Generator, topics: np.ndarray, post_ids: np.ndarray
) -> tuple[list[str], list[list[str]]]:
    """Post bodies written from each post's topic vocabulary, and optional image urls."""
    m = len(topics)
    vocab: list[str] = []
    offsets = []
    for words in TOPICS.values():
        offsets.append(len(vocab))
        vocab.extend(words)
    vocab.extend(_FILLER)
    filler_offset = len(vocab) - len(_FILLER)
    offsets_arr = np.array(offsets)
    sizes = np.array([len(w) for w in TOPICS.values()])
    max_words = 16
    n_words = rng.integers(5, max_words + 1, m)
    # Topic words follow a Zipf-like profile inside the vocabulary; ~30% of words are filler.
    rank = np.minimum(rng.zipf(1.6, size=(m, max_words)) - 1, sizes[topics][:, None] - 1)
    topic_word = offsets_arr[topics][:, None] + rank
    filler_word = filler_offset + rng.integers(0, len(_FILLER), (m, max_words))
    words = np.where(rng.random((m, max_words)) < 0.3, filler_word, topic_word)
    opener = rng.integers(0, len(_OPENERS), m)
    tag = offsets_arr[topics] + rng.integers(0, 5, m)
    has_media = rng.random(m) < 0.15
    n_media = rng.integers(1, 4, m)
    contents, media = [], []
    for i in range(m):
        body = " ".join([vocab[w] for w in words[i, : n_words[i]]])
        contents.append(f"{_OPENERS[opener[i]]} {body} #{vocab[tag[i]].replace('-', '')}")
        if has_media[i]:
            key = post_ids[i, :6].tobytes().hex()
            media.append([f"https://picsum.photos/seed/{key}{j}/1080/1350" for j in range(n_media[i])])
        else:
            media.append([])
    return contents, media


def default_end_time() -> dt.datetime:
    """The start of the current UTC hour: data ends there, so a re-run in the same hour with the
    same seed gives identical rows (``--end-time`` pins it)."""
    return dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)


def _to_us(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(round(t.timestamp() * 1_000_000))


def generate_synthetic(
    seed: int = 42,
    users: int = 2_000,
    posts: int = 10_000,
    interactions: int = 200_000,
    end: dt.datetime | None = None,
    *,
    defer_interactions: bool = False,
) -> Dataset:
    """The synthetic data set (see the module docstring), entirely determined by its arguments.

    With ``defer_interactions`` the interactions are not generated yet: the data set's
    ``pending_interactions`` generates them (``write_dataset`` does it in a thread, overlapping the
    users' and posts' load). The rows are the same either way."""
    for name, value, low in (("users", users, 1), ("posts", posts, 1), ("interactions", interactions, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    end_us = _to_us(end or default_end_time())
    window_us = 30 * _DAY_US
    # Independent streams: changing --interactions does not change the users or posts.
    s_users, s_posts, s_inter, s_ids = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    # Users: topic mixtures concentrated on a few topics; power-law activity and authorship.
    user_ids = _uuid4_bytes(s_ids, users)
    theta = s_users.dirichlet(np.full(N_TOPICS, 0.25), size=users)
    # Power-law activity, capped so that no single account dominates; ~3% never interact (they
    # are the cold-start users a recommender must still serve).
    activity = np.minimum(s_users.pareto(1.2, users) + 1.0, 100.0)
    activity[s_users.random(users) < 0.03] = 0.0
    if not activity.any():
        activity[:] = 1.0
    authorship = (s_users.pareto(1.5, users) + 1.0) * np.sqrt(activity + 1.0)
    usernames, displays = _usernames(s_users, users)
    avatars = [f"https://api.dicebear.com/9.x/thumbs/svg?seed={u}" for u in usernames]
    user_created = (end_us - s_users.integers(31 * _DAY_US, 730 * _DAY_US, users)) // 1000 * 1000

    # Posts: author by authorship weight, topic from the author's mixture, latent quality.
    post_ids = _uuid4_bytes(s_ids, posts)
    author = np.searchsorted(np.cumsum(authorship), s_posts.random(posts) * authorship.sum(), side="right")
    author = np.minimum(author, users - 1)
    post_topic = _sample_rows(s_posts, theta[author])
    quality = s_posts.lognormal(0.0, 0.8, posts)
    post_created = (end_us - window_us + s_posts.integers(0, window_us, posts)) // 1000 * 1000  # ms
    contents, media = _post_texts(s_posts, post_topic, post_ids)

    empty = np.zeros(0, np.int64)
    ds = Dataset(
        source=f"synthetic(seed={seed})",
        user_ids=user_ids,
        usernames=usernames,
        display_names=displays,
        avatar_urls=avatars,
        user_created_at=user_created,
        post_ids=post_ids,
        post_author=author.astype(np.int64),
        post_content=contents,
        post_media_urls=media,
        post_created_at=post_created,
        interaction_ids=np.zeros((0, 16), np.uint8),
        interaction_user=empty,
        interaction_post=empty,
        interaction_type=np.zeros(0, np.int8),
        interaction_created_at=empty,
        user_topics=theta,
        post_topics=post_topic,
        post_quality=quality,
    )

    def make_interactions() -> None:
        i_user, i_post, i_type, i_time = _synthetic_interactions(
            s_inter, interactions, theta, activity, post_topic, quality, post_created, end_us
        )
        ds.interaction_ids = _uuid7_bytes(s_ids, i_time)
        ds.interaction_user, ds.interaction_post = i_user, i_post
        ds.interaction_type, ds.interaction_created_at = i_type, i_time
        ds.pending_interactions = None

    if defer_interactions:
        ds.pending_interactions = make_interactions
    else:
        make_interactions()
    return ds


def post_tickets(quality: np.ndarray) -> np.ndarray:
    """A post's weight among its topic's posts when an exposure picks one (1..~40)."""
    return np.maximum(1, np.rint(quality * 4)).astype(np.int64)


def _synthetic_interactions(rng, n, theta, activity, post_topic, quality, post_created, end_us):
    """Exactly ``n`` events from exposures (view, then click/like/share or hide), in time order."""
    users = len(theta)
    # Posts grouped by topic, each repeated in proportion to its quality (post_tickets): a post
    # of topic t is one uniform pick among t's tickets, O(1) per draw (a binary search per draw
    # over the cumulative weights was the slowest step of the generator).
    tickets = post_tickets(quality)
    by_topic = np.lexsort((np.arange(len(post_topic)), post_topic))
    ticket_post = np.repeat(by_topic, tickets[by_topic])
    ticket_count = np.bincount(post_topic, weights=tickets, minlength=N_TOPICS).astype(np.int64)
    ticket_start = np.concatenate(([0], np.cumsum(ticket_count)[:-1]))
    per_topic = np.bincount(post_topic, minlength=N_TOPICS)
    # Each user's topic mixture laid out on [u, u+1): a topic of user u is one searchsorted of u + U.
    theta_layout = (np.arange(users)[:, None] + np.cumsum(theta, axis=1) / theta.sum(axis=1, keepdims=True)).ravel()
    theta_max = theta.max(axis=1)
    p_user = activity / activity.sum()
    event_low = np.array([0, 2, 5, 30, 1]) * 1_000_000  # delay after the view, per _EVENT_CODES entry
    event_span = np.array([1, 58, 295, 870, 19]) * 1_000_000

    parts: list[tuple[np.ndarray, ...]] = []
    produced = 0
    while produced < n:
        e = max(1024, int((n - produced) / 1.5) + 1)
        # Exposures per user by activity; users come out sorted, which keeps the lookups below
        # cache-friendly (the events are sorted by time at the end anyway).
        user = np.repeat(np.arange(users), rng.multinomial(e, p_user))
        explore = rng.random(e) < EXPLORE_SHARE
        own = np.searchsorted(theta_layout, user + rng.random(e) * (1 - 1e-12), side="right") - user * N_TOPICS
        topic = np.where(explore, rng.integers(0, N_TOPICS, e), np.clip(own, 0, N_TOPICS - 1))
        empty = per_topic[topic] == 0  # a topic nobody wrote about: any post instead
        if empty.any():
            topic[empty] = post_topic[rng.integers(0, len(post_topic), int(empty.sum()))]
        pick = ticket_start[topic] + (rng.random(e) * ticket_count[topic]).astype(np.int64)
        post = ticket_post[np.minimum(pick, ticket_start[topic] + ticket_count[topic] - 1)]
        created = post_created[post]
        horizon = end_us - QUIET_END_US
        delay = (rng.exponential(EVENT_DELAY_MEAN_DAYS, e) * _DAY_US).astype(np.int64)
        late = created + delay >= horizon
        delay[late] = (rng.random(int(late.sum())) * np.maximum(horizon - created[late], 1)).astype(np.int64)
        t0 = created + delay
        affinity = theta[user, post_topic[post]] / theta_max[user]
        hide = rng.random(e) < 0.12 * (1 - affinity) ** 2
        click = ~hide & (rng.random(e) < 0.08 + 0.32 * affinity)
        like = ~hide & (rng.random(e) < 0.02 + 0.38 * affinity)
        share = ~hide & (rng.random(e) < 0.003 + 0.06 * affinity)
        # Events of one exposure: view, then click? like? share? or hide?, each after the view.
        flags = np.stack([np.ones(e, bool), click, like, share, hide], axis=1)
        per_exposure = flags.sum(axis=1)
        if per_exposure.sum() > n - produced:
            # Too many: keep whole exposures, taken in random order, up to exactly what is left
            # (cutting the tail instead would starve the last users); the loop fills any gap.
            perm = rng.permutation(e)
            keep = np.zeros(e, bool)
            keep[perm[np.cumsum(per_exposure[perm]) <= n - produced]] = True
            flags &= keep[:, None]
        ev_exposure, ev_type = np.nonzero(flags)
        take = len(ev_type)
        parts.append((
            user[ev_exposure],
            post[ev_exposure],
            _EVENT_CODES[ev_type],
            t0[ev_exposure] + event_low[ev_type] + (rng.random(take) * event_span[ev_type]).astype(np.int64),
        ))
        produced += take
    i_user, i_post, i_type, i_time = (np.concatenate(c) for c in zip(*parts)) if parts else (
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64))
    # Millisecond timestamps, as a client sends them. Events of posts written in the last hour
    # could fall after `end`: nothing happens after it.
    ms = np.minimum(i_time, end_us - 1) // 1000
    # Time order through one sort of (ms since the window's start) << 31 | event index: unique
    # keys (ties broken by index, as a stable argsort would) in one int64, and a plain sort is
    # about twice as fast as argsort on 10 million values.
    if len(ms) >= 2**31:
        raise ValueError(f"--interactions must be < {2**31}, got {len(ms)}")
    base = int(ms.min()) if len(ms) else 0
    keys = np.sort(((ms - base) << 31) | np.arange(len(ms), dtype=np.int64))
    by_time = keys & (2**31 - 1)
    return i_user[by_time], i_post[by_time], i_type[by_time], (ms[by_time] * 1000)


# --- MovieLens -------------------------------------------------------------------------------------

_ML_NAMESPACE = uuid.UUID("9b0c1d4e-3f7a-4c2b-8e61-5a0f7d2c9e13")
_ML_CURATORS = 64


def load_movielens(directory: str | Path, seed: int = 42) -> Dataset:
    """A MovieLens directory (``ratings.csv``, ``movies.csv``, optional ``tags.csv``) as a data set.

    Users are the raters (``ml_user_<userId>``); each movie is a post (content: title, genres and
    tags) written by one of 64 curator accounts (so no rater ever sees their own post); each rating
    is an interaction, ``like`` when rating >= 4 else ``view``, at the rating's timestamp, with
    ``{"rating": r}`` as metadata. User and post ids are UUIDv5 of the MovieLens ids (stable across
    loads); interaction ids come from ``seed``.
    """
    import polars as pl

    root = Path(directory)
    for name in ("ratings.csv", "movies.csv"):
        if not (root / name).is_file():
            raise ValueError(f"--movielens {root}: {name} not found (expected a MovieLens directory)")
    ratings = pl.read_csv(root / "ratings.csv", schema_overrides={"userId": pl.Int64, "movieId": pl.Int64,
                                                                  "rating": pl.Float64, "timestamp": pl.Int64})
    movies = pl.read_csv(root / "movies.csv", schema_overrides={"movieId": pl.Int64, "title": pl.Utf8, "genres": pl.Utf8})
    tags_path = root / "tags.csv"
    if tags_path.is_file():
        tags = pl.read_csv(tags_path, schema_overrides={"userId": pl.Int64, "movieId": pl.Int64,
                                                         "tag": pl.Utf8, "timestamp": pl.Int64})
        tag_text = (
            tags.filter(pl.col("tag").is_not_null())
            .with_columns(pl.col("tag").str.strip_chars().str.to_lowercase())
            .unique(["movieId", "tag"], maintain_order=True)
            .group_by("movieId", maintain_order=True)
            .agg(pl.col("tag").str.join(", ").alias("tags"))
        )
    else:
        tag_text = pl.DataFrame({"movieId": [], "tags": []}, schema={"movieId": pl.Int64, "tags": pl.Utf8})
    if ratings.height and not ratings["rating"].is_between(0.0, 5.0).all():
        raise ValueError(f"--movielens {root}: ratings.csv has ratings outside 0..5")

    movies = movies.sort("movieId").join(tag_text, on="movieId", how="left")
    movie_ids = movies["movieId"].to_numpy()
    # Raters, then the curator accounts that "post" the movies.
    rater_ids = np.unique(ratings["userId"].to_numpy())
    n_raters = len(rater_ids)
    n_users = n_raters + _ML_CURATORS
    usernames = [f"ml_user_{u}" for u in rater_ids] + [f"ml_curator_{k:02d}" for k in range(_ML_CURATORS)]
    displays = [f"MovieLens user {u}" for u in rater_ids] + [f"MovieLens curator {k}" for k in range(_ML_CURATORS)]
    user_uuid = np.frombuffer(b"".join(uuid.uuid5(_ML_NAMESPACE, n).bytes for n in usernames), np.uint8).reshape(-1, 16)
    post_uuid = np.frombuffer(
        b"".join(uuid.uuid5(_ML_NAMESPACE, f"movie:{m}").bytes for m in movie_ids), np.uint8
    ).reshape(-1, 16)

    r_user = np.searchsorted(rater_ids, ratings["userId"].to_numpy())
    r_post = np.searchsorted(movie_ids, ratings["movieId"].to_numpy())
    unknown = (r_post >= len(movie_ids)) | (movie_ids[np.minimum(r_post, len(movie_ids) - 1)] != ratings["movieId"].to_numpy())
    if unknown.any():
        raise ValueError(f"--movielens {root}: {int(unknown.sum())} ratings name a movieId missing from movies.csv")
    r_time = ratings["timestamp"].to_numpy() * 1_000_000
    rating = ratings["rating"].to_numpy()
    r_type = np.where(rating >= 4.0, LIKE, VIEW).astype(np.int8)
    # Metadata {"rating": r} for the half-star scale, as codes into a small table.
    half_stars = np.rint(rating * 2).astype(np.int64)
    metadata_table = [f'{{"rating": {h / 2:.1f}}}' for h in range(11)]
    order = np.argsort(r_time, kind="stable")

    t_min = int(r_time.min()) if len(r_time) else _to_us(dt.datetime(2000, 1, 1))
    first_rating = np.full(len(movie_ids), np.iinfo(np.int64).max)
    np.minimum.at(first_rating, r_post, r_time)
    post_created = np.where(first_rating == np.iinfo(np.int64).max, t_min, first_rating)
    user_first = np.full(n_users, t_min, dtype=np.int64)
    if len(r_time):
        first_by_user = np.full(n_raters, np.iinfo(np.int64).max)
        np.minimum.at(first_by_user, r_user, r_time)
        user_first[:n_raters] = first_by_user
    contents = []
    for title, genres, tag in zip(movies["title"].to_list(), movies["genres"].to_list(), movies["tags"].to_list()):
        genre_text = "" if genres in (None, "(no genres listed)") else genres.replace("|", ", ")
        parts = [title or "", genre_text] + ([f"tags: {tag}"] if tag else [])
        contents.append(" | ".join(p for p in parts if p))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D4C]))
    return Dataset(
        source=f"movielens({root})",
        user_ids=user_uuid,
        usernames=usernames,
        display_names=displays,
        avatar_urls=[f"https://api.dicebear.com/9.x/thumbs/svg?seed={u}" for u in usernames],
        user_created_at=user_first,
        post_ids=post_uuid,
        post_author=n_raters + (movie_ids % _ML_CURATORS),
        post_content=contents,
        post_media_urls=[[] for _ in contents],
        post_created_at=post_created,
        interaction_ids=_uuid7_bytes(rng, r_time[order]),
        interaction_user=r_user[order],
        interaction_post=r_post[order],
        interaction_type=r_type[order],
        interaction_created_at=r_time[order],
        interaction_metadata=half_stars[order],
        metadata_table=metadata_table,
    )


# --- writing -----------------------------------------------------------------------------------

_FEEDRANK_TABLES = ("users", "posts", "user_interactions", "user_recommendations", "recommendation_runs")


@dataclass
class LoadReport:
    users: int
    posts: int
    interactions: int
    seconds: dict[str, float]


def _be_bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    """Big-endian bytes of each value, as an ``(n, itemsize)`` uint8 array."""
    arr = np.ascontiguousarray(values.astype(dtype))
    return arr.view(np.uint8).reshape(len(arr), -1)


def _coded_table(entries: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(e) for e in entries if e is not None), default=0)
    table = np.zeros((len(entries), width), np.uint8)
    lengths = np.full(len(entries), -1, np.int32)
    for i, e in enumerate(entries):
        if e is not None:
            table[i, : len(e)] = np.frombuffer(e, np.uint8)
            lengths[i] = len(e)
    return table, lengths


def binary_copy_tuples(n: int, fields: list[tuple]) -> bytes:
    """``n`` tuples of PostgreSQL's binary COPY format (no header or trailer), built with numpy.

    Each field is ``("fixed", matrix)`` (every row's value is the ``(n, w)`` uint8 row) or
    ``("coded", codes, table, lengths)`` (row ``i`` is ``table[codes[i]]`` of length
    ``lengths[codes[i]]``, -1 for NULL), from :func:`_coded_table`. Variable widths are handled by
    laying every value out at its field's widest and dropping the unused bytes with one boolean
    mask, so no Python code runs per row.
    """
    blocks = [np.broadcast_to(np.array([len(fields)], ">i2").view(np.uint8), (n, 2))]
    masks = [np.ones((n, 2), bool)]
    variable = False
    for f in fields:
        if f[0] == "fixed":
            mat = f[1]
            blocks += [_be_bytes(np.full(n, mat.shape[1], np.int32), ">i4"), mat]
            masks += [np.ones((n, 4 + mat.shape[1]), bool)]
        else:
            _, codes, table, lengths = f
            lens = lengths[codes]
            blocks += [_be_bytes(lens, ">i4"), table[codes]]
            valid = np.arange(table.shape[1])[None, :] < lens[:, None]
            masks += [np.ones((n, 4), bool), valid]
            variable = variable or len(set(lengths.tolist())) > 1
    rows = np.concatenate(blocks, axis=1)
    if not variable:
        return rows.tobytes()
    return rows[np.concatenate(masks, axis=1)].tobytes()


_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_TRAILER = b"\xff\xff"


def _defer_constraints_and_indexes(cur, table: str, foreign_keys: bool) -> list:
    """Drops ``table``'s indexes, primary/unique keys (unless another table's foreign key needs
    them) and, with ``foreign_keys``, its outgoing foreign keys; returns the statements that
    recreate them, in a valid order. Runs inside the caller's transaction, so a failed load puts
    everything back. What exists is read from the catalog (``db.table_constraints`` /
    ``db.table_indexes``), so a migration's new index is deferred too."""
    from psycopg import sql

    from feedrank import db

    kinds = ("p", "u", "f") if foreign_keys else ("p", "u")
    cons = [c for c in db.table_constraints(cur, table, kinds) if not c.referenced_by_foreign_key]
    indexes = db.table_indexes(cur, table)
    for c in cons:  # foreign keys first (table_constraints' order), then the keys
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(c.name)))
    for index in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index.name)))
    keys = [c.add(table) for c in cons if c.kind != "f"]
    fks = [c.add(table) for c in cons if c.kind == "f"]
    return keys + [index.create(table) for index in indexes] + fks


def _check_references(ds: Dataset) -> None:
    """Every row references a user or post of the same data set (what the foreign keys say)."""
    for name, idx, size in (
        ("post author", ds.post_author, ds.n_users),
        ("interaction user", ds.interaction_user, ds.n_users),
        ("interaction post", ds.interaction_post, ds.n_posts),
    ):
        if len(idx) and (idx.min() < 0 or idx.max() >= size):
            raise ValueError(f"data set is inconsistent: a {name} index is outside 0..{size - 1}")
    lengths = {len(ds.interaction_ids), len(ds.interaction_post), len(ds.interaction_type), len(ds.interaction_created_at)}
    if len(lengths) != 1 or len(ds.post_author) != ds.n_posts:
        raise ValueError("data set is inconsistent: interaction or post columns differ in length")


def _truncate(conn, cur, reset: bool) -> bool:
    """Empties feedrank's tables in this transaction; returns whether COPY may use FREEZE.

    With ``reset`` this is the destructive ``TRUNCATE ... CASCADE``. Without it the tables are
    already empty (checked), and truncating them anyway, without CASCADE, lets the load write
    rows already frozen and marked all-visible (``COPY ... FREEZE``), so that no vacuum has to
    rewrite hint bits over the whole table after the load. Should another table reference
    them (an app's), they are left alone and COPY runs without FREEZE.
    """
    from psycopg import errors

    tables = ", ".join(_FEEDRANK_TABLES)
    if reset:
        cur.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        return True
    try:
        with conn.transaction():
            cur.execute(f"TRUNCATE {tables} RESTART IDENTITY")
    except errors.FeatureNotSupported:
        return False
    return True


def _check_empty(cur, reset: bool) -> None:
    from psycopg import errors

    try:
        busy = [t for t in _FEEDRANK_TABLES if cur.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0]]
    except errors.UndefinedTable as e:
        raise ValueError(
            f"the schema is not applied to this database ({e.diag.message_primary}): "
            "run `make migrate` (feedrank-api migrate) first"
        ) from e
    if busy and not reset:
        raise ValueError(
            f"the database is not empty (rows in {', '.join(busy)}): pass --reset to replace its "
            "data (this deletes users, posts, interactions and recommendations)"
        )


def write_dataset(conn, ds: Dataset, reset: bool = False, chunk_rows: int = 1_000_000) -> LoadReport:
    """Loads ``ds`` into the (migrated) database behind ``conn`` in one transaction.

    Refuses a database that has rows in feedrank's tables unless ``reset``, which truncates them
    (``CASCADE``) first.
    """
    from psycopg import sql

    seconds: dict[str, float] = {}
    user_str = uuid_strings(ds.user_ids)
    post_str = uuid_strings(ds.post_ids)

    def us_to_datetime(us: np.ndarray) -> list[dt.datetime]:
        return (us.astype("datetime64[us]").astype(dt.datetime)).tolist()

    with conn.transaction(), ThreadPoolExecutor(1, thread_name_prefix="demo-data") as pool:
        cur = conn.cursor()
        _check_empty(cur, reset)
        # Interactions still to generate: in a thread (numpy releases the GIL), meanwhile the
        # users and posts are loaded.
        pending = pool.submit(ds.pending_interactions) if ds.pending_interactions else None
        freeze = _truncate(conn, cur, reset)
        with_freeze = " (FREEZE)" if freeze else ""
        # Bulk-load settings, local to this transaction. Foreign keys: the rows reference users
        # and posts of this same load by construction (checked above), so a superuser skips the
        # per-row foreign-key triggers (session_replication_role = replica, the documented way
        # to bulk-load trusted data); anyone else drops the foreign keys and adds them back,
        # which validates them with one query each.
        cur.execute("SET LOCAL maintenance_work_mem = '1GB'")
        superuser = cur.execute("SELECT current_setting('is_superuser') = 'on'").fetchone()[0]
        if superuser:
            cur.execute("SET LOCAL session_replication_role = replica")

        t = time.perf_counter()
        created = us_to_datetime(ds.user_created_at)
        with cur.copy(
            f"COPY users (id, username, display_name, avatar_url, created_at) FROM STDIN{with_freeze}"
        ) as cp:
            for row in zip(user_str, ds.usernames, ds.display_names, ds.avatar_urls, created):
                cp.write_row(row)
        seconds["users"] = time.perf_counter() - t

        t = time.perf_counter()
        created = us_to_datetime(ds.post_created_at)
        authors = [user_str[a] for a in ds.post_author]
        restore = _defer_constraints_and_indexes(cur, "posts", foreign_keys=not superuser)
        with cur.copy(
            f"COPY posts (id, user_id, content, media_urls, created_at, updated_at) FROM STDIN{with_freeze}"
        ) as cp:
            for row in zip(post_str, authors, ds.post_content, ds.post_media_urls, created, created):
                cp.write_row(row)
        for stmt in restore:
            cur.execute(stmt)
        seconds["posts"] = time.perf_counter() - t

        t = time.perf_counter()
        if pending is not None:
            pending.result()
            seconds["interactions_generate_wait"] = time.perf_counter() - t
        _check_references(ds)
        t = time.perf_counter()
        restore = _defer_constraints_and_indexes(cur, "user_interactions", foreign_keys=not superuser)
        seconds["interactions_drop_indexes"] = time.perf_counter() - t
        t = time.perf_counter()
        _copy_interactions(cur, ds, chunk_rows, freeze)
        seconds["interactions_copy"] = time.perf_counter() - t
        t = time.perf_counter()
        for stmt in restore:
            cur.execute(stmt)
        seconds["interactions_rebuild_indexes"] = time.perf_counter() - t
        t = time.perf_counter()
        if superuser:
            cur.execute("SET LOCAL session_replication_role = origin")
        for table in ("users", "posts", "user_interactions"):
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        seconds["analyze"] = time.perf_counter() - t
    return LoadReport(ds.n_users, ds.n_posts, ds.n_interactions, seconds)


def _copy_interactions(cur, ds: Dataset, chunk_rows: int, freeze: bool) -> None:
    type_table, type_lengths = _coded_table([t.encode() for t in INTERACTION_TYPES])
    columns = ["id", "user_id", "post_id", "interaction_type", "created_at"]
    meta = None
    if ds.interaction_metadata is not None:
        columns.append("metadata")
        # jsonb's binary form: a version byte (1) and the JSON text.
        meta = _coded_table([None if m is None else b"\x01" + m.encode() for m in ds.metadata_table])
    stmt = f"COPY user_interactions ({', '.join(columns)}) FROM STDIN (FORMAT BINARY{', FREEZE' if freeze else ''})"
    from psycopg.copy import QueuedLibpqWriter

    # A writer thread sends each chunk while the next one is encoded.
    with cur.copy(stmt, writer=QueuedLibpqWriter(cur)) as cp:
        cp.write(_SIGNATURE)
        for start in range(0, ds.n_interactions, chunk_rows):
            sl = slice(start, min(start + chunk_rows, ds.n_interactions))
            fields = [
                ("fixed", ds.interaction_ids[sl]),
                ("fixed", ds.user_ids[ds.interaction_user[sl]]),
                ("fixed", ds.post_ids[ds.interaction_post[sl]]),
                ("coded", ds.interaction_type[sl], type_table, type_lengths),
                ("fixed", _be_bytes(ds.interaction_created_at[sl] - _PG_EPOCH_US, ">i8")),
            ]
            if meta is not None:
                fields.append(("coded", ds.interaction_metadata[sl], *meta))
            cp.write(binary_copy_tuples(sl.stop - sl.start, fields))
        cp.write(_TRAILER)


# --- command line ------------------------------------------------------------------------------


def _end_time(value: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--end-time: not an ISO 8601 time: {value!r}") from e
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--synthetic", action="store_true",
                     help="a synthetic Threads-like data set with planted topics (the default)")
    src.add_argument("--movielens", metavar="DIR", type=Path,
                     help="load a MovieLens directory (ratings.csv, movies.csv, tags.csv)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--users", type=int, default=2_000, help="synthetic users (default 2000)")
    parser.add_argument("--posts", type=int, default=10_000, help="synthetic posts (default 10000)")
    parser.add_argument("--interactions", type=int, default=200_000,
                        help="synthetic interactions (default 200000)")
    parser.add_argument("--end-time", type=_end_time, default=None, metavar="ISO",
                        help="synthetic data covers the 30 days before this time "
                             "(default: the start of the current UTC hour)")
    parser.add_argument("--reset", action="store_true",
                        help="replace existing data: TRUNCATE users, posts, interactions and "
                             "recommendations (CASCADE) before loading")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: $DATABASE_URL, else the project default)")


def run(args: argparse.Namespace) -> int:
    from feedrank import db

    t0 = time.perf_counter()
    if args.movielens is not None:
        ds = load_movielens(args.movielens, seed=args.seed)
    else:
        ds = generate_synthetic(
            args.seed, args.users, args.posts, args.interactions, args.end_time, defer_interactions=True
        )
    t_gen = time.perf_counter() - t0
    url = args.database_url or db.database_url()
    try:
        conn = db.connect(url)
    except Exception as e:  # psycopg.OperationalError: say where, and how to fix it
        raise ValueError(f"cannot connect to {url}: {e} (start the services: scripts/services.sh up)") from e
    import psycopg

    with conn:
        try:
            report = write_dataset(conn, ds, reset=args.reset)
        except psycopg.Error as e:  # e.g. not the tables' owner: nothing was written
            raise ValueError(f"loading into {db.database_name(url)} failed, nothing was written: {e}") from e
    total = time.perf_counter() - t0
    _print_summary(ds, report, db.database_name(url), t_gen, total)
    return 0


def _print_summary(ds: Dataset, report: LoadReport, dbname: str, t_gen: float, total: float) -> None:
    counts = np.bincount(ds.interaction_type, minlength=len(INTERACTION_TYPES)) if ds.n_interactions else np.zeros(len(INTERACTION_TYPES), int)
    share = {t: (c / max(ds.n_interactions, 1)) for t, c in zip(INTERACTION_TYPES, counts)}
    active = len(np.unique(ds.interaction_user)) if ds.n_interactions else 0
    print(f"demo-data: loaded {ds.source} into database {dbname}")
    print(f"  users         {ds.n_users:>12,}   ({active:,} with interactions)")
    print(f"  posts         {ds.n_posts:>12,}")
    print(f"  interactions  {ds.n_interactions:>12,}   "
          + ", ".join(f"{t} {100 * s:.1f}%" for t, s in share.items()))
    if ds.n_interactions:
        first = np.datetime64(int(ds.interaction_created_at.min()), "us")
        last = np.datetime64(int(ds.interaction_created_at.max()), "us")
        print(f"  time span     {str(first)[:19]}Z .. {str(last)[:19]}Z")
    if ds.user_topics is not None:
        print(f"  topics        {N_TOPICS} planted ({', '.join(TOPIC_NAMES[:6])}, ...)")
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    print(f"  time          {total:.1f}s total: generate/read {t_gen:.1f}s, {steps}")
