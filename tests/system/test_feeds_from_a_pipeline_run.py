"""The API serves what a real pipeline run wrote: the Dagster graph (tests/reliability's
pipeline runner, ``dg.materialize`` of every asset) on a small synthetic data set into a fresh
database and a test-only Redis prefix, then the real ``feedrank-api`` binary over HTTP.

The API's own tests write recommendations with SQL into the default partition; a pipeline run
writes a partition of its own (migration V6) and the user's Redis entry. Here the feed must come
from that run: first from Redis, then, once the user's key is deleted, from PostgreSQL, which holds
the run only in its own partition (the default partition is empty).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import requests

import feedrank
from feedrank import cli, db
from reliability.stack import REPO_ROOT, ApiServer, bearer

RUNNER = REPO_ROOT / "tests" / "reliability" / "pipeline_runner.py"
DEMO = ["--users", "200", "--posts", "1000", "--interactions", "10000", "--seed", "7"]


def run_pipeline(url: str, prefix: str, storage: Path) -> None:
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=db.redis_url(), REDIS_KEY_PREFIX=prefix,
               DAGSTER_HOME=str(storage / "home"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    (storage / "home").mkdir()
    done = subprocess.run([sys.executable, str(RUNNER), str(storage / "run")], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pipeline run failed:\n{(done.stdout + done.stderr)[-4000:]}"


def feed(api: ApiServer, user: str) -> tuple[str, list[tuple[str, float, str]]]:
    r = requests.get(api.base + "/api/feeds", params={"limit": 100}, headers=bearer(user), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["metadata"]["source"], [(p["id"], p["score"], p["reason"]) for p in body["posts"]]


def test_the_api_serves_the_partition_a_pipeline_run_wrote_from_redis_then_postgresql(
    fresh_database_url, redis_client, redis_prefix, api_binary
):
    url = fresh_database_url
    assert cli.main(["demo-data", "--synthetic", *DEMO, "--database-url", url]) == 0
    with tempfile.TemporaryDirectory(prefix="feedrank-system-") as storage:
        run_pipeline(url, redis_prefix, Path(storage))

    with psycopg.connect(url) as conn:
        (run_id,) = conn.execute(
            "SELECT id FROM recommendation_runs WHERE status = 'complete' ORDER BY id DESC"
        ).fetchall()[0]
        tables = conn.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM user_recommendations WHERE run_id = %s",
            (run_id,),
        ).fetchall()
        in_default = conn.execute("SELECT count(*) FROM user_recommendations_default").fetchone()[0]
        rows = conn.execute(
            "SELECT user_id::text, post_id::text, score, reason FROM user_recommendations "
            "WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    assert len(tables) == 1 and tables[0][0] != "user_recommendations_default", tables
    assert in_default == 0
    by_user: dict[str, dict[str, tuple[float, str]]] = {}
    for user, post, score, reason in rows:
        by_user.setdefault(user, {})[post] = (score, reason)
    # what every reader gets is this run (current_recommendation_run), for every user it scored
    current = db.current_recommendations(url)
    assert set(current) == set(by_user)
    assert {run for lists in current.values() for _, _, run in lists} == {run_id}

    api = ApiServer(url, db.redis_url(), redis_prefix, api_binary)
    try:
        for user in sorted(by_user)[:5]:
            key = feedrank.recommendations_key(redis_prefix, user)
            entry = feedrank.decode_cache_entry(redis_client.get(key))
            assert {i["post_id"] for i in entry["items"]} == set(by_user[user])

            source, cached = feed(api, user)
            assert source == "cache" and cached, (user, source)
            for post, score, reason in cached:
                assert post in by_user[user], f"post {post} is not in run {run_id} for {user}"
                want_score, want_reason = by_user[user][post]
                assert abs(score - want_score) <= 1e-5 * max(1.0, abs(want_score)) and reason == want_reason

            redis_client.delete(key)
            source, from_db = feed(api, user)
            assert source == "db", (user, source)
            assert [p for p, _, _ in from_db] == [p for p, _, _ in cached]
            for (_, s1, r1), (_, s2, r2) in zip(from_db, cached):
                assert abs(s1 - s2) <= 1e-5 * max(1.0, abs(s1)) and r1 == r2
            assert redis_client.exists(key), "the feed read from PostgreSQL is written back to Redis"
    finally:
        api.stop()
