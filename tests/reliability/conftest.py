"""Fixtures of the reliability tests: a private stack (PostgreSQL cluster, Redis, the API binary)
per module or per test, never the machine's shared services, so that faults can be injected.

- ``live``: one stack per test module, seeded (users, posts, a complete recommendation run);
  for attacks and fuzzing, which do not break the services.
- ``fault_stack``: a fresh stack for one test, which may stop, kill, freeze or flush its services.

The API binary comes from the shared ``api_binary`` fixture (tests/conftest.py: built when out of
date). A missing tool (initdb, redis-server) makes the test FAIL with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .stack import Stack, private_stack


@pytest.fixture(scope="module")
def live(api_binary: Path) -> Iterator[Stack]:
    with private_stack(api_binary, BODY_LIMIT_BYTES="65536", REQUEST_TIMEOUT_MS="3000") as s:
        yield s


@pytest.fixture
def fault_stack(api_binary: Path) -> Iterator[Stack]:
    with private_stack(api_binary, PG_POOL_TIMEOUT_MS="1000", REDIS_TIMEOUT_MS="200",
                       PG_POOL_SIZE="8") as s:
        yield s
