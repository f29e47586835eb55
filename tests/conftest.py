"""Shared pytest fixtures: real PostgreSQL and Redis, never a user's data.

- ``api_binary``: the ``feedrank-api`` binary, built (``cargo build --release -p feedrank-api``)
  once per session unless ``FEEDRANK_API_BIN`` names one.
- ``database_url``: a database created for this test session (random name), migrated with
  ``feedrank-api migrate``, dropped at the end. While it exists, ``DATABASE_URL`` in the
  environment points at it, so code that reads ``DATABASE_URL`` (and subprocesses) use it too.
- ``fresh_database_url``: the same, for one test only (an empty, migrated database).
- ``db_conn``: a psycopg connection to ``database_url``, closed after the test.
- ``redis_client`` / ``redis_prefix``: a Redis client for ``REDIS_URL`` and a key prefix unique to
  one test; every key under it is deleted afterwards (``redis_key_prefixes`` hands out more).

A test that needs PostgreSQL or Redis FAILS (never skips) when the service does not answer; the
message says how to start it (``scripts/services.sh up``).

Fast tests (``make test-fast``: ``pytest -m fast``) need no service: every test under
tests/python, and those marked ``@pytest.mark.fast`` (or ``pytestmark = pytest.mark.fast``). One
that asks for a service fixture stops the collection; one that connects to PostgreSQL (psycopg),
or opens a socket to PostgreSQL's, Redis's or RabbitMQ's port, fails, even where the code under
test swallows the error.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from feedrank import db

REPO_ROOT = Path(__file__).resolve().parents[1]

# The server URL before any fixture points DATABASE_URL at a test database.
_SERVER_URL = db.database_url()

# --- the fast tests: no service -------------------------------------------------------------------

FAST_DIRECTORIES = (REPO_ROOT / "tests" / "python",)
SERVICE_PORTS = {5432: "PostgreSQL", 6379: "Redis", 5672: "RabbitMQ"}
# The fixtures that reach a service (here and in the suites' own conftest files).
SERVICE_FIXTURES = {
    "postgres_server_url", "api_binary", "database_url", "fresh_database_url", "db_conn",
    "redis_client", "redis_prefix", "on_load_tables", "hold_load_rows", "demo_db", "pipeline_resources", "sharded_env",
}
_service_use = pytest.StashKey[list]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(d) for d in FAST_DIRECTORIES):
            item.add_marker(pytest.mark.fast)
        needs = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("fast") and needs:
            raise pytest.UsageError(f"{item.nodeid} is a fast test but uses {sorted(needs)}, which need a service")


class _ServiceGuard:
    """While a fast test is set up and runs: psycopg connections and sockets to a service's port
    raise, and are recorded so that the test fails even if the error is caught."""

    def __init__(self, used: list) -> None:
        self.used = used
        self.originals = []

    def _refuse(self, what: str) -> None:
        self.used.append(what)
        raise ConnectionRefusedError(f"a fast test may not use {what}")

    def __enter__(self) -> "_ServiceGuard":
        guard = self
        for cls, name in ((socket.socket, "connect"), (socket.socket, "connect_ex")):
            original = getattr(cls, name)

            def checked(sock, address, _original=original):
                if sock.family in (socket.AF_INET, socket.AF_INET6) and address[1] in SERVICE_PORTS:
                    guard._refuse(f"{SERVICE_PORTS[address[1]]} ({address[0]}:{address[1]})")
                return _original(sock, address)

            self.originals.append((cls, name, original))
            setattr(cls, name, checked)
        # every psycopg connection (sync or async, psycopg.connect included) starts here; libpq
        # opens its socket in C, out of the socket module's sight
        base = psycopg.BaseConnection
        self.originals.append((base, "_connect_gen", base.__dict__["_connect_gen"]))
        base._connect_gen = classmethod(lambda cls, *a, **kw: guard._refuse("PostgreSQL (psycopg.connect)"))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, original in reversed(self.originals):
            setattr(cls, name, original)


def _guarded(item: pytest.Item):
    if not item.get_closest_marker("fast"):
        return (yield)
    with _ServiceGuard(item.stash.setdefault(_service_use, [])):
        return (yield)


# Set-up and call only: a fast test's teardown may also tear down the session's service
# fixtures that earlier tests set up (when it is the last test to run).
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    used = item.stash.get(_service_use, [])
    if report.when == "call" and used and report.passed:
        report.outcome = "failed"
        report.longrepr = f"a fast test used a service: {', '.join(used)} (mark it otherwise, or use no service)"
    return report


def _fail(what: str, url: str, error: Exception) -> None:
    pytest.fail(
        f"{what} is not reachable at {url}: {error}\n"
        f"Start the services with `scripts/services.sh up` (or set DATABASE_URL / REDIS_URL).",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The URL of the PostgreSQL server the tests create their databases on (``DATABASE_URL`` as
    it was at start-up, default ``postgres://postgres@127.0.0.1:5432/feedrank``), checked to
    answer. Its own database is never written to."""
    try:
        with db.connect(db.with_database(_SERVER_URL, "postgres"), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        _fail("PostgreSQL", _SERVER_URL, e)
    return _SERVER_URL


@pytest.fixture(scope="session")
def api_binary() -> Path:
    """The ``feedrank-api`` binary, up to date with the sources (cargo does nothing when it is)."""
    explicit = os.environ.get("FEEDRANK_API_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            pytest.fail(f"FEEDRANK_API_BIN={explicit} is not a file", pytrace=False)
        return path
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo is not installed: cannot build feedrank-api", pytrace=False)
    done = subprocess.run(
        [cargo, "build", "--release", "-p", "feedrank-api", "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"building feedrank-api failed:\n{done.stderr}", pytrace=False)
    return REPO_ROOT / "target" / "release" / "feedrank-api"


def _new_database(server_url: str, binary: Path, label: str) -> tuple[str, str]:
    name = f"feedrank_test_{label}_{secrets.token_hex(4)}"
    url = db.create_database(name, server_url)
    try:
        db.migrate(url, binary=binary)
    except Exception:
        db.drop_database(name, server_url)
        raise
    return name, url


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str, api_binary: Path) -> Iterator[str]:
    """A migrated database for the whole test session; ``DATABASE_URL`` points at it meanwhile."""
    name, url = _new_database(postgres_server_url, api_binary, "s")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", url)
        try:
            yield url
        finally:
            db.drop_database(name, postgres_server_url)


@pytest.fixture
def fresh_database_url(postgres_server_url: str, api_binary: Path) -> Iterator[str]:
    """An empty, migrated database for one test, dropped after it."""
    name, url = _new_database(postgres_server_url, api_binary, "f")
    try:
        yield url
    finally:
        db.drop_database(name, postgres_server_url)


@pytest.fixture
def db_conn(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to the session database; rolled back and closed after the test."""
    conn = db.connect(database_url)
    try:
        yield conn
    finally:
        if not conn.closed:
            conn.rollback()
            conn.close()


@pytest.fixture(scope="session")
def redis_client():
    """A Redis client for ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``), checked to answer."""
    import redis

    url = db.redis_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as e:
        _fail("Redis", url, e)
    yield client
    client.close()


@contextmanager
def redis_key_prefix(client) -> Iterator[str]:
    """A key prefix unique to its block (``feedrank_test_<hex>:``); every key under it is
    deleted when the block ends, however it ends."""
    prefix = f"feedrank_test_{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        # Keys may contain glob characters in the part after the prefix, never in the prefix.
        batch = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)


@pytest.fixture
def redis_prefix(redis_client) -> Iterator[str]:
    """A key prefix unique to this test (``redis_key_prefix``); its keys are deleted after."""
    with redis_key_prefix(redis_client) as prefix:
        yield prefix


@pytest.fixture
def redis_key_prefixes(redis_client):
    """``redis_key_prefixes()``: the context manager behind ``redis_prefix``, for a test that
    checks the clean-up itself."""
    return lambda: redis_key_prefix(redis_client)


@pytest.fixture
def on_load_tables():
    """``install(url, function)``: from now on, every table the pipeline creates to load a run's
    rows (``dagster_pipeline.swap.load_table``) gets ``BEFORE INSERT ... FOR EACH ROW EXECUTE
    FUNCTION function()`` (an event trigger adds it when the table is created), so that a test can
    make a real fault happen inside the pipeline's COPY. Returns a callable that stops it; whatever
    is still installed is removed at the end of the test."""
    installed: list[tuple[str, str]] = []

    def remove(url: str, function: str) -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f"DROP EVENT TRIGGER IF EXISTS add_{function}")
        if (url, function) in installed:
            installed.remove((url, function))

    def install(url: str, function: str):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(
                f"CREATE OR REPLACE FUNCTION add_{function}() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
                "DECLARE r record; BEGIN "
                "FOR r IN SELECT object_identity FROM pg_event_trigger_ddl_commands() "
                "WHERE command_tag = 'CREATE TABLE' LOOP "
                "IF r.object_identity LIKE 'public.user\\_recommendations\\_run\\_%' THEN "
                f"EXECUTE format('CREATE TRIGGER {function} BEFORE INSERT ON %s "
                f"FOR EACH ROW EXECUTE FUNCTION {function}()', r.object_identity); "
                "END IF; END LOOP; END $$"
            )
            c.execute(
                f"CREATE EVENT TRIGGER add_{function} ON ddl_command_end "
                f"WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION add_{function}()"
            )
        installed.append((url, function))
        return lambda: remove(url, function)

    yield install
    for url, function in list(installed):
        remove(url, function)


class HeldCopy:
    """What ``hold_load_rows`` returns: ``blocked()`` names a COPY waiting at the held lock
    (``(pid, application_name, query)``, or None), ``release()`` lets the writes go on."""

    def __init__(self, url: str, blocker: psycopg.Connection, stop) -> None:
        self.url, self._blocker, self._stop = url, blocker, stop

    def blocked(self) -> tuple[int, str, str] | None:
        with psycopg.connect(self.url) as c:
            return c.execute(
                "SELECT pid, application_name, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'COPY %%' AND query LIKE '%%user_recommendations_run_%%' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()

    def release(self) -> None:
        if not self._blocker.closed:
            self._blocker.rollback()
            self._blocker.close()
            self._stop()


@pytest.fixture
def hold_load_rows(on_load_tables):
    """``held = hold(url, condition)``: from now on, the pipeline's COPY into a run's load table
    (``on_load_tables``) waits, at every row whose number ``n`` (counted over all load tables from 1)
    meets ``condition`` (SQL over ``n``, e.g. ``n > 1000``), on an advisory lock held until
    ``held.release()`` (a :class:`HeldCopy`); so that a test can kill or inspect a pipeline in the
    middle of a write. Whatever is still held is released at the end of the test."""
    held: list[HeldCopy] = []

    def hold(url: str, condition: str) -> HeldCopy:
        key = secrets.randbelow(2**31)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE SEQUENCE IF NOT EXISTS hold_copy_rows")
            c.execute(
                "CREATE OR REPLACE FUNCTION hold_copy() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"DECLARE n bigint := nextval('hold_copy_rows'); BEGIN IF {condition} THEN "
                f"PERFORM pg_advisory_xact_lock_shared({key}); END IF; RETURN NEW; END $$"
            )
        stop = on_load_tables(url, "hold_copy")
        blocker = psycopg.connect(url)
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        held.append(HeldCopy(url, blocker, stop))
        return held[-1]

    yield hold
    for h in held:
        h.release()
