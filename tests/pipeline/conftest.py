"""Fixtures of the pipeline tests: a database loaded by ``feedrank demo-data --synthetic`` (planted
topics) with each user's latest interactions held out, the pipeline's resources pointed at it and
at a test-only Redis key prefix, and a helper that runs the graph with ``dg.materialize``.

The shared fixtures (``fresh_database_url``, ``redis_prefix``, ``redis_client``) come from
tests/conftest.py.
"""

import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from dagster_pipeline.assets import build_assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.config import run_config_for_all
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.partitions import user_shards
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource
from dagster_pipeline.schedules import all_shards_tags
from feedrank import cli, db

DEMO_ARGS = ["--users", "400", "--posts", "2000", "--interactions", "30000", "--seed", "11"]
HELD_OUT_PER_USER = 2
NEW_USERS = 3


@dataclass
class DemoData:
    url: str
    held_out: dict[str, set[str]]  # user id -> post ids removed from the database
    new_users: list[str]  # users created after every interaction: cold start


def load_demo_data(url: str) -> DemoData:
    """``feedrank demo-data --synthetic`` into ``url``, then each user's latest
    ``HELD_OUT_PER_USER`` posts (among users with at least 6 posts) taken out: every interaction of
    the user with them is deleted and returned as the test set. ``NEW_USERS`` users with no
    interactions are added."""
    assert cli.main(["demo-data", "--synthetic", *DEMO_ARGS, "--database-url", url]) == 0
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            WITH per_post AS (
                SELECT user_id, post_id, max(created_at) AS last_at
                FROM user_interactions WHERE interaction_type <> 'hide'
                GROUP BY user_id, post_id
            ), ranked AS (
                SELECT user_id, post_id,
                       row_number() OVER (PARTITION BY user_id ORDER BY last_at DESC, post_id) AS r,
                       count(*) OVER (PARTITION BY user_id) AS n
                FROM per_post
            )
            DELETE FROM user_interactions i USING ranked
            WHERE ranked.r <= %s AND ranked.n >= 6
              AND i.user_id = ranked.user_id AND i.post_id = ranked.post_id
            RETURNING i.user_id::text, i.post_id::text
            """,
            (HELD_OUT_PER_USER,),
        ).fetchall()
        held_out: dict[str, set[str]] = {}
        for user_id, post_id in rows:
            held_out.setdefault(user_id, set()).add(post_id)
        new_users = [str(uuid.uuid4()) for _ in range(NEW_USERS)]
        conn.execute(
            "INSERT INTO users (id, username) SELECT id, 'new_' || left(id::text, 8) "
            "FROM unnest(%s::uuid[]) AS id",
            (new_users,),
        )
    return DemoData(url, held_out, new_users)


@pytest.fixture
def demo_db(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> DemoData:
    """A fresh migrated database with the demo data; DATABASE_URL points at it."""
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    return load_demo_data(fresh_database_url)


def make_resources(url: str, prefix: str, storage: Path) -> dict:
    return {
        "postgres": PostgresResource(database_url=url),
        "redis": RedisResource(redis_url=db.redis_url(), key_prefix=prefix),
        "notifier": AlertNotifier(),
        "io_manager": BundleIOManager(base_dir=str(storage)),
    }


@pytest.fixture
def pipeline_resources(demo_db: DemoData, redis_prefix: str, tmp_path: Path) -> dict:
    return make_resources(demo_db.url, redis_prefix, tmp_path / "storage")


def materialize_all(
    resources: dict, *, shards: int | None = None, raise_on_error: bool = True, **config
) -> dg.ExecuteInProcessResult:
    """The whole graph with its checks in one run, as the daily schedule runs it (with
    ``shards``: partitioned, the run covering every shard)."""
    partitions = user_shards(shards) if shards else None
    return dg.materialize(
        [*build_assets(partitions), *ALL_CHECKS],
        resources=resources,
        run_config=run_config_for_all(**config),
        tags=all_shards_tags(partitions),
        raise_on_error=raise_on_error,
    )


current_recommendations = db.current_recommendations
