"""The data sets of the offline evaluation (``shared/EVAL.md``): implicit interactions with their
times, and item content, as dense user and item indices.

- :func:`load_movielens`: a MovieLens directory, ``ratings.csv`` (ml-latest) or ``u.data`` (100K);
- :func:`load_database`: the project's PostgreSQL (positive interactions, posts' content, creation
  time and author);
- :func:`load_dataset`: one of the two, as ``feedrank evaluate`` and ``feedrank tune`` take them.

What is done with them is :mod:`feedrank.protocol`'s.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DAY", "Dataset", "load_database", "load_dataset", "load_movielens"]

DAY = 86400.0


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
    n_users: int = field(init=False)
    n_items: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_users, self.n_items = len(self.user_ids), len(self.item_ids)
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


def _from_events(name: str, users_raw, items_raw, users, items, ts, raw, **items_info) -> Dataset:
    """A data set from raw events (one per interaction, duplicates allowed) and the sorted raw ids
    their user and item indices point into."""
    users, items, ts, raw = _dedupe_first(users, items, ts, raw)
    return Dataset(
        name=name, users=users, items=items, timestamps=ts, raw_items=raw,
        user_ids=[str(x) for x in users_raw], item_ids=[str(x) for x in items_raw], **items_info,
    )


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
    return _from_events(root.name, users_raw, items_raw, users, items, ts, mid,
                        item_text=[" ".join(text.get(int(m), [])) for m in items_raw])


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
    return _from_events("database", users_raw, items_raw, users, items, ts, items.copy(), item_text=text,
                        item_created=np.where(np.isfinite(created), created, np.nan), item_author=author)


def load_dataset(dataset: str | None = None, database_url: str | None = None) -> Dataset:
    if database_url:
        return load_database(database_url)
    if not dataset:
        raise ValueError("dataset: give a MovieLens directory or --database-url")
    if not Path(dataset).is_dir():
        raise ValueError(f"dataset: {dataset} is not a directory")
    return load_movielens(dataset)
