"""User shards: the scoring and writing steps can be split by a stable hash of the user id.

A user's shard is ``shard_hash(user_id) % shard_count`` where ``shard_hash`` is the first 32 bits
of ``md5(user_id::text)``. The hash is computed by PostgreSQL (``SHARD_HASH_SQL``) when the
snapshot is read and by the asset checks, so the Python side never re-implements it; md5 is stable
across versions and machines (unlike Python's salted ``hash``) and spreads time-ordered UUIDs
(v7) as evenly as random ones.

The shard count is fixed when the code location loads (Dagster partitions are static):
``FEEDRANK_USER_SHARDS`` unset means no partitions (one run scores every user, and
``dagster asset materialize --select 'not key:experiment_report'`` works as is: every asset but
the daily experiment reports); ``FEEDRANK_USER_SHARDS=N`` partitions ``recommendation_scores``
and ``user_recommendations`` into N shards. Changing the layout changes which users a shard holds;
runs of the old layout stay served until their rows expire (``expires_after_hours``).
"""

from __future__ import annotations

import os

import dagster as dg


def shard_count_from_env() -> int | None:
    """``FEEDRANK_USER_SHARDS``: unset or empty -> ``None`` (the graph is not partitioned, one run
    scores every user); ``N`` -> N user-shard partitions."""
    raw = os.environ.get("FEEDRANK_USER_SHARDS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"FEEDRANK_USER_SHARDS: must be an integer >= 1, got {raw!r}") from None
    if not 1 <= n <= 1024:
        raise ValueError(f"FEEDRANK_USER_SHARDS: must be between 1 and 1024, got {n}")
    return n


def shard_keys(count: int) -> list[str]:
    """Partition keys ``"00-of-04"`` ... : sortable, and they name the layout they belong to."""
    width = max(2, len(str(count)))
    return [f"{i:0{width}d}-of-{count:0{width}d}" for i in range(count)]


def parse_shard_key(key: str) -> tuple[int, int]:
    """``"03-of-08"`` -> ``(3, 8)``."""
    try:
        index, count = key.split("-of-")
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"shard key: expected 'I-of-N', got {key!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard key: index {i} out of range for {n} shards")
    return i, n


def user_shards(count: int) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(shard_keys(count))


# The first day of experiment_report's partitions (experiments came in December 2026).
REPORT_START_DATE = "2026-12-01"


def report_days() -> dg.DailyPartitionsDefinition:
    """experiment_report's partitions: UTC days, complete days only (the schedule reports a day
    just after it ends; `feedrank experiments report` shows the current one)."""
    return dg.DailyPartitionsDefinition(start_date=REPORT_START_DATE, timezone="UTC")


# The shard key of an unpartitioned run: one shard holding every user.
WHOLE = shard_keys(1)[0]

# 32-bit shard hash of a uuid column, as bigint. Parameterless SQL fragment (column name inserted
# by the caller through psycopg.sql).
SHARD_HASH_SQL = "('x' || substr(md5({col}::text), 1, 8))::bit(32)::bigint"

# The shard label of the incremental refresh's runs (refresh.py): a user set, not a hash range of
# the layout. A refresh run never replaces the nightly runs of a shard, only its users' lists.
REFRESH_SHARD = "refresh"
