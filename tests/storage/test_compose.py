"""docker-compose.yml runs the same system as a local run: PostgreSQL 16 and Redis 7 with health
checks and named volumes, the API after the migrations, the Dagster webserver and daemon sharing
one DAGSTER_HOME, all with the same environment variables; and `docker compose config` accepts it
(there is no Docker engine on these machines, so nothing is started)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True
    ).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_services_images_health_checks_and_volumes(spec):
    services = spec["services"]
    assert {"postgres", "redis", "migrate", "api", "dagster-webserver", "dagster-daemon"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis", "api", "dagster-webserver", "dagster-daemon"):
        assert "test" in services[name]["healthcheck"], name
    assert set(spec["volumes"]) >= {"postgres_data", "redis_data", "dagster_home"}
    # Webserver and daemon share one instance (runs, schedules, sensors).
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "dagster_home:/opt/dagster/home" in services[name]["volumes"]
        assert services[name]["environment"]["DAGSTER_HOME"] == "/opt/dagster/home"
    # The API starts after the schema is applied and the stores are healthy.
    deps = services["api"]["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["feedrank-api", "migrate"]
    for dockerfile in {s["build"]["dockerfile"] for s in services.values() if "build" in s}:
        assert (ROOT / dockerfile).is_file(), dockerfile


def test_every_feedrank_service_gets_the_same_environment(spec):
    services = spec["services"]
    for name in ("migrate", "api", "dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"] == "postgres://postgres@postgres:5432/feedrank", name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
    # Published ports stay on loopback: the database trusts its clients.
    for name in ("postgres", "redis", "api", "dagster-webserver"):
        assert all(p.startswith("127.0.0.1:") for p in spec["services"][name]["ports"]), name


def test_docker_compose_config_validates():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    done = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
