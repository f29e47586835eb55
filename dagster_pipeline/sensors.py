"""Sensors: failure alerts, and the incremental refresh of active users.

- ``alert_on_run_failure``: every failed run of this code location goes to the notifier resource.
- ``refresh_active_users``: every ``FEEDRANK_REFRESH_INTERVAL_SECONDS`` (default 300, read when
  the location loads), a run of the refresh job (``refresh.py``) when some user was active since
  their list was built; skipped while the nightly graph or another refresh is in progress.
"""

import os

import dagster as dg

from dagster_pipeline.refresh import REFRESH_ASSET, active_users, base_model
from dagster_pipeline.resources import AlertNotifier, PostgresResource

DEFAULT_REFRESH_INTERVAL_SECONDS = 300
# A run in one of these has not finished: the refresh waits for it.
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports failed runs through the `notifier` resource (a log line; also a webhook "
    "POST when ALERT_WEBHOOK_URL is set).",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, notifier: AlertNotifier) -> None:
    error = context.failure_event.message or "unknown error"
    notifier.notify(job=context.dagster_run.job_name, run_id=context.dagster_run.run_id, error=error)


def refresh_interval_from_env() -> int:
    """``FEEDRANK_REFRESH_INTERVAL_SECONDS``: unset or empty -> 300; else an integer >= 30 (the
    sensor's ``minimum_interval_seconds``; the daemon evaluates sensors every 30 s anyway)."""
    raw = os.environ.get("FEEDRANK_REFRESH_INTERVAL_SECONDS", "").strip()
    if not raw:
        return DEFAULT_REFRESH_INTERVAL_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        raise ValueError(f"FEEDRANK_REFRESH_INTERVAL_SECONDS: must be an integer >= 30, got {raw!r}") from None
    if seconds < 30:
        raise ValueError(f"FEEDRANK_REFRESH_INTERVAL_SECONDS: must be >= 30, got {seconds}")
    return seconds


def _blocking_run(instance: dg.DagsterInstance, refresh_job: str, nightly_job: str, nightly_assets: set[dg.AssetKey]):
    """An unfinished run the refresh must not overlap: another refresh, or a run of the nightly
    graph (its job, or a materialization of any of its assets from the UI, the CLI or a
    backfill)."""
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED)):
        run = record.dagster_run
        selected = set(run.asset_selection or ())
        if run.job_name in (refresh_job, nightly_job) or selected & nightly_assets:
            return run
    return None


def build_refresh_sensor(
    refresh_job,  # the refresh job (dg.define_asset_job)
    nightly_job: str,
    nightly_assets: list[str],
    interval_seconds: int,
) -> dg.SensorDefinition:
    nightly_keys = {dg.AssetKey(name) for name in nightly_assets}

    @dg.sensor(
        name="refresh_active_users",
        job=refresh_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Every {interval_seconds} s: recomputes the lists of the users active since "
        f"their list was built ({REFRESH_ASSET}); skipped while the nightly graph or another "
        "refresh runs, or when no user was active.",
    )
    def refresh_active_users(context: dg.SensorEvaluationContext, postgres: PostgresResource):
        blocking = _blocking_run(context.instance, refresh_job.name, nightly_job, nightly_keys)
        if blocking is not None:
            return dg.SkipReason(f"run {blocking.run_id} ({blocking.job_name}) is in progress")
        with postgres.connect() as conn:
            if base_model(conn) is None:
                return dg.SkipReason("no complete nightly run names a serving model yet")
            active = active_users(conn).height
        if active == 0:
            return dg.SkipReason("no user was active since their list was built")
        return dg.RunRequest(tags={"feedrank/active_users": str(active)})

    return refresh_active_users
