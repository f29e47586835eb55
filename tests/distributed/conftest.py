"""Fixtures of the distributed tests (`make test-distributed`; cluster.py says what each host is):

- ``s3``: moto's S3 server on loopback for the module, ``s3.new_bucket()`` for a test;
- ``vhost``: a RabbitMQ vhost for the module, deleted after;
- ``instance_db``: a PostgreSQL database for the Dagster instance's storage (runs, event log,
  schedules), dropped after; ``DAGSTER_POSTGRES_URL`` names it.

They fail, never skip, when RabbitMQ, the S3 server, ``ip netns`` or root is missing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedrank import db

from dagster_pipeline.local_services import S3Server, instance_url, rabbitmq_vhost, s3_server

from .cluster import REPO_ROOT


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with rabbitmq_vhost() as name:
        yield name


@pytest.fixture(scope="module")
def instance_db(postgres_server_url: str) -> Iterator[str]:
    """The name of an empty database for a Dagster instance; Dagster makes its tables there."""
    name = f"feedrank_test_dagster_{secrets.token_hex(4)}"
    db.create_database(name, postgres_server_url)
    try:
        yield name
    finally:
        db.drop_database(name, postgres_server_url)


@pytest.fixture
def dagster_home(tmp_path: Path, instance_db: str, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAGSTER_HOME with the project's deploy/dagster.yaml, on the test's instance database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", instance_url(postgres_server_url, instance_db))
    return home
