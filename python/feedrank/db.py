"""Small shared helpers for PostgreSQL: where the database is, how to connect, throw-away databases,
the one way to apply the schema (``feedrank-api migrate``), and a table's indexes and constraints
as the catalog describes them.

Used by ``feedrank demo-data``, the Dagster pipeline and the test fixtures, so that all of them
agree on the defaults and on how the schema gets applied::

    from feedrank import db

    with db.connect() as conn:                      # DATABASE_URL or the project default
        conn.execute("SELECT 1")

    with db.temporary_database() as url:            # created, migrated, dropped afterwards
        db.connect(url).close()

Nothing here applies SQL files itself: migrations are applied only by the API binary's refinery
runner (``api/src/migrate.rs``), which records what it applied and is safe to run twice. Nothing
here knows where a source checkout keeps that binary either: it is ``binary=``, else
``$FEEDRANK_API_BIN``, else ``feedrank-api`` on ``PATH`` (the repository's Makefile and test
fixtures point at their own build).

Code that rebuilds a table's indexes or keys elsewhere (``demo-data``'s bulk load, the pipeline's
per-run partitions) reads them with :func:`table_indexes` and :func:`table_constraints` instead of
retyping the migrations, so that a migration adding an index reaches it without an edit.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "Constraint",
    "Index",
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
    "table_constraints",
    "table_indexes",
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
    """The ``feedrank-api`` binary that applies the migrations: ``$FEEDRANK_API_BIN``, else
    ``feedrank-api`` on ``PATH``. Raises :class:`MigrationError` saying how to get one."""
    explicit = os.environ.get("FEEDRANK_API_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise MigrationError(f"FEEDRANK_API_BIN={explicit} is not a file")
        return path
    found = shutil.which("feedrank-api")
    if found is None:
        raise MigrationError(
            "no feedrank-api binary: set FEEDRANK_API_BIN (in a source checkout, `make api` builds "
            "target/release/feedrank-api) or put feedrank-api on PATH"
        )
    return Path(found)


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


# --- a table's indexes and constraints, from the catalog ----------------------------------------


@dataclass(frozen=True)
class Index:
    """An index of a table that no constraint owns (a primary key or unique constraint owns its
    own index: see :class:`Constraint`)."""

    name: str
    unique: bool
    # Everything from USING on, as pg_get_indexdef prints it: method, key columns with their
    # order, INCLUDE, WHERE. It names no table, so it fits any table with the same columns.
    method: str

    def create(self, table: str, *, named: bool = True) -> sql.Composed:
        """``CREATE INDEX`` of this index on ``table``; with ``named=False`` PostgreSQL names it."""
        return sql.SQL("CREATE {unique}INDEX {name}ON {table} {method}").format(
            unique=sql.SQL("UNIQUE " if self.unique else ""),
            name=sql.SQL("{} ").format(sql.Identifier(self.name)) if named else sql.SQL(""),
            table=sql.Identifier(table),
            method=sql.SQL(self.method),
        )


@dataclass(frozen=True)
class Constraint:
    """A primary key (``p``), unique (``u``), foreign key (``f``) or check (``c``) constraint."""

    name: str
    kind: str
    definition: str  # pg_get_constraintdef: "PRIMARY KEY (a, b)", "FOREIGN KEY (c) REFERENCES t(id) ..."
    columns: tuple[str, ...]
    referenced_table: str | None  # foreign keys only
    referenced_columns: tuple[str, ...]
    # A key whose index another table's foreign key depends on (it cannot be dropped alone).
    referenced_by_foreign_key: bool

    def add(self, table: str, *, name: str | None = None, not_valid: bool = False) -> sql.Composed:
        """``ALTER TABLE table ADD CONSTRAINT ...`` of this constraint (``name`` default: its own)."""
        return sql.SQL("ALTER TABLE {table} ADD CONSTRAINT {name} {definition}{not_valid}").format(
            table=sql.Identifier(table),
            name=sql.Identifier(name or self.name),
            definition=sql.SQL(self.definition),
            not_valid=sql.SQL(" NOT VALID" if not_valid else ""),
        )


def table_indexes(conn, table: str) -> list[Index]:
    """``table``'s indexes that no constraint owns, by name (a partitioned table's own indexes
    for a partitioned table)."""
    rows = conn.execute(
        """
        SELECT c.relname, i.indisunique, substring(pg_get_indexdef(i.indexrelid) FROM ' (USING .*)$')
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = %s::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
        ORDER BY c.relname
        """,
        (table,),
    ).fetchall()
    return [Index(name, unique, method) for name, unique, method in rows]


def table_constraints(conn, table: str, kinds: Sequence[str] = ("p", "u", "f", "c")) -> list[Constraint]:
    """``table``'s constraints of the given kinds: foreign keys first, then by name."""
    rows = conn.execute(
        """
        SELECT c.conname, c.contype::text, pg_get_constraintdef(c.oid),
               ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
               CASE WHEN c.confrelid <> 0 THEN c.confrelid::regclass::text END,
               ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o),
               c.contype IN ('p', 'u') AND EXISTS (
                   SELECT 1 FROM pg_constraint r
                   WHERE r.contype = 'f' AND r.confrelid = c.conrelid AND r.conindid = c.conindid)
        FROM pg_constraint c
        WHERE c.conrelid = %s::regclass AND c.contype::text = ANY(%s)
        ORDER BY c.contype = 'f' DESC, c.conname
        """,
        (table, list(kinds)),
    ).fetchall()
    return [
        Constraint(name, kind, definition, tuple(cols), ref, tuple(ref_cols), referenced)
        for name, kind, definition, cols, ref, ref_cols, referenced in rows
    ]
