"""The shared fixtures of tests/conftest.py do what other suites rely on: the session database is
a fresh, migrated database that DATABASE_URL points at (never the user's), and every Redis key
under a test's prefix is gone after that test."""

from __future__ import annotations

import os

from feedrank import db

_seen: dict[str, str] = {}


def test_the_session_database_is_fresh_migrated_and_in_database_url(database_url, postgres_server_url):
    name = db.database_name(database_url)
    assert name.startswith("feedrank_test_") and name != db.database_name(postgres_server_url)
    assert os.environ["DATABASE_URL"] == database_url
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM refinery_schema_history").fetchone()[0] >= 2


def test_keys_under_the_redis_prefix_exist_during_the_test(redis_client, redis_prefix):
    assert redis_prefix.startswith("feedrank_test_") and redis_prefix.endswith(":")
    for i in range(2_500):  # more than one SCAN/UNLINK batch
        redis_client.set(f"{redis_prefix}recommendations:{i}", b"x")
    _seen["prefix"] = redis_prefix


def test_keys_under_the_redis_prefix_are_gone_after_the_test(redis_client, redis_prefix):
    previous = _seen["prefix"]  # set by the test above, which pytest runs first
    assert previous != redis_prefix
    assert list(redis_client.scan_iter(match=previous + "*", count=1000)) == []
