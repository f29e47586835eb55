"""Asset checks of what the pipeline wrote, read back from PostgreSQL and Redis.

They look at the recommendation runs this Dagster run wrote (``recommendation_runs.dagster_run_id``);
run on their own (from the UI), at the newest complete run of each shard of the current layout.
A user's list may since have been replaced by the incremental refresh (``refresh.py``, shard
``refresh``): the checks accept a newer refresh run as the one that user is served, and compare
the Redis entry with the run the user is served now.
``recommendation_scores`` has its own blocking check (``scores_valid``, in assets.py) that stops a
bad run before it writes anything.
"""


import random
from collections.abc import Callable
from typing import Any

import dagster as dg
import feedrank
import numpy as np
from psycopg import sql

from dagster_pipeline.partitions import REFRESH_SHARD, SHARD_HASH_SQL, parse_shard_key, shard_keys
from dagster_pipeline.resources import PostgresResource, RedisResource

REDIS_SAMPLE_USERS = 200
USER_RECOMMENDATIONS = dg.AssetKey("user_recommendations")


def checked_runs(context: dg.AssetCheckExecutionContext, conn) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, shard, config FROM recommendation_runs "
        "WHERE dagster_run_id = %s AND status = 'complete' ORDER BY id",
        (context.run.run_id,),
    ).fetchall()
    if not rows:
        # Run on its own: the newest complete run of each shard of the newest run's layout.
        newest = conn.execute(
            "SELECT shard FROM recommendation_runs WHERE status = 'complete' AND shard <> %s "
            "ORDER BY id DESC LIMIT 1",
            (REFRESH_SHARD,),
        ).fetchone()
        if newest is None:
            return []
        rows = conn.execute(
            "SELECT DISTINCT ON (shard) id, shard, config FROM recommendation_runs "
            "WHERE status = 'complete' AND shard = ANY(%s) ORDER BY shard, id DESC",
            (shard_keys(parse_shard_key(newest[0])[1]),),
        ).fetchall()
    return [{"id": r[0], "shard": r[1], "config": r[2]} for r in rows]


# A check's body: (connection, the runs to check, the Redis resource) -> its result.
CheckBody = Callable[[Any, list[dict[str, Any]], RedisResource], dg.AssetCheckResult]


def _run_check(name: str, description: str, body: CheckBody) -> dg.AssetChecksDefinition:
    """An asset check of ``user_recommendations`` that runs ``body`` on the runs to check
    (:func:`checked_runs`), and fails when there is none."""

    @dg.asset_check(asset=USER_RECOMMENDATIONS, name=name, description=description)
    def check(
        context: dg.AssetCheckExecutionContext, postgres: PostgresResource, redis: RedisResource
    ) -> dg.AssetCheckResult:
        with postgres.connect() as conn:
            runs = checked_runs(context, conn)
            if not runs:
                return dg.AssetCheckResult(passed=False, metadata={"error": "no complete recommendation run found"})
            return body(conn, runs, redis)

    return check


def _every_user_covered(conn, runs: list[dict[str, Any]], redis: RedisResource) -> dg.AssetCheckResult:
    missing_total, not_current, expected_total = 0, 0, 0
    examples: list[str] = []
    for run in runs:
        index, count = parse_shard_key(run["shard"])
        shard_filter = sql.SQL(SHARD_HASH_SQL).format(col=sql.SQL("u.id"))
        users_q = sql.SQL(
            "SELECT u.id FROM users u WHERE {h} %% %s = %s AND u.created_at <= to_timestamp(%s)"
        ).format(h=shard_filter)
        params = (count, index, float(run["config"]["snapshot_at"]))
        expected = conn.execute(sql.SQL("SELECT count(*) FROM ({}) s").format(users_q), params).fetchone()[0]
        missing = conn.execute(
            sql.SQL(
                "SELECT s.id::text FROM ({}) s WHERE NOT EXISTS (SELECT 1 FROM "
                "user_recommendations r WHERE r.user_id = s.id AND r.run_id = %s)"
            ).format(users_q),
            (*params, run["id"]),
        ).fetchall()
        # served another run: neither this one nor a refresh of the user since
        stale = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM ({}) s WHERE current_recommendation_run(s.id) NOT IN "
                "(SELECT id FROM recommendation_runs WHERE id = %s OR (shard = %s AND id > %s)) "
                "AND EXISTS (SELECT 1 FROM user_recommendations r WHERE r.user_id = s.id AND r.run_id = %s)"
            ).format(users_q),
            (*params, run["id"], REFRESH_SHARD, run["id"], run["id"]),
        ).fetchone()[0]
        expected_total += expected
        missing_total += len(missing)
        not_current += stale
        examples += [m[0] for m in missing[:5]]
    return dg.AssetCheckResult(
        passed=missing_total == 0 and not_current == 0,
        metadata={
            "runs": dg.MetadataValue.json([r["id"] for r in runs]),
            "users_expected": dg.MetadataValue.int(expected_total),
            "users_missing": dg.MetadataValue.int(missing_total),
            "users_served_another_run": dg.MetadataValue.int(not_current),
            "examples": dg.MetadataValue.json(examples[:10]),
        },
    )


def _scores_in_range(conn, runs: list[dict[str, Any]], redis: RedisResource) -> dg.AssetCheckResult:
    components = sql.SQL(" OR ").join(
        sql.SQL("NOT ({} BETWEEN 0 AND 1.000001)").format(sql.Identifier(f"{name}_score"))
        for name in feedrank.component_names()
    )
    bad_total, rows_total = 0, 0
    for run in runs:
        # the run's weights, or an experiment arm's that the run applied (larger sums allowed)
        arm_configs = [c for e in run["config"].get("experiments", {}).values() for c in e["arms"].values()]
        max_score = max(float(sum(c["weights"].values())) for c in [run["config"], *arm_configs]) + 1e-4
        bad, n = conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE NOT (score BETWEEN 0 AND %s) OR score = 'NaN'::float8 "
                "OR {}), count(*) FROM user_recommendations WHERE run_id = %s"
            ).format(components),
            (max_score, run["id"]),
        ).fetchone()
        bad_total += bad
        rows_total += n
    return dg.AssetCheckResult(
        passed=bad_total == 0 and rows_total > 0,
        metadata={
            "rows_checked": dg.MetadataValue.int(rows_total),
            "rows_out_of_range": dg.MetadataValue.int(bad_total),
        },
    )


def _no_deleted_own_or_hidden(conn, runs: list[dict[str, Any]], redis: RedisResource) -> dg.AssetCheckResult:
    ids = [r["id"] for r in runs]
    deleted, own = conn.execute(
        "SELECT count(*) FILTER (WHERE p.id IS NULL), count(*) FILTER (WHERE p.user_id = r.user_id) "
        "FROM user_recommendations r LEFT JOIN posts p ON p.id = r.post_id WHERE r.run_id = ANY(%s)",
        (ids,),
    ).fetchone()
    hidden = conn.execute(
        "SELECT count(*) FROM user_recommendations r WHERE r.run_id = ANY(%s) AND EXISTS "
        "(SELECT 1 FROM user_interactions i WHERE i.user_id = r.user_id "
        "AND i.post_id = r.post_id AND i.interaction_type = 'hide')",
        (ids,),
    ).fetchone()[0]
    counts = {"deleted": deleted, "own": own, "hidden": hidden}
    return dg.AssetCheckResult(
        passed=sum(counts.values()) == 0,
        metadata={f"{k}_posts": dg.MetadataValue.int(int(v)) for k, v in counts.items()},
    )


def _redis_matches(conn, runs: list[dict[str, Any]], redis: RedisResource) -> dg.AssetCheckResult:
    mismatches: list[dict[str, Any]] = []
    sampled = 0
    client = redis.client()
    try:
        for run in runs:
            users = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT user_id::text FROM user_recommendations WHERE run_id = %s",
                    (run["id"],),
                ).fetchall()
            ]
            rng = random.Random(run["id"])
            for user_id in rng.sample(users, min(len(users), max(1, REDIS_SAMPLE_USERS // len(runs)))):
                sampled += 1
                raw = client.get(feedrank.recommendations_key(redis.prefix(), user_id))
                problem = _compare(raw, served(conn, user_id))
                if problem:
                    mismatches.append({"user_id": user_id, "problem": problem})
    finally:
        client.close()
    return dg.AssetCheckResult(
        passed=not mismatches and sampled > 0,
        metadata={
            "users_sampled": dg.MetadataValue.int(sampled),
            "mismatches": dg.MetadataValue.int(len(mismatches)),
            "examples": dg.MetadataValue.json(mismatches[:5]),
        },
    )


def served(conn, user_id: str) -> dict[str, Any]:
    """What a reader of PostgreSQL gets for ``user_id``: the current run, its rows (best first),
    its serving model and the user's profile in it (None without one)."""
    run_id, model_id = conn.execute(
        "SELECT r.id, r.model_id FROM recommendation_runs r WHERE r.id = current_recommendation_run(%s)",
        (user_id,),
    ).fetchone() or (None, None)
    rows = conn.execute(
        "SELECT post_id::text, score FROM user_recommendations "
        "WHERE run_id = %s AND user_id = %s ORDER BY score DESC, post_id",
        (run_id, user_id),
    ).fetchall()
    profile = conn.execute(
        "SELECT terms, weights, authors::text[], author_weights FROM user_profiles "
        "WHERE model_id = %s AND user_id = %s",
        (model_id, user_id),
    ).fetchone()
    return {
        "run_id": run_id,
        "rows": rows,
        "model_id": model_id,
        "profile": None if profile is None else dict(zip(("terms", "weights", "authors", "author_weights"), profile)),
    }


def _same_profile(cached: dict[str, Any] | None, stored: dict[str, Any] | None) -> bool:
    if cached is None or stored is None:
        return cached is None and stored is None
    # float4 in PostgreSQL, f32 in the entry: compared as float32, bit for bit
    as32 = lambda values: np.asarray(values, np.float32)  # noqa: E731
    return (
        list(cached["terms"]) == list(stored["terms"])
        and np.array_equal(as32(cached["weights"]), as32(stored["weights"]))
        and list(cached["authors"]) == list(stored["authors"])
        and np.array_equal(as32(cached["author_weights"]), as32(stored["author_weights"]))
    )


def _compare(raw: bytes | None, expected: dict[str, Any]) -> str | None:
    if raw is None:
        return "no Redis entry"
    try:
        entry = feedrank.decode_cache_entry(raw)
    except ValueError as e:
        return f"entry does not decode: {e}"
    run_id, rows = expected["run_id"], expected["rows"]
    if entry["run_id"] != run_id:
        return f"entry is of run {entry['run_id']}, the user is served run {run_id}"
    items = entry["items"]
    if len(items) != len(rows):
        return f"{len(items)} cached items, {len(rows)} rows"
    cached = {it["post_id"]: it["score"] for it in items}
    table = {p: float(sc) for p, sc in rows}
    if cached.keys() != table.keys():
        return "post ids differ"
    # The table stores the float32 score as float8: equal up to float32 precision.
    if any(abs(cached[p] - table[p]) > 1e-6 * max(1.0, abs(table[p])) for p in table):
        return "scores differ"
    if any(a["score"] < b["score"] for a, b in zip(items, items[1:])):
        return "cached items not in descending score order"
    if entry["model_id"] != expected["model_id"]:
        return f"entry names model {entry['model_id']}, the run model {expected['model_id']}"
    if not _same_profile(entry["profile"], expected["profile"]):
        return "profile differs from user_profiles"
    return None


ALL_CHECKS = [
    _run_check(
        "every_user_has_recommendations",
        "Every user that existed at snapshot time has recommendations in the run that covers their "
        "shard, and that run is the one readers get (current_recommendation_run).",
        _every_user_covered,
    ),
    _run_check(
        "stored_scores_in_range",
        "Stored scores are finite and within [0, sum of weights]; components in [0, 1].",
        _scores_in_range,
    ),
    _run_check(
        "no_deleted_own_or_hidden_posts",
        "No stored recommendation points at a deleted post, at the user's own post or at a post "
        "the user hid.",
        _no_deleted_own_or_hidden,
    ),
    _run_check(
        "redis_matches_table",
        f"For a sample of up to {REDIS_SAMPLE_USERS} users, the Redis entry decodes "
        "(feedrank.decode_cache_entry) and lists the rows of the run the user is served in the same "
        "order with the same scores, names that run's serving model and carries the user's profile "
        "in it as user_profiles holds it.",
        _redis_matches,
    ),
]
