"""Fixtures of the pipeline tests: a planted-topic dataset in a fresh migrated database, the
pipeline's resources pointed at it and at a test-only Redis key prefix, and helpers to run the
graph with ``dagster``'s own test helpers.

The planted-topic data: every user and every post belongs to one of ``TOPICS`` topics; a post's
text is mostly words of its topic; users interact mostly with posts of their topic. Each user's
latest interactions are held out (never written to the database) so that tests can measure
whether the recommendations find them.
"""

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import psycopg
import pytest

from dagster_pipeline import assets as pipeline_assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.config import run_config_for_all
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource
from dagster_pipeline.schedules import all_shards_tags

TOPICS = 6
WORDS_PER_TOPIC = 25
COMMON_WORDS = [f"common{i}" for i in range(40)]
TYPES = ["view", "click", "like", "share"]
TYPE_P = [0.55, 0.2, 0.2, 0.05]


@dataclass
class PlantedData:
    user_ids: list[str]
    post_ids: list[str]
    user_topic: np.ndarray
    post_topic: np.ndarray
    post_author: np.ndarray
    cold_start_users: list[int]
    # held-out (user index -> post indices), never written to the database
    held_out: dict[int, list[int]] = field(default_factory=dict)
    # (user index, post index) pairs written as 'hide'
    hidden: list[tuple[int, int]] = field(default_factory=list)


def _copy(conn: psycopg.Connection, table: str, columns: list[str], rows: list[tuple]) -> None:
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(buf.getvalue())


def load_planted_data(
    url: str,
    *,
    users: int = 240,
    posts: int = 600,
    per_user: int = 24,
    held_out_per_user: int = 2,
    cold_start: int = 12,
    seed: int = 7,
) -> PlantedData:
    rng = np.random.default_rng(seed)
    user_ids = [str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | i, version=4)) for i in range(users)]
    post_ids = [str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 66 | i, version=4)) for i in range(posts)]
    user_topic = rng.integers(0, TOPICS, users)
    post_topic = rng.integers(0, TOPICS, posts)
    post_author = rng.integers(0, users, posts)
    post_age_days = rng.uniform(0, 25, posts)
    data = PlantedData(user_ids, post_ids, user_topic, post_topic, post_author, list(range(users - cold_start, users)))

    def text(topic: int) -> str:
        words = [f"t{topic}w{w}" for w in rng.integers(0, WORDS_PER_TOPIC, 8)]
        words += list(rng.choice(COMMON_WORDS, 4))
        rng.shuffle(words)
        return " ".join(words)

    by_topic = [np.flatnonzero(post_topic == t) for t in range(TOPICS)]
    interactions: list[tuple] = []
    for u in range(users - cold_start):
        own = set(np.flatnonzero(post_author == u).tolist())
        chosen: list[int] = []
        while len(chosen) < per_user + held_out_per_user:
            pool = by_topic[user_topic[u]] if rng.random() < 0.85 else np.arange(posts)
            p = int(rng.choice(pool))
            if p not in own and p not in chosen:
                chosen.append(p)
        # times increase along `chosen`: the last ones are the user's latest, held out
        times = np.sort(rng.uniform(0.05, 20, len(chosen)))[::-1]
        for i, p in enumerate(chosen):
            if i >= per_user:
                data.held_out.setdefault(u, []).append(p)
                continue
            kind = TYPES[int(rng.choice(len(TYPES), p=TYPE_P))]
            interactions.append((user_ids[u], post_ids[p], kind, float(times[i])))
        # one hidden post of another topic for some users
        if u % 5 == 0:
            other = by_topic[(user_topic[u] + 1) % TOPICS]
            p = int(rng.choice(other))
            if p not in own and p not in chosen:
                data.hidden.append((u, p))
                interactions.append((user_ids[u], post_ids[p], "hide", 1.0))
    with psycopg.connect(url) as conn:
        _copy(conn, "users", ["id", "username"], [(uid, f"user{i}") for i, uid in enumerate(user_ids)])
        conn.execute("UPDATE users SET created_at = now() - interval '60 days'")
        conn.execute(
            "INSERT INTO posts (id, user_id, content, created_at) "
            "SELECT p, u, c, now() - make_interval(secs => d * 86400) "
            "FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::float8[]) AS x(p, u, c, d)",
            (
                post_ids,
                [user_ids[a] for a in post_author],
                [text(int(t)) for t in post_topic],
                post_age_days.tolist(),
            ),
        )
        # times are relative to now(), in days
        conn.execute(
            "INSERT INTO user_interactions (user_id, post_id, interaction_type, created_at) "
            "SELECT u, p, t, now() - make_interval(secs => d * 86400) "
            "FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::float8[]) AS x(u, p, t, d)",
            (
                [r[0] for r in interactions],
                [r[1] for r in interactions],
                [r[2] for r in interactions],
                [r[3] for r in interactions],
            ),
        )
    return data


@pytest.fixture
def planted_db(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, PlantedData]:
    """A fresh migrated database with the planted-topic data; DATABASE_URL points at it."""
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    return fresh_database_url, load_planted_data(fresh_database_url)


@pytest.fixture
def pipeline_resources(planted_db, redis_prefix: str, tmp_path: Path) -> dict:
    url, _ = planted_db
    return {
        "postgres": PostgresResource(database_url=url),
        "redis": RedisResource(redis_url=_redis_url(), key_prefix=redis_prefix),
        "notifier": AlertNotifier(),
        "io_manager": BundleIOManager(base_dir=str(tmp_path / "storage")),
    }


def _redis_url() -> str:
    from feedrank import db

    return db.redis_url()


ALL_ASSETS = dg.load_assets_from_modules([pipeline_assets])


def materialize_all(resources: dict, *, raise_on_error: bool = True, **config) -> dg.ExecuteInProcessResult:
    """The whole graph, every user shard in one run, as the daily schedule runs it."""
    return dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        resources=resources,
        run_config=run_config_for_all(**config),
        tags=all_shards_tags(),
        raise_on_error=raise_on_error,
    )
