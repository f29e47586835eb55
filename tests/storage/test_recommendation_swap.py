"""Recommendations are versioned by run (recommendation_runs + run_id): a reader that asks for a
user's current set (`run_id = current_recommendation_run(user_id)`) sees the whole old set or the
whole new set, never a mix, never nothing, while a writer COPYs a new run in several committed
chunks and then flips its status; a run that never completes (or fails) stays invisible; a run
covering only some users (a shard) replaces only theirs."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from feedrank import db

N_USERS, N_POSTS, PER_USER = 12, 150, 24

CURRENT = """
SELECT run_id, post_id FROM user_recommendations
WHERE user_id = %(u)s AND run_id = current_recommendation_run(%(u)s) AND expires_at > now()
ORDER BY score DESC
"""
# What a reader that ignored the run status would see: the newest rows of any run.
NAIVE = """
SELECT run_id, post_id FROM user_recommendations
WHERE user_id = %(u)s AND run_id = (SELECT max(run_id) FROM user_recommendations WHERE user_id = %(u)s)
"""


@pytest.fixture
def world(fresh_database_url):
    rng = random.Random(7)
    users = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(N_USERS)]
    posts = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(N_POSTS)]
    with db.connect(fresh_database_url, autocommit=True) as conn:
        with conn.cursor().copy("COPY users (id, username) FROM STDIN") as cp:
            for i, u in enumerate(users):
                cp.write_row((u, f"swap_user_{i}"))
        with conn.cursor().copy("COPY posts (id, user_id, content) FROM STDIN") as cp:
            for i, p in enumerate(posts):
                cp.write_row((p, users[i % N_USERS], f"post {i}"))
    return fresh_database_url, users, posts, rng


def new_run_rows(users, posts, rng):
    """A run's rows: PER_USER distinct posts per user, with scores."""
    return {u: rng.sample(posts, PER_USER) for u in users}


def write_run(conn, rows, chunks=1, pause=0.0, complete=True):
    """Inserts a run as 'building', COPYs its rows in `chunks` separately committed pieces per
    user (so a careless reader could see part of a user's set), then marks it complete."""
    run_id = conn.execute("INSERT INTO recommendation_runs DEFAULT VALUES RETURNING id").fetchone()[0]
    pieces = [[] for _ in range(chunks)]
    for u, ranked in rows.items():
        for rank, p in enumerate(ranked):
            pieces[rank % chunks].append((run_id, u, p, float(len(ranked) - rank)))
    for piece in pieces:
        with conn.transaction():
            with conn.cursor().copy(
                "COPY user_recommendations (run_id, user_id, post_id, score, expires_at) FROM STDIN"
            ) as cp:
                for row in piece:
                    cp.write_row((*row, "infinity"))
        time.sleep(pause)
    if complete:
        conn.execute(
            "UPDATE recommendation_runs SET status = 'complete', completed_at = now(), "
            "users_count = %s WHERE id = %s",
            (len(rows), run_id),
        )
    return run_id


def read(conn, query, user):
    found = conn.execute(query, {"u": user}).fetchall()
    return {r for r, _ in found}, [p for _, p in found]


def test_readers_see_the_old_or_the_new_set_never_a_mix(world):
    url, users, posts, rng = world
    writer = db.connect(url, autocommit=True)
    old = new_run_rows(users, posts, rng)
    old_run = write_run(writer, old)
    new = new_run_rows(users, posts, rng)

    observations = {"old": 0, "new": 0, "naive_partial": 0}
    problems: list[str] = []
    writer_done = threading.Event()

    def reader():
        conn = db.connect(url, autocommit=True)
        extra_reads = 200
        while extra_reads > 0:
            if writer_done.is_set():
                extra_reads -= 1
            u = rng.choice(users)
            runs, ranked = read(conn, CURRENT, u)
            if len(runs) != 1:
                problems.append(f"user {u}: rows of runs {runs}")
                continue
            (run,) = runs
            if run == old_run and ranked == old[u]:
                observations["old"] += 1
            elif run > old_run and ranked == new[u]:
                observations["new"] += 1
            else:
                problems.append(f"user {u}: run {run} with {len(ranked)} rows matches no full set")
            naive_runs, naive_ranked = read(conn, NAIVE, u)
            if naive_runs and naive_runs != {old_run} and len(naive_ranked) < PER_USER:
                observations["naive_partial"] += 1
        conn.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        new_run = write_run(writer, new, chunks=4, pause=0.15)
    finally:
        writer_done.set()
        for t in threads:
            t.join(timeout=60)
        writer.close()

    assert not problems, problems[:5]
    assert observations["old"] > 0 and observations["new"] > 0, observations
    # The race was real: a reader ignoring the run status saw half-written sets meanwhile.
    assert observations["naive_partial"] > 0, observations
    with db.connect(url) as conn:
        for u in users:
            assert read(conn, CURRENT, u) == ({new_run}, new[u])


def test_a_run_that_never_completes_or_fails_stays_invisible(world):
    url, users, posts, rng = world
    with db.connect(url, autocommit=True) as conn:
        good = new_run_rows(users, posts, rng)
        good_run = write_run(conn, good)
        # A run that died half-way: rows committed, status still 'building'.
        dead_run = write_run(conn, new_run_rows(users, posts, rng), chunks=2, complete=False)
        for u in users:
            assert read(conn, CURRENT, u) == ({good_run}, good[u])
        conn.execute("UPDATE recommendation_runs SET status = 'failed' WHERE id = %s", (dead_run,))
        for u in users:
            assert read(conn, CURRENT, u) == ({good_run}, good[u])
        # Cleaning up a failed run removes its rows (ON DELETE CASCADE) and nothing else.
        conn.execute("DELETE FROM recommendation_runs WHERE id = %s", (dead_run,))
        assert conn.execute("SELECT count(*) FROM user_recommendations").fetchone()[0] == N_USERS * PER_USER


def test_a_shard_run_replaces_only_the_users_it_covers(world):
    url, users, posts, rng = world
    with db.connect(url, autocommit=True) as conn:
        everyone = new_run_rows(users, posts, rng)
        full_run = write_run(conn, everyone)
        covered = users[: N_USERS // 2]
        shard = new_run_rows(covered, posts, rng)
        shard_run = write_run(conn, shard)
        for u in users:
            if u in shard:
                assert read(conn, CURRENT, u) == ({shard_run}, shard[u])
            else:
                assert read(conn, CURRENT, u) == ({full_run}, everyone[u])
        # A user with no complete run at all gets nothing (the API then falls back).
        stranger = uuid.uuid4()
        conn.execute("INSERT INTO users (id, username) VALUES (%s, 'no_recs')", (stranger,))
        assert conn.execute("SELECT current_recommendation_run(%s)", (stranger,)).fetchone()[0] is None
