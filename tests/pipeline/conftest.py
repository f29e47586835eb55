"""Fixtures of the pipeline tests that run the graph against the services (graph_runs.py holds
what they use): ``demo_db``, a fresh migrated database with the demo data, and
``pipeline_resources``, the pipeline's resources pointed at it and at a test-only Redis key
prefix. The fast layer (test_assets.py) needs neither.

The shared fixtures (``fresh_database_url``, ``redis_prefix``, ``redis_client``) come from
tests/conftest.py.
"""

from pathlib import Path

import pytest
from graph_runs import DemoData, load_demo_data, make_resources


@pytest.fixture
def demo_db(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> DemoData:
    """A fresh migrated database with the demo data; DATABASE_URL points at it."""
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    return load_demo_data(fresh_database_url)


@pytest.fixture
def pipeline_resources(demo_db: DemoData, redis_prefix: str, tmp_path: Path) -> dict:
    return make_resources(demo_db.url, redis_prefix, tmp_path / "storage")
