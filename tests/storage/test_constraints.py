"""The schema rejects what the API and the pipeline must never store: unknown interaction types,
references to missing users or posts, a retried event stored twice, malformed metadata, and
recommendations that do not belong to a run. Each test works in one transaction rolled back at
the end; each rejected statement runs in its own savepoint."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import errors

ALICE, BOB = uuid.uuid4(), uuid.uuid4()
POST = uuid.uuid4()


@pytest.fixture
def conn(db_conn: psycopg.Connection) -> psycopg.Connection:
    db_conn.execute(
        "INSERT INTO users (id, username) VALUES (%s, %s), (%s, %s)",
        (ALICE, f"alice_{ALICE.hex[:8]}", BOB, f"bob_{BOB.hex[:8]}"),
    )
    db_conn.execute("INSERT INTO posts (id, user_id, content) VALUES (%s, %s, 'hello')", (POST, BOB))
    return db_conn


def track(conn, user=ALICE, post=POST, kind="view", event_id=None, metadata=None):
    return conn.execute(
        """INSERT INTO user_interactions (user_id, post_id, interaction_type, event_id, metadata)
           VALUES (%s, %s, %s, %s, %s::jsonb) RETURNING id""",
        (user, post, kind, event_id, metadata),
    ).fetchone()[0]


def rejected(conn, error, fn, *args, **kwargs):
    with pytest.raises(error):
        with conn.transaction():  # a savepoint: the failure leaves the outer transaction usable
            fn(conn, *args, **kwargs)


@pytest.mark.parametrize("kind", ["view", "click", "like", "share", "hide"])
def test_every_documented_interaction_type_is_accepted(conn, kind):
    assert isinstance(track(conn, kind=kind), uuid.UUID)


@pytest.mark.parametrize("kind", ["VIEW", "comment", "", "like "])
def test_an_unknown_interaction_type_is_rejected(conn, kind):
    rejected(conn, errors.CheckViolation, track, kind=kind)


def test_an_interaction_with_an_unknown_post_or_user_is_rejected(conn):
    rejected(conn, errors.ForeignKeyViolation, track, post=uuid.uuid4())
    rejected(conn, errors.ForeignKeyViolation, track, user=uuid.uuid4())


def test_a_retried_event_id_is_stored_once_per_user(conn):
    track(conn, event_id="evt-1")
    rejected(conn, errors.UniqueViolation, track, event_id="evt-1", kind="like")
    # Another user may use the same client event id; events without an id never collide.
    track(conn, user=BOB, event_id="evt-1")
    track(conn)
    track(conn)
    # The API's idempotent insert: a retry stores nothing and the original row stays.
    again = conn.execute(
        """INSERT INTO user_interactions (user_id, post_id, interaction_type, event_id)
           VALUES (%s, %s, 'view', 'evt-1') ON CONFLICT (user_id, event_id) DO NOTHING RETURNING id""",
        (ALICE, POST),
    ).fetchall()
    assert again == []
    counts = conn.execute(
        "SELECT event_id, count(*) FROM user_interactions WHERE user_id = %s GROUP BY 1 ORDER BY 1",
        (ALICE,),
    ).fetchall()
    assert counts == [("evt-1", 1), (None, 2)]


@pytest.mark.parametrize("event_id", ["", "x" * 129])
def test_an_empty_or_overlong_event_id_is_rejected(conn, event_id):
    rejected(conn, errors.CheckViolation, track, event_id=event_id)


@pytest.mark.parametrize("metadata", ["[1, 2]", '"text"', "42", "null"])
def test_metadata_that_is_not_a_json_object_is_rejected(conn, metadata):
    rejected(conn, errors.CheckViolation, track, metadata=metadata)


def test_metadata_objects_are_stored_as_jsonb(conn):
    iid = track(conn, metadata='{"duration": 5000, "scrollDepth": 0.8}')
    assert conn.execute("SELECT metadata FROM user_interactions WHERE id = %s", (iid,)).fetchone()[0] == {
        "duration": 5000, "scrollDepth": 0.8}


def _run(conn, status="building"):
    return conn.execute(
        "INSERT INTO recommendation_runs (status) VALUES (%s) RETURNING id", (status,)
    ).fetchone()[0]


def _recommend(conn, run_id, user=ALICE, post=POST, score=1.0):
    conn.execute(
        """INSERT INTO user_recommendations (run_id, user_id, post_id, score, expires_at)
           VALUES (%s, %s, %s, %s, now() + interval '1 day')""",
        (run_id, user, post, score),
    )


def test_recommendations_belong_to_a_run_and_name_each_post_once(conn):
    run_id = _run(conn)
    _recommend(conn, run_id)
    rejected(conn, errors.UniqueViolation, _recommend, run_id)
    rejected(conn, errors.ForeignKeyViolation, _recommend, run_id + 1000)
    rejected(conn, errors.ForeignKeyViolation, _recommend, run_id, post=uuid.uuid4())
    rejected(conn, errors.CheckViolation, _run, status="done")
    # The same post again in another run is fine: runs are versions.
    _recommend(conn, _run(conn))


def test_deleting_a_post_removes_its_interactions_and_recommendations(conn):
    track(conn, kind="like")
    _recommend(conn, _run(conn))
    conn.execute("DELETE FROM posts WHERE id = %s", (POST,))
    for table in ("user_interactions", "user_recommendations"):
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE post_id = %s", (POST,)).fetchone()[0] == 0


def test_deleting_a_user_removes_their_posts_interactions_and_recommendations(conn):
    track(conn, user=BOB, kind="like")
    _recommend(conn, _run(conn), user=BOB)
    conn.execute("DELETE FROM users WHERE id = %s", (BOB,))
    assert conn.execute("SELECT count(*) FROM posts WHERE user_id = %s", (BOB,)).fetchone()[0] == 0
    for table in ("user_interactions", "user_recommendations"):
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s", (BOB,)).fetchone()[0] == 0
