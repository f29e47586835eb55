"""Small shared helpers for PostgreSQL: where the database is, how to connect, throw-away databases,
and the one way to apply the schema (``feedrank-api migrate``).

Used by ``feedrank demo-data``, the Dagster pipeline and the test fixtures, so that all of them
agree on the defaults and on how the schema gets applied::

    from feedrank import db

    with db.connect() as conn:                      # DATABASE_URL or the project default
        conn.execute("SELECT 1")

    with db.temporary_database() as url:            # created, migrated, dropped afterwards
        db.connect(url).close()

Nothing here applies SQL files itself: migrations are applied only by the API binary's refinery
runner (``api/src/migrate.rs``), which records what it applied and is safe to run twice.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "MigrationError",
    "api_binary",
    "connect",
    "create_database",
    "database_exists",
    "database_name",
    "database_url",
    "drop_database",
    "migrate",
    "redis_url",
    "repo_root",
    "temporary_database",
    "with_database",
]

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/feedrank"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Database names we create are plain identifiers; anything else is refused rather than quoted
# into something surprising.
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    """``feedrank-api migrate`` could not be run or reported a failure."""


def database_url() -> str:
    """``DATABASE_URL`` from the environment, else the project default."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def redis_url() -> str:
    """``REDIS_URL`` from the environment, else the project default."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def repo_root() -> Path:
    """The repository root (this file is ``python/feedrank/db.py``)."""
    return Path(__file__).resolve().parents[2]


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    """A psycopg connection to ``url`` (default: :func:`database_url`).

    Keyword arguments go to :func:`psycopg.connect` (e.g. ``autocommit=True``). A connection made
    here fails within 10 s instead of hanging when the server does not answer.
    """
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(url or database_url(), **kwargs)


def database_name(url: str | None = None) -> str:
    """The database name a URL (or key=value conninfo) points at."""
    params = conninfo_to_dict(url or database_url())
    return params.get("dbname") or params.get("user") or os.environ.get("USER", "postgres")


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname``; keeps the URL form when given a URL."""
    _check_name(dbname)
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    return make_conninfo(url, dbname=dbname)


def _maintenance_url(url: str) -> str:
    # CREATE/DROP DATABASE must run from another database of the same server.
    return with_database(url, "postgres")


def _check_name(dbname: str) -> None:
    if not _DB_NAME.match(dbname):
        raise ValueError(
            f"database name {dbname!r} is not a plain identifier (letters, digits, underscore)"
        )


def database_exists(dbname: str, url: str | None = None) -> bool:
    """Whether the server behind ``url`` has a database called ``dbname``."""
    with connect(_maintenance_url(url or database_url()), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row is not None


def create_database(dbname: str, url: str | None = None) -> str:
    """Creates database ``dbname`` on the server behind ``url``; returns a URL pointing at it."""
    _check_name(dbname)
    base = url or database_url()
    with connect(_maintenance_url(base), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return with_database(base, dbname)


def drop_database(dbname: str, url: str | None = None) -> None:
    """Drops ``dbname`` if it exists, disconnecting its sessions first (``WITH (FORCE)``)."""
    _check_name(dbname)
    with connect(_maintenance_url(url or database_url()), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def api_binary() -> Path:
    """The ``feedrank-api`` binary: ``$FEEDRANK_API_BIN``, else the newer of the release and debug
    builds under ``target/``. Raises :class:`MigrationError` naming the build command if neither
    exists."""
    explicit = os.environ.get("FEEDRANK_API_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise MigrationError(f"FEEDRANK_API_BIN={explicit} is not a file")
        return path
    root = repo_root()
    candidates = [
        p for p in (root / "target/release/feedrank-api", root / "target/debug/feedrank-api")
        if p.is_file()
    ]
    if not candidates:
        raise MigrationError(
            "the feedrank-api binary is not built: run `make api` "
            "(or `cargo build --release -p feedrank-api`), or set FEEDRANK_API_BIN"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def migrate(url: str | None = None, binary: Path | None = None) -> str:
    """Applies the schema migrations to ``url`` by running ``feedrank-api migrate``.

    Returns what the runner printed (``migrations: applied V1__...`` lines, or ``migrations: schema
    is up to date``); raises :class:`MigrationError` with its output when it fails.
    """
    exe = binary or api_binary()
    env = dict(os.environ, DATABASE_URL=url or database_url())
    try:
        done = subprocess.run(
            [str(exe), "migrate"], env=env, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MigrationError(f"could not run {exe} migrate: {e}") from e
    if done.returncode != 0:
        raise MigrationError(
            f"{exe} migrate failed (exit {done.returncode}):\n{done.stdout}{done.stderr}".rstrip()
        )
    return done.stdout


@contextmanager
def temporary_database(
    url: str | None = None,
    prefix: str = "feedrank_tmp",
    migrated: bool = True,
    binary: Path | None = None,
) -> Iterator[str]:
    """A fresh database with a random name on the server behind ``url``, migrated (with
    ``binary``, default :func:`api_binary`) unless ``migrated=False``; yields its URL and drops it
    afterwards, even after an error."""
    base = url or database_url()
    name = f"{prefix}_{secrets.token_hex(6)}"
    created = create_database(name, base)
    try:
        if migrated:
            migrate(created, binary=binary)
        yield created
    finally:
        drop_database(name, base)


def current_recommendations(url: str) -> dict[str, list[tuple[str, float, int]]]:
    """What readers get: per user, (post id, score, run id) of their current run, best first.

    The same rows the API reads (``current_recommendation_run``, not expired); tests and
    checks compare runs through this one query.
    """
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT u.id::text, r.post_id::text, r.score, r.run_id FROM users u "
            "JOIN user_recommendations r ON r.user_id = u.id "
            "AND r.run_id = current_recommendation_run(u.id) AND r.expires_at > now() "
            "ORDER BY u.id, r.score DESC, r.post_id"
        ).fetchall()
    out: dict[str, list[tuple[str, float, int]]] = {}
    for user_id, post_id, score, run_id in rows:
        out.setdefault(user_id, []).append((post_id, score, run_id))
    return out
