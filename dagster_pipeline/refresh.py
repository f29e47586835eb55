"""The incremental refresh (issue 13, item 2): the lists of the users active since their list was
built, and only theirs, recomputed every few minutes (the sensor ``refresh_active_users``), so
that an active user's list is minutes behind what they did, not a day.

``refreshed_recommendations`` is an asset of its own, not the nightly assets run for a user set.
In Dagster's model an asset is one stored object and a materialization replaces it: a run of
``recommendation_scores`` or ``user_recommendations`` for 1,000 users would be recorded as the
whole asset rebuilt (its checks, its freshness and the next steps would read it so), and would
overwrite the nightly run's intermediate data (the bundles under ``$DAGSTER_HOME``) that a
nightly step still running may be about to read. Partitions are for fixed, known key sets; a
user set found anew every five minutes is not one. So the refresh is its own asset, with its own
history and metadata, built by the same functions: the snapshot, the features, the scoring, the
profiles and the swap write (``swap.write_run``) of ``assets.py``, ``serving.py`` and ``swap.py``,
called in one step for its users.

What it builds on: the serving model of the newest complete nightly run (``base_model``). Its
TF-IDF vocabulary is kept (the posts are vectorized in it, not refitted), so that the refreshed
profiles go into that model beside the others and the API keeps one vocabulary per model; its
ScoringConfig is the one the refresh scores with, so a refreshed list ranks like the nightly
lists around it. A refresh writes no model of its own: a model per refresh would hold a copy of
every post's neighbours every five minutes.

Who is active: a user with an interaction after the snapshot their current list was built from
(``recommendation_runs.config.snapshot_at`` of ``current_recommendation_run``; users without a
list count from the oldest complete run's snapshot). The snapshot rather than the run's
``generated_at``: an interaction between the two is not in the list either.

Experiments: the users a running experiment's ``config`` arm applies to (at the refresh's
snapshot) are scored with the arm's configuration laid over the base model's, as in the nightly
run (``assets.score_user_sets``), and the run records the experiments it applied.

How it writes: one recommendation run with ``shard = 'refresh'`` and the base model's id, merged
into the default partition of ``user_recommendations`` (``swap.merge``; a partition per refresh
would leave hundreds by the evening). In the transaction that completes it, the refresh

- refuses (``swap.Refused``: nothing written, the materialization says why) when any other run,
  complete or still being written, was built from a newer snapshot: a nightly run under way or
  done is never undone; the nightly job's own sensor check keeps the two apart in time anyway;
- replaces its users' profiles in the base model (``serving.replace_profiles``), so a reader
  sees the old list with the old profile or the new list with the new one.

Then each user's Redis entry. The clean-up (``swap.clean_up``) removes the rows its users had in
older refresh runs, and refresh runs no user is served from any more (the nightly run removes
them all, in practice).
"""

import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import psycopg

from dagster_pipeline import assets as steps
from dagster_pipeline import serving, swap
from dagster_pipeline.partitions import REFRESH_SHARD
from dagster_pipeline.resources import PostgresResource, RedisResource, ScoringResource
from dagster_pipeline.serving import RunModel, StoredProfiles
from dagster_pipeline.timing import KINDS, Timer

REFRESH_ASSET = "refreshed_recommendations"


def run_snapshot_sql(alias: str) -> str:
    """The snapshot a run was built from, Unix seconds, as SQL over ``recommendation_runs``
    aliased ``alias``: ``config.snapshot_at``, or its start for a run that has none (hand-made)."""
    return f"COALESCE(({alias}.config->>'snapshot_at')::float8, extract(epoch FROM {alias}.started_at))"


@dataclass(frozen=True)
class BaseModel:
    """The serving model a refresh builds on: the newest complete nightly run's."""

    id: int
    config: dict[str, Any]
    tfidf: str


def base_model(conn: psycopg.Connection) -> BaseModel | None:
    row = conn.execute(
        "SELECT m.id, m.config, m.tfidf FROM recommendation_runs r "
        "JOIN recommendation_models m ON m.id = r.model_id "
        "WHERE r.status = 'complete' AND r.shard <> %s ORDER BY r.id DESC LIMIT 1",
        (REFRESH_SHARD,),
    ).fetchone()
    return None if row is None else BaseModel(int(row[0]), dict(row[1]), row[2])


def active_users(conn: psycopg.Connection) -> pl.DataFrame:
    """The users with an interaction after the snapshot of their current list (see the module
    docstring), oldest first: ``user_id``, ``first_unseen`` (Unix seconds of the oldest such
    interaction) and ``list_built_at`` (their list's snapshot; null without a list)."""
    rows = conn.execute(
        f"""
        WITH bounds AS (
            SELECT min({run_snapshot_sql('r')}) AS since FROM recommendation_runs r
            WHERE r.status = 'complete'
        ), recent AS (
            SELECT DISTINCT i.user_id FROM user_interactions i, bounds b
            WHERE i.created_at > to_timestamp(b.since)
        ), built AS (
            SELECT a.user_id, (SELECT {run_snapshot_sql('rr')} FROM recommendation_runs rr
                               WHERE rr.id = current_recommendation_run(a.user_id)) AS built_at
            FROM recent a
        )
        SELECT b.user_id::text, extract(epoch FROM f.first_at)::float8, b.built_at
        FROM built b CROSS JOIN bounds
        CROSS JOIN LATERAL (
            SELECT min(i.created_at) AS first_at FROM user_interactions i
            WHERE i.user_id = b.user_id AND i.created_at > to_timestamp(coalesce(b.built_at, bounds.since))
        ) f
        WHERE f.first_at IS NOT NULL
        ORDER BY f.first_at, b.user_id
        """
    ).fetchall()
    return pl.DataFrame(
        rows,
        schema={"user_id": pl.String, "first_unseen": pl.Float64, "list_built_at": pl.Float64},
        orient="row",
    )


def refuse_newer_and_write_profiles(
    snapshot_at: float, model_id: int, profiles: StoredProfiles, user_ids: list[str]
) -> swap.BeforeFlip:
    """The refresh's ``before_flip`` (see the module docstring)."""

    def before_flip(conn: psycopg.Connection, run: swap.Run) -> None:
        newer = conn.execute(
            f"SELECT r.id, r.status, r.shard FROM recommendation_runs r WHERE r.id <> %s "
            f"AND r.status IN ('building', 'complete') AND {run_snapshot_sql('r')} > %s "
            "ORDER BY r.id DESC LIMIT 1",
            (run.id, snapshot_at),
        ).fetchone()
        if newer is not None:
            raise swap.Refused(
                f"run {newer[0]} (shard {newer[2]}, {newer[1]}) was built from a newer snapshot"
            )
        serving.replace_profiles(conn, model_id, profiles, user_ids)

    return before_flip


def _absorb(timer: Timer, phase: str, result: dg.MaterializeResult) -> Any:
    """A step's value; its time by kind goes into ``timer`` under ``phase``."""
    kinds = result.metadata["seconds_by_kind"].value
    for kind in KINDS:
        timer.add(f"{phase} ({kind})", kind, float(kinds.get(kind, 0.0)))
    return result.value


def _seconds(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "min": round(float(values.min()), 1),
        "median": round(float(np.median(values)), 1),
        "max": round(float(values.max()), 1),
    }


def refreshed_recommendations(
    context: dg.AssetExecutionContext,
    scoring: ScoringResource,
    postgres: PostgresResource,
    redis: RedisResource,
) -> dg.MaterializeResult:
    """The lists of the users active since their list was built (an interaction after its
    snapshot), and only theirs, recomputed by the nightly graph's own steps with the newest
    nightly serving model's vocabulary and ScoringConfig, and swapped in as one recommendation run
    (shard 'refresh') with their new profiles; refused when a run from a newer snapshot exists
    (refresh.py). Run every few minutes by the sensor refresh_active_users."""
    t0 = time.perf_counter()
    timer = Timer()
    with postgres.connect() as conn, timer.step("find active users", "io"):
        base = base_model(conn)
        active = active_users(conn) if base is not None else None
    if base is None or active is None or active.is_empty():
        reason = "no complete nightly run names a serving model" if base is None else "no user is active since their list was built"
        return dg.MaterializeResult(metadata={"users": dg.MetadataValue.int(0), "skipped": dg.MetadataValue.text(reason), **timer.metadata()})
    resource = ScoringResource(overrides=base.config, batch_size=scoring.batch_size)
    cfg = resource.scoring_config
    snap = _absorb(timer, "snapshot", steps.user_interactions_snapshot(resource, postgres))
    posts = _absorb(timer, "post features", steps.compute_post_features(cfg, snap, tfidf_json=base.tfidf))
    users = _absorb(timer, "user features", steps.user_features(resource, snap))
    found = active.join(
        users["user_ids"].with_row_index("user_idx"), on="user_id", how="inner", maintain_order="left"
    )  # a user deleted since is not in the snapshot
    idx = found["user_idx"].to_numpy().astype(np.int64)
    # the same rule as the nightly run: a running experiment's config arm scores its users
    bundles, kernel, arm_users = steps.score_user_sets(cfg, posts, users, {REFRESH_SHARD: idx}, resource.batch_size, timer)
    timer.add("topk", "rust", kernel)
    bundle = bundles[REFRESH_SHARD]
    with timer.step("validate"):
        ok, facts = steps.validate_scores(bundle, np.asarray(posts["post_author"]), users["hidden"], dict(cfg["weights"]))
    if not ok:
        raise dg.Failure(description=f"refreshed scores break an invariant: {facts}", metadata={"violations": facts})
    history = np.asarray(users["history_length"])
    with timer.step("profiles", "rust"):
        profiles = StoredProfiles.compute(idx[history[idx] > 0], users, posts, cfg)
    ids = found["user_id"].to_list()
    result = steps.write_shard(
        context,
        postgres,
        redis,
        bundle,
        timer,
        RunModel(base.id, profiles),
        own_partition=False,
        before_flip=refuse_newer_and_write_profiles(float(snap["snapshot_at"]), base.id, profiles, ids),
    )
    behind = float(snap["snapshot_at"]) - found["first_unseen"].to_numpy()
    built = found["list_built_at"].drop_nulls().to_numpy()
    metadata: dict[str, Any] = {
        "users": dg.MetadataValue.int(result["users"]),
        "users_active": dg.MetadataValue.int(found.height),
        "users_without_a_list": dg.MetadataValue.int(found["list_built_at"].null_count()),
        "behind_seconds": dg.MetadataValue.json(_seconds(behind)),
        "list_age_seconds": dg.MetadataValue.json(_seconds(float(snap["snapshot_at"]) - built)),
        "model_id": dg.MetadataValue.int(base.id),
        "experiment_arm_users": dg.MetadataValue.json(arm_users),
        "rows": dg.MetadataValue.int(result["rows"]),
        "cached_users": dg.MetadataValue.int(result["cached_users"]),
        "runs_removed": dg.MetadataValue.int(result["runs_removed"]),
        "seconds": dg.MetadataValue.float(round(time.perf_counter() - t0, 3)),
        **timer.metadata(),
    }
    if result["run_id"] is not None:
        metadata["recommendation_run"] = dg.MetadataValue.int(result["run_id"])
    if result["refused"] is not None:
        metadata["refused"] = dg.MetadataValue.text(result["refused"])
        context.log.warning(f"refresh not written: {result['refused']}")
    return dg.MaterializeResult(metadata=metadata)


def build_refresh_asset(shards: dg.PartitionsDefinition | None = None) -> dg.AssetsDefinition:
    """Unpartitioned (its user set is found at run time); after ``user_recommendations`` in the
    graph, whose users' lists it replaces one by one; with user shards it gets the single-run
    backfill policy of the other unpartitioned assets (so ``--select 'not key:experiment_report'``
    over a range of shards stays one run)."""
    return dg.asset(
        name=REFRESH_ASSET,
        deps=["user_recommendations"],
        kinds={"rust", "postgres", "redis"},
        backfill_policy=dg.BackfillPolicy.single_run() if shards is not None else None,
    )(refreshed_recommendations)
