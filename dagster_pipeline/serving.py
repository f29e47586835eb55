"""The serving model: what the feed's request-time sources read (migration V7, issue 13).

Per Dagster run of the nightly graph, ``serving_model`` writes one ``recommendation_models`` row
(the fitted TF-IDF as ``TfidfModel::to_json``, the resolved ScoringConfig, the snapshot's time),
then COPYs beside it

- ``user_profiles``: every user with history, ``feedrank.user_profiles`` (the hybrid's content
  profile cut to ``profile_terms`` terms, and the affinity to ``profile_authors`` authors);
- ``post_neighbors``: every post with neighbours, ``feedrank.item_neighbors`` on the interaction
  matrix with ``k = sources.because_you_liked.neighbors``, best first.

Each recommendation run names the model it was built with (``recommendation_runs.model_id``), and
no run names a model before the model is written whole, so a reader never sees a model in
part. The rows go in the binary COPY format (``bulk.py``): arrays of numbers and uuids, encoded by
numpy, bit for bit what the binding computed.

The same profiles (:class:`StoredProfiles`) go into each user's Redis entry, and the incremental
refresh (``refresh.py``) writes its users' new profiles into the model it builds on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import feedrank
import numpy as np
import polars as pl
import psycopg
import scipy.sparse as sp
from psycopg import sql
from psycopg.types.json import Jsonb

from dagster_pipeline.bulk import COPY_HEADER, COPY_TRAILER, Arrays, Scalars, binary_rows, copy_parallel, uuid_values
from dagster_pipeline.resources import PostgresResource
from dagster_pipeline.timing import Timer

PROFILE_COLUMNS = ("model_id", "user_id", "terms", "weights", "authors", "author_weights")
NEIGHBOR_COLUMNS = ("model_id", "post_id", "neighbors", "scores")
# Rows per COPY chunk: a profile is up to about 3 KB.
CHUNK_ROWS = 5000
# A COPY that meets a user or post deleted since the snapshot is written again without it, at
# most this many times in all.
COPY_ATTEMPTS = 3


class Log(Protocol):
    def warning(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class StoredProfiles:
    """Stored profiles of some of a snapshot's users, as ``user_profiles`` and the Redis entry
    hold them: ``row_of[u]`` is the row of user ``u`` (an index of the snapshot's users) in
    ``terms`` (rows x vocabulary) and ``authors`` (rows x the snapshot's users), -1 for a user
    without one; ``user_ids`` are the snapshot's user ids (an author's id by its index)."""

    row_of: np.ndarray
    terms: sp.csr_matrix
    authors: sp.csr_matrix
    user_ids: pl.DataFrame

    @staticmethod
    def compute(
        users: np.ndarray, user_features: dict[str, Any], post_features: dict[str, Any], cfg: dict[str, Any]
    ) -> "StoredProfiles":
        """The profiles of ``users`` (snapshot indices): ``feedrank.user_profiles``."""
        users = np.asarray(users, np.int64)
        profiles = feedrank.user_profiles(
            user_features["interactions"], post_features["tfidf"], post_features["post_author"], users, cfg
        )
        row_of = np.full(user_features["user_ids"].height, -1, np.int64)
        row_of[users] = np.arange(users.size)
        return StoredProfiles(row_of, profiles["terms"], profiles["authors"], user_features["user_ids"])

    def to_bundle(self) -> dict[str, Any]:
        return {
            "profile_row": self.row_of,
            "profile_terms": self.terms,
            "profile_authors": self.authors,
            "user_ids": self.user_ids,
        }

    @staticmethod
    def from_bundle(bundle: dict[str, Any]) -> "StoredProfiles":
        return StoredProfiles(
            np.asarray(bundle["profile_row"]), bundle["profile_terms"], bundle["profile_authors"], bundle["user_ids"]
        )

    @property
    def users(self) -> np.ndarray:
        """The users that have a profile, in row order."""
        users = np.flatnonzero(self.row_of >= 0)
        return users[np.argsort(self.row_of[users])]

    def for_cache(self, author_ids: Sequence[str]) -> Callable[[int], dict[str, Any] | None]:
        """``user -> the profile argument of feedrank.encode_cache_entry`` (None without one);
        ``author_ids`` is ``user_ids`` as a list, made once by the caller."""
        terms, authors, row_of = self.terms, self.authors, self.row_of

        def profile(user: int) -> dict[str, Any] | None:
            row = int(row_of[user])
            if row < 0:
                return None
            t0, t1 = terms.indptr[row], terms.indptr[row + 1]
            a0, a1 = authors.indptr[row], authors.indptr[row + 1]
            return {
                "terms": terms.indices[t0:t1],
                "weights": terms.data[t0:t1],
                "authors": [author_ids[a] for a in authors.indices[a0:a1]],
                "author_weights": authors.data[a0:a1],
            }

        return profile

    def columns(self, model_id: int, keep: np.ndarray | None = None) -> tuple[list[Scalars | Arrays], int]:
        """The ``user_profiles`` rows (:data:`PROFILE_COLUMNS`) of every user with a profile, or of
        those ``keep`` (a mask over :attr:`users`) selects; and their count."""
        users = self.users
        rows = self.row_of[users]
        if keep is not None:
            users, rows = users[keep], rows[keep]
        terms, authors = self.terms[rows], self.authors[rows]
        ids = uuid_values(self.user_ids["user_id"].to_list())
        return [
            Scalars.int8(np.full(users.size, model_id)),
            Scalars(ids[users]),
            Arrays.int4(terms.indptr, terms.indices),
            Arrays.float4(terms.indptr, terms.data),
            Arrays.uuid(authors.indptr, ids[authors.indices]),
            Arrays.float4(authors.indptr, authors.data),
        ], int(users.size)


@dataclass(frozen=True)
class RunModel:
    """The serving model a recommendation run names, and the stored profiles its users' Redis
    entries carry."""

    model_id: int
    profiles: StoredProfiles


def best_first(neighbors: sp.csr_matrix) -> sp.csr_matrix:
    """Each row's entries by descending value (ties: the lower column); CSR keeps them by column."""
    m = sp.csr_matrix(neighbors)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    return sp.csr_matrix((m.data[order], m.indices[order], m.indptr), shape=m.shape)


def neighbor_columns(
    model_id: int, neighbors: sp.csr_matrix, post_ids: Sequence[str], keep: np.ndarray | None = None
) -> tuple[list[Scalars | Arrays], int]:
    """The ``post_neighbors`` rows (:data:`NEIGHBOR_COLUMNS`) of the posts with neighbours (rows of
    ``neighbors``, best first, see :func:`best_first`), or of those ``keep`` (a mask over them)
    selects; and their count."""
    posts = np.flatnonzero(np.diff(neighbors.indptr) > 0)
    if keep is not None:
        posts = posts[keep]
    rows = neighbors[posts]
    ids = uuid_values(post_ids)
    return [
        Scalars.int8(np.full(posts.size, model_id)),
        Scalars(ids[posts]),
        Arrays.uuid(rows.indptr, ids[rows.indices]),
        Arrays.float4(rows.indptr, rows.data),
    ], int(posts.size)


def copy_binary(
    postgres: PostgresResource, table: str, names: Sequence[str], columns: Sequence[Scalars | Arrays], n: int, timer: Timer
) -> int:
    """``n`` rows of ``columns`` into ``table`` by binary COPY, over ``postgres.copy_connections``
    connections. Returns the rows written."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names))
    )

    def render(lo: int, hi: int, local: Timer) -> tuple[bytes, int]:
        with local.step(f"{table} rows (binary)"):
            return binary_rows(columns, lo, hi)

    chunks = [(lo, min(lo + CHUNK_ROWS, n)) for lo in range(0, n, CHUNK_ROWS)]
    if not chunks:
        return 0
    return copy_parallel(postgres, statement, chunks, render, timer, header=COPY_HEADER, trailer=COPY_TRAILER)


def _still_there(conn: psycopg.Connection, table: str, ids: list[str]) -> np.ndarray:
    """Which of ``ids`` still name a row of ``table`` (users or posts), as a mask."""
    alive = {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT id::text FROM {} WHERE id = ANY(%s::uuid[])").format(sql.Identifier(table)), (ids,)
        ).fetchall()
    }
    return np.fromiter((i in alive for i in ids), bool, len(ids))


def _copy_without_deleted(
    postgres: PostgresResource,
    table: str,
    names: Sequence[str],
    rows_of: Callable[[np.ndarray | None], tuple[list[Scalars | Arrays], int]],
    ids: list[str],
    referenced: str,
    model_id: int,
    timer: Timer,
    log: Log,
) -> int:
    """COPYs ``rows_of(None)``; when a row names a ``referenced`` row (user or post, by ``ids``,
    one per row) deleted since the snapshot, the model's rows of ``table`` are deleted and the
    COPY done again without the deleted ones."""
    keep = None
    for attempt in range(1, COPY_ATTEMPTS + 1):
        columns, n = rows_of(keep)
        try:
            return copy_binary(postgres, table, names, columns, n, timer)
        except psycopg.errors.ForeignKeyViolation:
            if attempt == COPY_ATTEMPTS:
                raise
            with postgres.connect() as conn, conn.transaction():
                conn.execute(sql.SQL("DELETE FROM {} WHERE model_id = %s").format(sql.Identifier(table)), (model_id,))
                keep = _still_there(conn, referenced, ids)
            log.warning(f"serving model {model_id}: {int((~keep).sum())} {referenced} deleted since the snapshot left out of {table}")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ModelWritten:
    """What :func:`write_model` wrote."""

    model_id: int
    profiles: int
    neighbors: int
    bytes: int


def write_model(
    postgres: PostgresResource,
    *,
    dagster_run_id: str,
    config: dict[str, Any],
    snapshot_at: float,
    tfidf_json: str,
    profiles: StoredProfiles,
    neighbors: sp.csr_matrix,
    post_ids: list[str],
    timer: Timer,
    log: Log,
) -> ModelWritten:
    """The model's row, then its profiles and neighbours. A failure deletes what was written (no
    run names the model yet, so no reader saw it)."""
    with postgres.connect() as conn, conn.transaction(), timer.step("insert model", "io"):
        model_id = conn.execute(
            "INSERT INTO recommendation_models (dagster_run_id, snapshot_at, config, tfidf) "
            "VALUES (%s, to_timestamp(%s), %s, %s) RETURNING id",
            (dagster_run_id, snapshot_at, Jsonb(config), tfidf_json),
        ).fetchone()[0]
    try:
        user_ids = profiles.user_ids["user_id"].to_list()
        n_profiles = _copy_without_deleted(
            postgres, "user_profiles", PROFILE_COLUMNS, lambda keep: profiles.columns(model_id, keep),
            [user_ids[u] for u in profiles.users], "users", model_id, timer, log,
        )
        with_neighbors = np.flatnonzero(np.diff(neighbors.indptr) > 0)
        n_neighbors = _copy_without_deleted(
            postgres, "post_neighbors", NEIGHBOR_COLUMNS, lambda keep: neighbor_columns(model_id, neighbors, post_ids, keep),
            [post_ids[p] for p in with_neighbors], "posts", model_id, timer, log,
        )
        with postgres.connect() as conn, timer.step("measure", "io"):
            size = conn.execute(
                "SELECT coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM user_profiles t WHERE model_id = %s",
                (model_id,),
            ).fetchone()[0] + conn.execute(
                "SELECT coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM post_neighbors t WHERE model_id = %s",
                (model_id,),
            ).fetchone()[0] + len(tfidf_json.encode())
    except BaseException:
        with postgres.connect() as conn, conn.transaction():
            conn.execute("DELETE FROM recommendation_models WHERE id = %s", (model_id,))
        raise
    return ModelWritten(int(model_id), n_profiles, n_neighbors, int(size))


def replace_profiles(conn: psycopg.Connection, model_id: int, profiles: StoredProfiles, users: list[str]) -> int:
    """In the caller's transaction: the profiles of ``users`` (ids) in model ``model_id`` become
    ``profiles`` (a user without one there has none after). Users deleted meanwhile are skipped.
    Returns the profiles written."""
    conn.execute("DELETE FROM user_profiles WHERE model_id = %s AND user_id = ANY(%s::uuid[])", (model_id, users))
    columns, n = profiles.columns(model_id)
    if n == 0:
        return 0
    conn.execute("CREATE TEMP TABLE refreshed_profiles (LIKE user_profiles) ON COMMIT DROP")
    data, _ = binary_rows(columns, 0, n)
    with conn.cursor().copy(
        sql.SQL("COPY refreshed_profiles ({}) FROM STDIN (FORMAT binary)").format(
            sql.SQL(", ").join(map(sql.Identifier, PROFILE_COLUMNS))
        )
    ) as copy:
        copy.write(COPY_HEADER + data + COPY_TRAILER)
    return conn.execute(
        "INSERT INTO user_profiles SELECT p.* FROM refreshed_profiles p "
        "WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = p.user_id)"
    ).rowcount
