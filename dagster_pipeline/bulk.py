"""Bulk writes to PostgreSQL: statements and COPYs spread over ``PostgresResource.copy_connections``
connections (PostgreSQL parses each COPY on one core, so two of them use two), and the binary
COPY format encoded from numpy arrays.

Why a binary encoder of our own: the serving model's tables hold arrays (a user's profile is up to
``profile_terms`` terms and weights, ``profile_authors`` author ids and affinities). psycopg's
``write_row`` builds them from Python objects, one per element, and polars cannot write array
columns as CSV; at 100,000 users that was 50 s and 25 s. Here each column's bytes are built by
numpy in one pass (big-endian values, array headers per row) and only the row assembly loops in
Python, which is about 1 s; the values arrive in PostgreSQL bit for bit (no float to text and
back). The format: https://www.postgresql.org/docs/current/sql-copy.html ("Binary Format") and
``array_send`` (one dimension, lower bound 1, no NULLs, the element type's OID).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from psycopg import sql

from dagster_pipeline.resources import PostgresResource
from dagster_pipeline.timing import Timer

# The binary COPY stream's signature, flags and header extension length; and its end.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + np.array([0, 0], ">i4").tobytes()
COPY_TRAILER = np.array([-1], ">i2").tobytes()

# Element type OIDs (pg_type) of the arrays written here.
INT4_OID, FLOAT4_OID, UUID_OID = 23, 700, 2950


def parallel(postgres: PostgresResource, statements: Sequence[sql.Composable]) -> None:
    """Runs independent statements over ``postgres.copy_connections`` connections at once."""

    def run(stmt: sql.Composable) -> None:
        with postgres.connect(autocommit=True) as conn:
            conn.execute(stmt)

    with ThreadPoolExecutor(max(1, postgres.copy_connections)) as pool:
        list(pool.map(run, statements))


# Renders the rows of [lo, hi) as the COPY's data, with how many rows it holds; the timer is the
# calling thread's own.
Render = Callable[[int, int, Timer], tuple[bytes | memoryview, int]]


def copy_parallel(
    postgres: PostgresResource,
    statement: sql.Composable,
    chunks: Sequence[tuple[int, int]],
    render: Render,
    timer: Timer,
    *,
    header: bytes = b"",
    trailer: bytes = b"",
) -> int:
    """``statement`` (a ``COPY ... FROM STDIN``) on ``postgres.copy_connections`` connections at
    once, each committing its own share of ``chunks`` (``header`` and ``trailer`` open and close
    each connection's stream). Returns the rows written."""
    parts = max(1, min(postgres.copy_connections, len(chunks)))

    def write_part(part: int) -> tuple[int, Timer]:
        local = Timer()
        written = 0
        with postgres.connect() as conn, conn.transaction():
            with conn.cursor().copy(statement) as copy:
                copy.write(header)
                for lo, hi in chunks[part::parts]:
                    data, rows = render(lo, hi, local)
                    written += rows
                    with local.step("copy rows", "io"):
                        copy.write(data)
                copy.write(trailer)
                t = time.perf_counter()
        # leaving the blocks ends the COPY and commits: PostgreSQL finishes the rows
        local.add("copy rows", "io", time.perf_counter() - t)
        return written, local

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parts) as pool:
        results = list(pool.map(write_part, range(parts)))
    timer.merge_overlapping([local for _, local in results], time.perf_counter() - t0)
    return sum(written for written, _ in results)


# --- the binary COPY format ------------------------------------------------------------------


def uuid_values(ids: Sequence[str]) -> np.ndarray:
    """Canonical uuid strings (as PostgreSQL prints them) as 16-byte values, in one pass."""
    return np.frombuffer(bytes.fromhex("".join(ids).replace("-", "")), dtype="V16")


@dataclass(frozen=True)
class Scalars:
    """A column with one fixed-width value per row, already in its wire form (big-endian
    numbers, 16-byte uuids)."""

    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 1:
            raise ValueError(f"values: expected a 1-D array, got shape {self.values.shape}")

    @staticmethod
    def int8(values: np.ndarray) -> "Scalars":
        return Scalars(np.asarray(values, ">i8"))

    @staticmethod
    def uuid(ids: Sequence[str]) -> "Scalars":
        return Scalars(uuid_values(ids))


@dataclass(frozen=True)
class Arrays:
    """A column with a one-dimensional array per row: row ``i`` holds
    ``values[offsets[i]:offsets[i + 1]]`` (a CSR matrix's ``indptr`` and ``data`` or
    ``indices``), elements of the PostgreSQL type ``oid``, in their wire form."""

    offsets: np.ndarray
    values: np.ndarray
    oid: int

    @staticmethod
    def int4(offsets: np.ndarray, values: np.ndarray) -> "Arrays":
        return Arrays(np.asarray(offsets, np.int64), np.asarray(values, ">i4"), INT4_OID)

    @staticmethod
    def float4(offsets: np.ndarray, values: np.ndarray) -> "Arrays":
        return Arrays(np.asarray(offsets, np.int64), np.asarray(values, ">f4"), FLOAT4_OID)

    @staticmethod
    def uuid(offsets: np.ndarray, values: np.ndarray) -> "Arrays":
        """``values``: 16-byte uuids (:func:`uuid_values`)."""
        return Arrays(np.asarray(offsets, np.int64), np.asarray(values, "V16"), UUID_OID)


# A column's field of row i (relative to the rows being encoded): its length word (with, for an
# array, the array's header) and its data.
Field = Callable[[int], tuple[bytes | memoryview, memoryview]]


def _scalar_field(column: Scalars, lo: int, hi: int) -> Field:
    size = column.values.dtype.itemsize
    length = np.array([size], ">i4").tobytes()
    values = memoryview(column.values[lo:hi].tobytes())
    return lambda i: (length, values[i * size : (i + 1) * size])


def _array_field(column: Arrays, lo: int, hi: int) -> Field:
    """Per row: the field's length word and the array's header (24 bytes; 16 for an empty array,
    which has no dimension), then its elements (each a length word and the value)."""
    size = column.values.dtype.itemsize
    counts = np.diff(column.offsets[lo : hi + 1])
    header = np.zeros((hi - lo, 6), ">i4")
    header[:, 0] = np.where(counts > 0, 20 + counts * (4 + size), 12)  # the field's length
    header[:, 1] = counts > 0  # dimensions
    header[:, 3] = column.oid  # [:, 2] is the has-NULLs flag
    header[:, 4] = counts  # the dimension's length
    header[:, 5] = 1  # its lower bound
    header_len = np.where(counts > 0, 24, 16).tolist()
    first, last = column.offsets[lo], column.offsets[hi]
    elements = np.empty(int(last - first), [("size", ">i4"), ("value", column.values.dtype)])
    elements["size"] = size
    elements["value"] = column.values[first:last]
    ends = ((column.offsets[lo : hi + 1] - first) * (4 + size)).tolist()
    headers, data = memoryview(header.tobytes()), memoryview(elements.tobytes())
    return lambda i: (headers[24 * i : 24 * i + header_len[i]], data[ends[i] : ends[i + 1]])


def binary_rows(columns: Sequence[Scalars | Arrays], lo: int, hi: int) -> tuple[bytes, int]:
    """Rows ``lo..hi`` of ``columns`` in the binary COPY format (without the stream's
    :data:`COPY_HEADER` and :data:`COPY_TRAILER`), and their count."""
    field_count = np.array([len(columns)], ">i2").tobytes()
    fields = [_scalar_field(c, lo, hi) if isinstance(c, Scalars) else _array_field(c, lo, hi) for c in columns]
    out: list[bytes | memoryview] = []
    for i in range(hi - lo):
        out.append(field_count)
        for field in fields:
            out += field(i)
    return b"".join(out), hi - lo
