"""The pipeline's resources: clients of the services it reads and writes, and the scoring settings
of a run.

The clients are configured in ``definitions.py`` through ``dg.EnvVar`` (``DATABASE_URL``,
``REDIS_URL``), so the values are read when a run starts, never when the code location is
imported. :class:`ScoringResource` is the run's ``ScoringConfig``: given once per run, read by
every asset.
"""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import feedrank
import polars as pl
import psycopg
import redis
import redis.cluster
from feedrank.config import load_config
from psycopg import sql
from pydantic import Field, PrivateAttr

log = logging.getLogger(__name__)


class PostgresResource(dg.ConfigurableResource):
    """PostgreSQL, by URL (``postgres://user@host:port/db``)."""

    database_url: str
    copy_connections: int = 2
    """Connections that COPY a shard's recommendations at once (PostgreSQL uses a core each)."""

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        conn = psycopg.connect(self.database_url, autocommit=autocommit)
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def copy_out(
        cur: psycopg.Cursor,
        query: sql.Composable,
        params: tuple | None,
        schema: dict[str, pl.DataType],
    ) -> pl.DataFrame:
        """Runs ``COPY (query) TO STDOUT`` (CSV) and parses the bytes with polars.

        The bulk path: PostgreSQL formats the rows and polars parses them in Rust, with no Python
        object per row. ``params`` are bound client-side by psycopg; ``schema`` names and types
        the columns in the query's order.
        """
        statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
        buf = io.BytesIO()
        with cur.copy(statement, params) as copy:
            for chunk in copy:
                buf.write(chunk)
        if buf.tell() == 0:
            return pl.DataFrame(schema=schema)
        buf.seek(0)
        return pl.read_csv(buf, has_header=False, new_columns=list(schema), schema=schema)


class RedisResource(dg.ConfigurableResource):
    """Redis, by URL, with the key prefix of this installation (empty in production; tests set
    one so that they never touch real keys). A URL naming several nodes, comma-separated
    (``redis://a:7000,redis://b:7000``), is a Redis Cluster, as for the API (REDIS_URL).

    ``key_prefix`` unset: the ``REDIS_KEY_PREFIX`` environment variable when a run starts (the
    variable the API reads too), else empty.
    """

    redis_url: str
    key_prefix: str | None = None

    def prefix(self) -> str:
        if self.key_prefix is not None:
            return self.key_prefix
        return os.environ.get("REDIS_KEY_PREFIX", "")

    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        nodes = [u.strip() for u in self.redis_url.split(",")]
        if len(nodes) == 1:
            return redis.Redis.from_url(self.redis_url)
        # the others are learned from these; a non-transactional pipeline is split per node
        startup = [redis.cluster.ClusterNode(u.hostname or "127.0.0.1", u.port or 6379) for u in map(urlsplit, nodes)]
        return redis.cluster.RedisCluster(startup_nodes=startup)


class AlertNotifier(dg.ConfigurableResource):
    """Where run failures are reported.

    By default a log line (WARNING, logger ``dagster_pipeline.alerts``). When a webhook URL is
    configured, or the environment variable named by ``webhook_url_env`` (``ALERT_WEBHOOK_URL``)
    is set when the sensor runs, the alert is also POSTed there as JSON
    ``{"text", "job", "run_id", "error"}`` (Slack-compatible ``text``).
    """

    webhook_url: str | None = None
    webhook_url_env: str = "ALERT_WEBHOOK_URL"
    timeout_seconds: float = 10.0

    def target_url(self) -> str | None:
        return self.webhook_url or os.environ.get(self.webhook_url_env) or None

    def notify(self, *, job: str, run_id: str, error: str) -> dict[str, Any]:
        text = f"feedrank pipeline: run {run_id} of job {job} failed: {error}"
        payload = {"text": text, "job": job, "run_id": run_id, "error": error}
        logging.getLogger("dagster_pipeline.alerts").warning(text)
        url = self.target_url()
        if url:
            req = urllib.request.Request(
                url,
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=self.timeout_seconds) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"webhook_url: POST answered {resp.status}")
        return payload


class ScoringResource(dg.ConfigurableResource):
    """The run's scoring settings: a ``ScoringConfig`` (rust/core/src/config.rs, whose defaults and
    validation are the only ones), given once per run and read by every asset.

    The config is ``config_path``'s file (e.g. written by ``feedrank tune``) when one is given,
    with ``overrides`` on top (a nested dict such as ``weights`` is merged key by key), and the
    ScoringConfig defaults for whatever neither sets. ``overrides`` is a dict validated by the
    core, not one Dagster field per ScoringConfig field: a new ScoringConfig field reaches the
    pipeline without an edit here. The run's first step validates it (:meth:`setup_for_execution`),
    so a bad value stops the run before any read, with an error naming the field.
    """

    config_path: str | None = Field(
        default=None,
        description="A ScoringConfig JSON file (e.g. written by `feedrank tune`); its values are "
        "used for every field `overrides` does not set.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="ScoringConfig fields set for this run, over config_path and the defaults: "
        + ", ".join(feedrank.default_config())
        + ". Validated by feedrank.validate_config (rust/core/src/config.rs documents each).",
    )
    batch_size: int = Field(default=1000, description="Users per HybridModel.topk call.")

    _config: dict[str, Any] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._config = self.resolve()

    def resolve(self) -> dict[str, Any]:
        """The validated ScoringConfig as a dict; ValueError naming the bad field otherwise."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        return load_config(self.config_path, self.overrides, path_argument="config_path")

    @property
    def scoring_config(self) -> dict[str, Any]:
        """The run's ScoringConfig (resolved once per run when Dagster sets the resource up)."""
        return self._config if self._config is not None else self.resolve()
