"""The code location: `dg dev -m dagster_pipeline.definitions` (or `dg check defs`).

``FEEDRANK_USER_SHARDS=N`` (read once, when the location loads) splits scoring and writing into
N user-shard partitions; unset, one run scores every user (see partitions.py).
``FEEDRANK_REFRESH_INTERVAL_SECONDS`` (read then too) paces the incremental refresh (sensors.py).
``FEEDRANK_EXECUTOR`` (read at the same time) picks where the steps run: multiprocess (default),
celery or k8s (see executors.py).
"""

import dagster as dg

from dagster_pipeline.assets import build_assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.executors import executor_from_env
from dagster_pipeline.experiments import EXPERIMENT_REPORT, build_experiment_report_asset
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.partitions import shard_count_from_env, user_shards
from dagster_pipeline.quality import QUALITY_CHECKS, build_quality_asset
from dagster_pipeline.refresh import REFRESH_ASSET, build_refresh_asset
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource, ScoringResource
from dagster_pipeline.schedules import build_daily_schedule, build_report_schedule
from dagster_pipeline.sensors import alert_on_run_failure, build_refresh_sensor, refresh_interval_from_env

JOB_NAME = "build_recommendations"
REFRESH_JOB_NAME = "refresh_active_users"
REPORT_JOB_NAME = "experiment_reports"


def default_resources() -> dict:
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "redis": RedisResource(redis_url=dg.EnvVar("REDIS_URL")),
        "notifier": AlertNotifier(),
        "io_manager": BundleIOManager(),
        # the ScoringConfig defaults unless the run config sets resources.scoring.config
        "scoring": ScoringResource(),
    }


def build_definitions(shard_count: int | None, resources: dict | None = None) -> dg.Definitions:
    shards = user_shards(shard_count) if shard_count else None
    nightly_assets = [*build_assets(shards), build_quality_asset(shards)]
    job = dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets(REFRESH_ASSET, EXPERIMENT_REPORT),
        description="Snapshot, features, serving model, scores and the swap-in of everyone's "
        "recommendations.",
    )
    refresh_job = dg.define_asset_job(
        REFRESH_JOB_NAME,
        selection=dg.AssetSelection.assets(REFRESH_ASSET),
        description="The lists of the users active since their list was built, recomputed.",
    )
    report_job = dg.define_asset_job(
        REPORT_JOB_NAME,
        selection=dg.AssetSelection.assets(EXPERIMENT_REPORT),
        description="Every experiment's report, cumulative to the end of the day.",
    )
    refresh_sensor = build_refresh_sensor(
        refresh_job,
        JOB_NAME,
        [key.to_user_string() for a in nightly_assets for key in a.keys],
        refresh_interval_from_env(),
    )
    return dg.Definitions(
        assets=[*nightly_assets, build_refresh_asset(shards), build_experiment_report_asset()],
        asset_checks=[*ALL_CHECKS, *QUALITY_CHECKS],
        jobs=[job, refresh_job, report_job],
        schedules=[build_daily_schedule(job, shards), build_report_schedule(report_job)],
        sensors=[alert_on_run_failure, refresh_sensor],
        resources=resources or default_resources(),
        executor=executor_from_env(),
    )


defs = build_definitions(shard_count_from_env())


def build_recommendations_job() -> dg.JobDefinition:
    """The job as configured by the environment now, for `dg.reconstructable` (each process of
    the multiprocess executor calls this again, so they agree on the shard layout)."""
    return build_definitions(shard_count_from_env()).resolve_job_def(JOB_NAME)
