"""`scripts/services.sh up` is idempotent: with services that already answer it only creates the
database when missing, and says so; run again it changes nothing and starts nothing. Where nothing answers
it starts a project-local PostgreSQL cluster (trust on loopback) and redis-server from the Debian
packages, which a second `up` reuses and `down` stops; it never stops services it did not start.
Bad URLs get a clear message."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from feedrank import db

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def services(command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_uses_running_services_creates_the_database_once_and_starts_nothing(postgres_server_url, redis_client):
    name = f"feedrank_test_svc_{secrets.token_hex(4)}"
    url = db.with_database(postgres_server_url, name)
    try:
        first = services("up", DATABASE_URL=url)
        assert first.returncode == 0, first.stderr
        assert f"created database {name}" in first.stdout
        assert db.database_exists(name, postgres_server_url)

        second = services("up", DATABASE_URL=url)
        assert second.returncode == 0, second.stderr
        assert f"database {name} exists" in second.stdout and "created" not in second.stdout
        assert "Redis answers" in second.stdout
        assert "starting" not in first.stdout + second.stdout, first.stdout + second.stdout

        status = services("status", DATABASE_URL=url)
        assert status.returncode == 0 and "PostgreSQL: up" in status.stdout

        # `down` leaves services it did not start alone.
        with tempfile.TemporaryDirectory() as state:
            down = services("down", DATABASE_URL=url, FEEDRANK_DATA_DIR=state)
        assert down.returncode == 0 and "left as it is" in down.stdout
        assert services("status", DATABASE_URL=url).returncode == 0
    finally:
        db.drop_database(name, postgres_server_url)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DATABASE_URL": "mysql://root@127.0.0.1/feedrank"}, "DATABASE_URL must be a postgres:// URL"),
        ({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/bad-name"}, "not a plain identifier"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL must be a redis:// URL"),
        ({"DATABASE_URL": "postgres://postgres@db.invalid:5432/feedrank"}, "not this machine"),
    ],
)
def test_bad_or_remote_urls_get_a_clear_message(env, message, redis_client):
    done = services("up", **env)
    assert done.returncode == 1
    assert message in done.stderr


def test_usage_is_printed_for_an_unknown_command():
    done = services("restart")
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.slow
def test_up_starts_project_local_services_where_nothing_answers(postgres_server_url):
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not bindir or shutil.which("redis-server") is None:
        pytest.fail("this test needs the Debian postgresql and redis-server packages "
                    "(scripts/services.sh up installs them on a fresh machine)")
    # Readable by the `postgres` user, who owns the cluster when the tests run as root.
    data = Path(tempfile.mkdtemp(prefix="feedrank-services-test-"))
    data.chmod(0o755)
    env = {
        "FEEDRANK_DATA_DIR": str(data),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/feedrank_local",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    try:
        first = services("up", **env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "project-local PostgreSQL cluster" in first.stdout
        assert "created database feedrank_local" in first.stdout
        assert "Redis started" in first.stdout
        with db.connect(env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "feedrank_local"

        second = services("up", **env)
        assert second.returncode == 0, second.stderr
        assert "starting" not in second.stdout and "database feedrank_local exists" in second.stdout

        down = services("down", **env)
        assert down.returncode == 0 and "stopping the project-local PostgreSQL" in down.stdout
        status = services("status", **env)
        assert status.returncode == 1 and "DOWN" in status.stdout

        # Started again from the same cluster: the database is still there.
        third = services("up", **env)
        assert third.returncode == 0 and "database feedrank_local exists" in third.stdout
    finally:
        services("down", **env)
        shutil.rmtree(data, ignore_errors=True)
