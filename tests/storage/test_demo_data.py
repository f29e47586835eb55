"""`feedrank demo-data`: the same seed gives the same rows (UUIDs included), a different seed other
rows; it refuses a non-empty database unless --reset; the synthetic set has the planted structure a
recommender can learn (topic-aware ranking beats random on held-out likes) in realistic
proportions and time order; MovieLens loads as users, posts and interactions with its ratings and
timestamps kept."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedrank import db, demo_data
from feedrank.cli import main

# The shared data sits beside the repository (never copied into it).
MOVIELENS = Path(
    os.environ.get("FEEDRANK_MOVIELENS_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens-latest-small"
)
END = "2026-06-01T12:00:00+00:00"
END_DT = dt.datetime.fromisoformat(END)
SMALL = ["--users", "300", "--posts", "1500", "--interactions", "20000", "--end-time", END]

TABLE_DIGEST = """
SELECT (SELECT md5(string_agg(u::text, '|' ORDER BY id)) FROM users u),
       (SELECT md5(string_agg(p::text, '|' ORDER BY id)) FROM posts p),
       (SELECT md5(string_agg(i::text, '|' ORDER BY id)) FROM user_interactions i)
"""


def load(url, *args):
    return main(["demo-data", "--database-url", url, *args])


def digest(url):
    with db.connect(url) as conn:
        return conn.execute(TABLE_DIGEST).fetchone()


@pytest.fixture
def second_database(postgres_server_url, api_binary):
    with db.temporary_database(postgres_server_url, prefix="feedrank_test_f", binary=api_binary) as url:
        yield url


def test_the_same_seed_loads_the_same_rows_and_another_seed_other_rows(
    fresh_database_url, second_database, capsys
):
    assert load(fresh_database_url, "--seed", "11", *SMALL) == 0
    assert load(second_database, "--seed", "11", *SMALL) == 0
    first = digest(fresh_database_url)
    assert None not in first
    assert digest(second_database) == first
    assert load(second_database, "--seed", "12", "--reset", *SMALL) == 0
    other = digest(second_database)
    assert all(a != b for a, b in zip(first, other))
    out = capsys.readouterr().out
    assert "interactions" in out and "20,000" in out


def test_generation_is_deterministic_in_memory_and_sizes_are_exact():
    a = demo_data.generate_synthetic(5, 200, 800, 12_345, END_DT)
    b = demo_data.generate_synthetic(5, 200, 800, 12_345, END_DT)
    for name in ("user_ids", "post_ids", "interaction_ids", "interaction_user", "interaction_post",
                 "interaction_type", "interaction_created_at", "user_topics"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.post_content == b.post_content and a.usernames == b.usernames
    assert (a.n_users, a.n_posts, a.n_interactions) == (200, 800, 12_345)
    # Deferred generation (what the CLI does, overlapping the load) gives the same rows.
    deferred = demo_data.generate_synthetic(5, 200, 800, 12_345, END_DT, defer_interactions=True)
    assert deferred.n_interactions == 0 and deferred.pending_interactions is not None
    deferred.pending_interactions()
    for name in ("interaction_ids", "interaction_user", "interaction_post", "interaction_type",
                 "interaction_created_at"):
        assert np.array_equal(getattr(a, name), getattr(deferred, name)), name
    # More interactions do not change the users or posts of the same seed.
    c = demo_data.generate_synthetic(5, 200, 800, 20_000, END_DT)
    assert np.array_equal(a.user_ids, c.user_ids) and a.post_content == c.post_content
    # UUIDs are valid and unique; usernames unique.
    ids = demo_data.uuid_strings(a.interaction_ids)
    assert len(set(ids)) == len(ids) and all(i[14] == "7" for i in ids)
    assert len(set(a.usernames)) == len(a.usernames)


def test_a_non_empty_database_is_refused_unless_reset(fresh_database_url, capsys):
    assert load(fresh_database_url, "--seed", "1", *SMALL) == 0
    before = digest(fresh_database_url)
    assert load(fresh_database_url, "--seed", "2", *SMALL) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--reset" in err
    assert digest(fresh_database_url) == before
    # --reset replaces everything, recommendations included.
    with db.connect(fresh_database_url) as conn:
        conn.execute("INSERT INTO recommendation_runs (status) VALUES ('complete')")
    assert load(fresh_database_url, "--seed", "2", "--reset", *SMALL) == 0
    with db.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM recommendation_runs").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM user_interactions").fetchone()[0] == 20_000


def test_the_load_keeps_every_index_and_constraint(fresh_database_url):
    query = """
        SELECT 'c:' || conname || pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid IN ('users'::regclass, 'posts'::regclass, 'user_interactions'::regclass)
        UNION ALL SELECT 'i:' || indexdef FROM pg_indexes
        WHERE tablename IN ('users', 'posts', 'user_interactions') ORDER BY 1"""
    with db.connect(fresh_database_url) as conn:
        before = conn.execute(query).fetchall()
    assert load(fresh_database_url, "--seed", "3", *SMALL) == 0
    with db.connect(fresh_database_url) as conn:
        assert conn.execute(query).fetchall() == before
        # ... and the loaded rows satisfy the foreign keys.
        orphans = conn.execute("""
            SELECT count(*) FROM user_interactions i
            LEFT JOIN users u ON u.id = i.user_id LEFT JOIN posts p ON p.id = i.post_id
            WHERE u.id IS NULL OR p.id IS NULL""").fetchone()[0]
        assert orphans == 0


def test_bad_arguments_are_named(fresh_database_url, capsys):
    assert load(fresh_database_url, "--users", "0") == 2
    assert "--users" in capsys.readouterr().err
    assert load(fresh_database_url, "--movielens", "/nonexistent/movielens") == 2
    assert "ratings.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo-data", "--end-time", "yesterday"])
    assert "--end-time" in capsys.readouterr().err


def test_the_console_entry_point_runs(fresh_database_url):
    done = subprocess.run(
        [sys.executable, "-m", "feedrank.cli", "demo-data", "--database-url", fresh_database_url,
         "--users", "20", "--posts", "50", "--interactions", "300"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "demo-data: loaded synthetic(seed=42)" in done.stdout


def test_synthetic_data_has_planted_structure_in_realistic_proportions_and_order():
    ds = demo_data.generate_synthetic(9, 1_000, 4_000, 150_000, END_DT)
    end_us = int(END_DT.timestamp() * 1e6)
    share = np.bincount(ds.interaction_type, minlength=5) / ds.n_interactions
    view, click, like, share_, hide = share
    assert view > 0.5 and view > click > share_ and like > share_ and min(share) > 0.005, share
    # Time: posts in the 30 days before the end, every event after its post and before the end,
    # users created before the window, events stored in time order.
    assert ds.post_created_at.min() >= end_us - 30 * 86_400_000_000 and ds.post_created_at.max() < end_us
    assert (ds.interaction_created_at >= ds.post_created_at[ds.interaction_post]).all()
    assert ds.interaction_created_at.max() < end_us
    assert (np.diff(ds.interaction_created_at) >= 0).all()
    assert ds.user_created_at.max() < end_us - 30 * 86_400_000_000
    # Activity follows a power law: the busiest 10% of users make far more than 10% of events.
    per_user = np.sort(np.bincount(ds.interaction_user, minlength=ds.n_users))[::-1]
    assert per_user[: ds.n_users // 10].sum() > 0.3 * ds.n_interactions
    assert (per_user == 0).any(), "some users never interact (cold start)"

    # A recommender that learns each user's topics from the first 80% of events beats random at
    # finding the posts they like in the last 20%.
    cut = int(0.8 * ds.n_interactions)
    liked = ds.interaction_type == demo_data.LIKE
    train, test = slice(0, cut), slice(cut, None)
    profile = np.zeros((ds.n_users, demo_data.N_TOPICS))
    positive = ds.interaction_type[train] != demo_data.HIDE
    np.add.at(profile, (ds.interaction_user[train][positive],
                        ds.post_topics[ds.interaction_post[train]][positive]), 1.0)
    test_users = np.unique(ds.interaction_user[test][liked[test]])
    rng = np.random.default_rng(0)
    hits_model = hits_random = 0
    for u in test_users[:300]:
        truth = set(ds.interaction_post[test][(ds.interaction_user[test] == u) & liked[test]].tolist())
        scores = profile[u][ds.post_topics] + rng.random(ds.n_posts) * 1e-6
        top_model = set(np.argpartition(-scores, 50)[:50].tolist())
        top_random = set(rng.choice(ds.n_posts, 50, replace=False).tolist())
        hits_model += len(truth & top_model)
        hits_random += len(truth & top_random)
    assert hits_model > 3 * max(hits_random, 1), (hits_model, hits_random)


def test_movielens_loads_users_posts_and_ratings(fresh_database_url):
    assert MOVIELENS.is_dir(), f"{MOVIELENS} missing"
    assert load(fresh_database_url, "--movielens", str(MOVIELENS)) == 0
    ratings = pl.read_csv(MOVIELENS / "ratings.csv")
    movies = pl.read_csv(MOVIELENS / "movies.csv")
    with db.connect(fresh_database_url) as conn:
        n_users = conn.execute("SELECT count(*) FROM users WHERE username LIKE 'ml_user_%%'").fetchone()[0]
        assert n_users == ratings["userId"].n_unique()
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == movies.height
        kinds = dict(conn.execute(
            "SELECT interaction_type, count(*) FROM user_interactions GROUP BY 1").fetchall())
        assert kinds == {"like": int((ratings["rating"] >= 4).sum()),
                         "view": int((ratings["rating"] < 4).sum())}
        # One rating, followed through: user, movie, type, timestamp and rating kept.
        r = ratings.row(0, named=True)
        title = movies.filter(pl.col("movieId") == r["movieId"])["title"][0]
        row = conn.execute("""
            SELECT i.interaction_type, extract(epoch FROM i.created_at)::bigint, i.metadata, p.content
            FROM user_interactions i JOIN users u ON u.id = i.user_id JOIN posts p ON p.id = i.post_id
            WHERE u.username = %s AND p.content LIKE %s""",
            (f"ml_user_{r['userId']}", title.replace("%", r"\%") + "%")).fetchone()
        assert row[0] == ("like" if r["rating"] >= 4 else "view")
        assert row[1] == r["timestamp"]
        assert row[2] == {"rating": r["rating"]}
        # Content carries title, genres and tags.
        toy = conn.execute("SELECT content FROM posts WHERE content LIKE 'Toy Story (1995)%%'").fetchone()[0]
        assert "Animation" in toy and "tags:" in toy and "pixar" in toy.lower()
        # No rater authored a movie (the author-diversity and own-post filters stay meaningful).
        own = conn.execute("""SELECT count(*) FROM user_interactions i JOIN posts p ON p.id = i.post_id
                              WHERE p.user_id = i.user_id""").fetchone()[0]
        assert own == 0


def test_a_table_of_the_app_that_references_users_is_left_alone(fresh_database_url):
    # Without --reset nothing outside feedrank's tables may be truncated, even when empty of
    # feedrank rows: the load still succeeds (without COPY FREEZE) and the app's table is intact.
    with db.connect(fresh_database_url) as conn:
        conn.execute("CREATE TABLE app_settings (user_id uuid REFERENCES users (id), theme text)")
        conn.execute("CREATE TABLE app_audit (note text)")
        conn.execute("INSERT INTO app_audit VALUES ('kept')")
    assert load(fresh_database_url, "--seed", "4", *SMALL) == 0
    with db.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT note FROM app_audit").fetchall() == [("kept",)]
        assert conn.execute("SELECT count(*) FROM user_interactions").fetchone()[0] == 20_000


def test_a_role_that_is_not_superuser_loads_with_validated_foreign_keys(fresh_database_url):
    # Without superuser rights the foreign keys cannot be skipped: they are dropped and added
    # back (validated) inside the load's transaction.
    role = f"feedrank_test_owner_{os.getpid()}"
    tables = "users, posts, user_interactions, user_recommendations, recommendation_runs"
    with db.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        try:
            # Owner of feedrank's tables, allowed to create indexes in the schema: the rights a
            # deployment's migration role has.
            conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
            for table in tables.split(", "):
                conn.execute(f"ALTER TABLE {table} OWNER TO {role}")
            role_url = fresh_database_url.replace("postgres://postgres@", f"postgres://{role}@", 1)
            assert role_url != fresh_database_url
            with db.connect(role_url) as as_role:
                assert as_role.execute("SELECT current_setting('is_superuser')").fetchone()[0] == "off"
            assert load(role_url, "--seed", "5", *SMALL) == 0
            fks = conn.execute("""
                SELECT conname, convalidated FROM pg_constraint
                WHERE conrelid IN ('posts'::regclass, 'user_interactions'::regclass) AND contype = 'f'
                ORDER BY 1""").fetchall()
            assert fks == [("posts_user_id_fkey", True), ("user_interactions_post_id_fkey", True),
                           ("user_interactions_user_id_fkey", True)]
            assert conn.execute("SELECT count(*) FROM user_interactions").fetchone()[0] == 20_000
        finally:
            conn.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_the_numpy_binary_copy_encoder_round_trips_nulls_and_variable_widths(db_conn):
    # The interactions' COPY stream is built by numpy, not psycopg: PostgreSQL must read back
    # exactly what was meant, including NULLs and values of different lengths in one column.
    rng = np.random.default_rng(3)
    n = 1_000
    ids = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    texts = [b"a", b"", b"hello", None, "żółw".encode()]
    codes = rng.integers(0, len(texts), n)
    table, lengths = demo_data._coded_table(texts)
    stamps = rng.integers(0, 10**15, n)
    db_conn.execute("CREATE TEMP TABLE enc (id uuid, t text, at timestamptz)")
    with db_conn.cursor().copy("COPY enc (id, t, at) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(demo_data._SIGNATURE)
        cp.write(demo_data.binary_copy_tuples(n, [
            ("fixed", ids),
            ("coded", codes, table, lengths),
            ("fixed", demo_data._be_bytes(stamps, ">i8")),
        ]))
        cp.write(demo_data._TRAILER)
    rows = db_conn.execute(
        "SELECT id::text, t, (extract(epoch FROM at - '2000-01-01 UTC') * 1e6)::bigint FROM enc"
    ).fetchall()
    assert [r[0] for r in rows] == demo_data.uuid_strings(ids)
    assert [r[1] for r in rows] == [None if texts[c] is None else texts[c].decode() for c in codes]
    assert [r[2] for r in rows] == stamps.tolist()
