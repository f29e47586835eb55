"""docker-compose.yml runs the same system as a local run: PostgreSQL 16 and Redis 7 with health
checks and named volumes, the API after the migrations, the Dagster webserver and daemon sharing
one DAGSTER_HOME, all with the same environment variables; and it is a valid Compose file.

There is no Docker engine (nor compose plugin) on these machines, so nothing is started and
`docker compose config` cannot run here: the file is validated against the Compose
Specification's JSON schema, as vendored by `check-jsonschema` (requirements-dev.txt), plus the
references between its parts that a schema cannot express. A missing validator is a failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which(
        "check-jsonschema"
    )
    if found is None:
        pytest.fail("check-jsonschema is not installed: `make venv` installs requirements-dev.txt",
                    pytrace=False)
    return found


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, cwd=ROOT,
    )


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


def test_the_compose_file_is_valid_against_the_compose_specification(tmp_path):
    done = _validate(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    # The validator does reject what the specification forbids (so its "ok" above means something).
    broken = COMPOSE.read_text().replace("condition: service_completed_successfully",
                                         "condition: service_finished", 1)
    assert broken != COMPOSE.read_text()
    (tmp_path / "docker-compose.yml").write_text(broken)
    refused = _validate(tmp_path / "docker-compose.yml")
    assert refused.returncode != 0 and "service_finished" in refused.stdout + refused.stderr


def test_every_reference_names_something_the_file_defines(spec):
    services = spec["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on an undefined service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "~")):  # a named volume, not a bind mount
                assert source in spec["volumes"], f"{name} uses an undeclared volume {source}"
        if "image" not in service:
            assert "build" in service, f"{name} has neither an image nor a build"
