"""Failure alerts: every failed run of this code location goes to the notifier resource."""


import dagster as dg

from dagster_pipeline.resources import AlertNotifier


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports failed runs through the `notifier` resource (a log line; also a webhook "
    "POST when ALERT_WEBHOOK_URL is set).",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, notifier: AlertNotifier) -> None:
    error = context.failure_event.message or "unknown error"
    notifier.notify(job=context.dagster_run.job_name, run_id=context.dagster_run.run_id, error=error)
