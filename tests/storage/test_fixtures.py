"""The shared fixtures of tests/conftest.py do what other suites rely on: the session database is
a fresh, migrated database that DATABASE_URL points at (never the user's), and every Redis key
under a test's prefix is gone after that test."""

from __future__ import annotations

import os

from feedrank import db


def test_the_session_database_is_fresh_migrated_and_in_database_url(database_url, postgres_server_url):
    name = db.database_name(database_url)
    assert name.startswith("feedrank_test_") and name != db.database_name(postgres_server_url)
    assert os.environ["DATABASE_URL"] == database_url
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM refinery_schema_history").fetchone()[0] >= 2


def test_keys_under_a_test_prefix_exist_during_the_test_and_are_gone_after_it(redis_client, redis_key_prefixes):
    # `redis_prefix` is this context manager around each test; driven by hand here so that one
    # test sees both sides of the clean-up.
    with redis_key_prefixes() as prefix:
        assert prefix.startswith("feedrank_test_") and prefix.endswith(":")
        for i in range(2_500):  # more than one SCAN/UNLINK batch
            redis_client.set(f"{prefix}recommendations:{i}", b"x")
        redis_client.set(f"{prefix}glob*[chars]?", b"x")
        assert len(list(redis_client.scan_iter(match=prefix + "*", count=1000))) == 2_501
        neighbour = f"{prefix[:-1]}x:kept"  # shares the prefix's text but not the prefix
        redis_client.set(neighbour, b"x")
    try:
        assert list(redis_client.scan_iter(match=prefix + "*", count=1000)) == []
        assert redis_client.get(neighbour) == b"x"
    finally:
        redis_client.delete(neighbour)


def test_each_test_gets_its_own_redis_prefix(redis_prefix, redis_key_prefixes):
    with redis_key_prefixes() as other:
        assert other != redis_prefix and other.startswith("feedrank_test_")
