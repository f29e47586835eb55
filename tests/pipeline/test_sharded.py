"""User shards fanned out over concurrent runs (`dagster asset materialize --partition`), each run
on the multiprocess executor: every step in its own process, intermediate data through the bundle
IO manager under the instance's storage (DAGSTER_HOME)."""

import re
import subprocess
import sys
from pathlib import Path

import feedrank
import psycopg
import pytest
from graph_runs import DemoData, current_recommendations

from dagster_pipeline.partitions import shard_keys
from feedrank import db

SHARDS = 3
REPO = Path(__file__).resolve().parents[2]
UPSTREAM = ["user_interactions_snapshot", "post_features", "user_features", "serving_model"]
DOWNSTREAM = ["recommendation_scores", "user_recommendations"]


@pytest.fixture
def sharded_env(demo_db: DemoData, redis_prefix: str, monkeypatch: pytest.MonkeyPatch):
    # The step processes build the definitions from the environment, as a deployment would.
    monkeypatch.setenv("FEEDRANK_USER_SHARDS", str(SHARDS))
    monkeypatch.setenv("DATABASE_URL", demo_db.url)
    monkeypatch.setenv("REDIS_URL", db.redis_url())
    monkeypatch.setenv("REDIS_KEY_PREFIX", redis_prefix)
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    return demo_db


def _materialize_cli(select: str, *extra: str) -> subprocess.Popen:
    """`dagster asset materialize` as an operator runs it; the run uses the job's default
    (multiprocess) executor."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
         "-m", "dagster_pipeline.definitions", "--select", select, *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _step_pids(log: str) -> dict[str, set[int]]:
    """step key -> pids that logged STEP_START for it (dagster's log line: `... - <pid> - <step> - STEP_START`)."""
    pids: dict[str, set[int]] = {}
    for m in re.finditer(r" - (\d+) - ([a-z_]+) - STEP_START - ", log):
        pids.setdefault(m.group(2), set()).add(int(m.group(1)))
    return pids


def test_shards_run_as_concurrent_multiprocess_runs(sharded_env: DemoData, redis_client, redis_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()

    log = _finish(_materialize_cli(",".join(UPSTREAM)))
    pids = _step_pids(log)
    assert set(pids) == set(UPSTREAM)
    assert len(set().union(*pids.values())) == len(UPSTREAM), "each step ran in its own process"

    # one run per shard, all at once, as a backfill over the shard partitions would launch them
    keys = shard_keys(SHARDS)
    procs = [_materialize_cli(",".join(DOWNSTREAM), "--partition", key) for key in keys]
    logs = [_finish(p) for p in procs]
    for shard_log in logs:
        pids = _step_pids(shard_log)
        assert set(pids) >= set(DOWNSTREAM)
        assert pids["recommendation_scores"] != pids["user_recommendations"]

    with psycopg.connect(sharded_env.url) as conn:
        written = conn.execute(
            "SELECT shard, status, users_count FROM recommendation_runs ORDER BY shard"
        ).fetchall()
        n_users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    assert [(s, st) for s, st, _ in written] == [(k, "complete") for k in keys]
    assert sum(n for _, _, n in written) == n_users
    recs = current_recommendations(sharded_env.url)
    assert len(recs) == n_users, "the shards together cover every user"
    for user_id in list(recs)[:20]:
        entry = redis_client.get(feedrank.recommendations_key(redis_prefix, user_id))
        assert feedrank.decode_cache_entry(entry)["run_id"] == recs[user_id][0][2]


def test_shard_hash_is_the_same_in_python_and_sql(demo_db: DemoData):
    """Documented contract: shard = first 32 bits of md5(user id) mod N."""
    import hashlib

    from dagster_pipeline.partitions import SHARD_HASH_SQL

    with psycopg.connect(demo_db.url) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT id::text, {} FROM users").format(
                psycopg.sql.SQL(SHARD_HASH_SQL).format(col=psycopg.sql.SQL("id"))
            )
        ).fetchall()
    for user_id, h in rows:
        assert h == int(hashlib.md5(user_id.encode()).hexdigest()[:8], 16)
    sizes = [sum(1 for _, h in rows if h % 4 == i) for i in range(4)]
    assert min(sizes) > len(rows) / 4 * 0.6, f"shards unbalanced: {sizes}"
