"""What the pipeline tests that use the services share: the demo data set they run on (``feedrank
demo-data --synthetic``, planted topics, each user's latest interactions held out), the pipeline's
resources pointed at a database and a Redis key prefix, and the graph run with ``dg.materialize``.

A module of its own (not conftest.py), so that ``from graph_runs import ...`` names this file
whichever other suites' conftest modules pytest loaded first.
"""

import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg

from dagster_pipeline.assets import build_assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.partitions import user_shards
from dagster_pipeline.refresh import build_refresh_asset
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource, ScoringResource
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


def make_resources(url: str, prefix: str, storage: Path) -> dict:
    return {
        "postgres": PostgresResource(database_url=url),
        "redis": RedisResource(redis_url=db.redis_url(), key_prefix=prefix),
        "notifier": AlertNotifier(),
        "io_manager": BundleIOManager(base_dir=str(storage)),
        "scoring": ScoringResource(),
    }


def materialize_all(
    resources: dict,
    *,
    shards: int | None = None,
    raise_on_error: bool = True,
    config_path: str | None = None,
    batch_size: int = 1000,
    **overrides,
) -> dg.ExecuteInProcessResult:
    """The whole graph with its checks in one run, as the daily schedule runs it (with
    ``shards``: partitioned, the run covering every shard), scored with
    ``ScoringResource(config_path=, batch_size=, overrides=...)``."""
    partitions = user_shards(shards) if shards else None
    scoring = ScoringResource(config_path=config_path, batch_size=batch_size, overrides=overrides)
    return dg.materialize(
        [*build_assets(partitions), *ALL_CHECKS],
        resources={**resources, "scoring": scoring},
        tags=all_shards_tags(partitions),
        raise_on_error=raise_on_error,
    )


def run_failure(result: dg.ExecuteInProcessResult) -> str:
    """What stopped a failed run: the failing step's error, or the resource initialization's."""
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "RESOURCE_INIT_FAILURE"):
            return str(event.event_specific_data.error)
    raise AssertionError("the run did not fail")


current_recommendations = db.current_recommendations


def materialize_refresh(resources: dict, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """The refresh asset alone, as the sensor's run does it (the default scoring resource: the
    refresh takes the ScoringConfig of the model it builds on)."""
    return dg.materialize(
        [build_refresh_asset()], resources={**resources, "scoring": ScoringResource()}, raise_on_error=raise_on_error
    )


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata of ``asset``'s materialization in ``result``, as plain values."""
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[-1] == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def interact(url: str, user_ids: list[str], kind: str = "like", per_user: int = 3) -> dict[str, list[str]]:
    """Each user interacts (``kind``, now) with ``per_user`` posts they never touched, not their
    own; returns user -> those posts."""
    done: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        for user_id in user_ids:
            posts = [
                r[0]
                for r in conn.execute(
                    "SELECT p.id::text FROM posts p WHERE p.user_id <> %s AND NOT EXISTS "
                    "(SELECT 1 FROM user_interactions i WHERE i.user_id = %s AND i.post_id = p.id) "
                    "ORDER BY p.id LIMIT %s",
                    (user_id, user_id, per_user),
                ).fetchall()
            ]
            conn.execute(
                "INSERT INTO user_interactions (user_id, post_id, interaction_type) "
                "SELECT %s, unnest(%s::uuid[]), %s",
                (user_id, posts, kind),
            )
            done[user_id] = posts
    return done
