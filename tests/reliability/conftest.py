"""Fixtures of the reliability tests: a private stack (PostgreSQL cluster, Redis, the API binary)
per module or per test, never the machine's shared services, so that faults can be injected.

- ``live``: one stack per test module, seeded (users, posts, a complete recommendation run);
  for attacks and fuzzing, which do not break the services.
- ``fault_stack``: a fresh stack for one test, which may stop, kill, freeze or flush its services.

A missing tool (initdb, redis-server, the API binary) makes the test FAIL with the reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .stack import ApiServer, PrivatePostgres, PrivateRedis, Seed, migrate, seed


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: PrivateRedis
    api: ApiServer
    database_url: str
    prefix: str
    data: Seed

    @property
    def base(self) -> str:
        return self.api.base


def _stack(binary: Path, **api_env: str) -> Stack:
    try:
        pg = PrivatePostgres()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"cannot start a private PostgreSQL cluster: {e}", pytrace=False)
    try:
        redis = PrivateRedis()
    except Exception as e:  # noqa: BLE001
        pg.destroy()
        pytest.fail(f"cannot start a private Redis: {e}", pytrace=False)
    try:
        url = pg.create_database()
        migrate(url, binary)
        data = seed(url)
        prefix = f"rel_{secrets.token_hex(4)}:"
        api = ApiServer(url, redis.url, prefix, binary, **api_env)
    except Exception:
        redis.stop()
        pg.destroy()
        raise
    return Stack(pg, redis, api, url, prefix, data)


def _teardown(s: Stack) -> None:
    s.api.stop()
    s.redis.stop()
    s.pg.destroy()


@pytest.fixture(scope="module")
def live(api_binary: Path) -> Iterator[Stack]:
    s = _stack(api_binary, BODY_LIMIT_BYTES="65536", REQUEST_TIMEOUT_MS="3000")
    try:
        yield s
    finally:
        _teardown(s)


@pytest.fixture
def fault_stack(api_binary: Path) -> Iterator[Stack]:
    s = _stack(api_binary, PG_POOL_TIMEOUT_MS="1000", REDIS_TIMEOUT_MS="200", PG_POOL_SIZE="8")
    try:
        yield s
    finally:
        _teardown(s)
