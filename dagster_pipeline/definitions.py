"""The code location: `dg dev -m dagster_pipeline.definitions` (or `dg check defs`)."""

from __future__ import annotations

import dagster as dg

from dagster_pipeline import assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.jobs import build_recommendations
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource
from dagster_pipeline.schedules import daily_recommendations
from dagster_pipeline.sensors import alert_on_run_failure

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=ALL_CHECKS,
    jobs=[build_recommendations],
    schedules=[daily_recommendations],
    sensors=[alert_on_run_failure],
    resources={
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "redis": RedisResource(redis_url=dg.EnvVar("REDIS_URL")),
        "notifier": AlertNotifier(),
        "io_manager": BundleIOManager(),
    },
)


def build_recommendations_job() -> dg.JobDefinition:
    """The resolved job, for `dg.reconstructable` (multiprocess execution outside a server)."""
    return defs.resolve_job_def("build_recommendations")
