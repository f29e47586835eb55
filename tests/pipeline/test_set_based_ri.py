"""The set-based replacement of user_recommendations' per-row foreign-key checks
(``dagster_pipeline.assets._lock_references``): it must keep the guarantees those checks gave."""

import psycopg
import pytest
from conftest import DemoData

from dagster_pipeline.assets import _lock_references


def _run(conn, status="building") -> int:
    return conn.execute(
        "INSERT INTO recommendation_runs (status) VALUES (%s) RETURNING id", (status,)
    ).fetchone()[0]


def _ids(conn, table: str, n: int) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT id::text FROM {table} ORDER BY id LIMIT %s", (n,))]


def _insert(conn, run_id, user, post):
    conn.execute(
        "INSERT INTO user_recommendations (run_id, user_id, post_id, score, expires_at) "
        "VALUES (%s, %s, %s, 1.0, now() + interval '1 day')",
        (run_id, user, post),
    )


def test_missing_references_are_reported_and_triggers_are_off_only_in_the_transaction(demo_db: DemoData):
    with psycopg.connect(demo_db.url, autocommit=True) as conn:
        run_id = _run(conn)
        users, posts = _ids(conn, "users", 3), _ids(conn, "posts", 3)
        conn.execute("DELETE FROM posts WHERE id = %s", (posts[0],))
    with psycopg.connect(demo_db.url) as conn:
        with conn.transaction():
            live_users, live_posts = _lock_references(conn, run_id, users, posts)
            assert conn.execute("SHOW session_replication_role").fetchone()[0] == "replica"
        assert live_users is None  # all present
        assert live_posts == set(posts[1:])  # the deleted post is not live
        assert conn.execute("SHOW session_replication_role").fetchone()[0] == "origin"


@pytest.mark.parametrize("status", ["complete", "failed", None])
def test_a_run_that_is_gone_or_not_building_is_refused(demo_db: DemoData, status):
    with psycopg.connect(demo_db.url, autocommit=True) as conn:
        run_id = _run(conn, status or "building")
        if status is None:
            conn.execute("DELETE FROM recommendation_runs WHERE id = %s", (run_id,))
        users, posts = _ids(conn, "users", 1), _ids(conn, "posts", 1)
    with psycopg.connect(demo_db.url) as conn:
        with pytest.raises(RuntimeError, match=f"recommendation run {run_id}"):
            with conn.transaction():
                _lock_references(conn, run_id, users, posts)


def test_a_locked_post_cannot_be_deleted_until_the_rows_are_committed_then_cascades(demo_db: DemoData):
    with psycopg.connect(demo_db.url, autocommit=True) as setup:
        run_id = _run(setup)
        users, posts = _ids(setup, "users", 1), _ids(setup, "posts", 1)
    with psycopg.connect(demo_db.url) as writer, psycopg.connect(demo_db.url) as deleter:
        with writer.transaction():
            _lock_references(writer, run_id, users, posts)
            _insert(writer, run_id, users[0], posts[0])  # no per-row FK trigger runs here
            deleter.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                deleter.execute("DELETE FROM posts WHERE id = %s", (posts[0],))
            deleter.rollback()
        # committed: now the post's deletion cascades to the new row
        deleter.execute("DELETE FROM posts WHERE id = %s", (posts[0],))
        deleter.commit()
        assert writer.execute(
            "SELECT count(*) FROM user_recommendations WHERE run_id = %s", (run_id,)
        ).fetchone()[0] == 0
