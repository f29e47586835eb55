"""The schema is applied only by `feedrank-api migrate` (refinery): on an empty database it applies
every file in migrations/, a second run changes nothing, and an app database that already has its
own `users` and `posts` keeps them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feedrank import db

MIGRATIONS = sorted(
    (Path(__file__).resolve().parents[2] / "migrations").glob("V*__*.sql"),
    key=lambda p: int(re.match(r"V(\d+)__", p.name).group(1)),
)

SCHEMA_SNAPSHOT = """
SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
       || ' ' || coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'function', p.proname || '(' || pg_get_function_arguments(p.oid) || ')'
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
ORDER BY 1, 2
"""


@pytest.fixture
def empty_database(postgres_server_url):
    """A database with nothing in it (not migrated), dropped afterwards."""
    with db.temporary_database(postgres_server_url, prefix="feedrank_test_empty", migrated=False) as url:
        yield url


def _snapshot(url: str) -> list[tuple[str, str]]:
    with db.connect(url) as conn:
        return conn.execute(SCHEMA_SNAPSHOT).fetchall()


def test_migrations_apply_to_an_empty_database_then_are_a_noop(empty_database, api_binary):
    assert MIGRATIONS, "no migrations/V*__*.sql files found"
    first = db.migrate(empty_database, binary=api_binary)
    # Every migration file is applied, in version order.
    applied = re.findall(r"migrations: applied (V\d+__\S+)", first)
    assert [a.removesuffix(".sql") for a in applied] == [p.stem for p in MIGRATIONS], first

    with db.connect(empty_database) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        history = conn.execute(
            "SELECT version, name, checksum FROM refinery_schema_history ORDER BY version").fetchall()
    assert {"users", "posts", "user_interactions", "recommendation_runs",
            "user_recommendations"} <= tables
    assert len(history) == len(MIGRATIONS)
    before = _snapshot(empty_database)
    assert any("current_recommendation_run" in row[1] for row in before)

    second = db.migrate(empty_database, binary=api_binary)
    assert "schema is up to date" in second and "applied" not in second, second
    with db.connect(empty_database) as conn:
        assert conn.execute(
            "SELECT version, name, checksum FROM refinery_schema_history ORDER BY version"
        ).fetchall() == history
    assert _snapshot(empty_database) == before


def test_an_app_database_keeps_its_own_users_and_posts(empty_database, api_binary):
    # The social app created these first, with a column feedrank does not know about.
    with db.connect(empty_database) as conn:
        conn.execute("""
            CREATE TABLE users (id uuid PRIMARY KEY, username text NOT NULL UNIQUE,
                                display_name text, avatar_url text,
                                created_at timestamptz NOT NULL DEFAULT now(), email text);
            CREATE TABLE posts (id uuid PRIMARY KEY, user_id uuid NOT NULL REFERENCES users(id),
                                content text NOT NULL, media_urls text[] NOT NULL DEFAULT '{}',
                                created_at timestamptz NOT NULL DEFAULT now(),
                                updated_at timestamptz NOT NULL DEFAULT now());
            INSERT INTO users (id, username, email)
                VALUES ('00000000-0000-4000-8000-000000000001', 'alice', 'alice@example.com');
            INSERT INTO posts (id, user_id, content)
                VALUES ('00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-000000000001', 'hi');
        """)
    db.migrate(empty_database, binary=api_binary)
    with db.connect(empty_database) as conn:
        assert conn.execute("SELECT username, email FROM users").fetchall() == [("alice", "alice@example.com")]
        assert conn.execute("SELECT content FROM posts").fetchall() == [("hi",)]
        # feedrank's own tables now reference the app's rows.
        conn.execute("""INSERT INTO user_interactions (user_id, post_id, interaction_type)
                        VALUES ('00000000-0000-4000-8000-000000000001',
                                '00000000-0000-4000-8000-0000000000a1', 'like')""")


def test_migrate_reports_a_database_it_cannot_reach(api_binary):
    with pytest.raises(db.MigrationError, match="migrate failed"):
        db.migrate("postgres://postgres@127.0.0.1:1/nowhere", binary=api_binary)
