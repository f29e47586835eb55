"""The code location loads and validates, with and without user shards; the schedule, the failure
sensor and its notifier do what operators rely on."""

import http.server
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from dagster_pipeline.definitions import JOB_NAME, build_definitions, defs
from dagster_pipeline.resources import AlertNotifier
from dagster_pipeline.sensors import alert_on_run_failure

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]
NIGHTLY_ASSETS = {
    "user_interactions_snapshot",
    "post_features",
    "user_features",
    "serving_model",
    "recommendation_scores",
    "user_recommendations",
    "recommendation_quality",
}
ASSETS = NIGHTLY_ASSETS | {"refreshed_recommendations", "experiment_report"}


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.path[-1] for k in graph.get_all_asset_keys()} == ASSETS
    deps = {k.path[-1]: {p.path[-1] for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert deps == {
        "user_interactions_snapshot": set(),
        "post_features": {"user_interactions_snapshot"},
        "user_features": {"user_interactions_snapshot"},
        "serving_model": {"post_features", "user_features"},
        "recommendation_scores": {"post_features", "user_features"},
        "user_recommendations": {"recommendation_scores", "serving_model"},
        "recommendation_quality": {"recommendation_scores"},
        "refreshed_recommendations": {"user_recommendations"},
        "experiment_report": set(),
    }
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {
        "scores_valid",
        "every_user_has_recommendations",
        "stored_scores_in_range",
        "no_deleted_own_or_hidden_posts",
        "redis_matches_table",
        "ndcg_not_dropped",
        "experiment_sample_ratio",
    }


@pytest.mark.parametrize("shards", [None, "4"])
def test_dg_check_defs_passes(shards):
    env = dict(os.environ)
    env.pop("FEEDRANK_USER_SHARDS", None)
    if shards:
        env["FEEDRANK_USER_SHARDS"] = shards
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_sharded_definitions_partition_scoring_and_writing_only():
    sharded = build_definitions(4)
    dg.Definitions.validate_loadable(sharded)
    graph = sharded.resolve_asset_graph()
    parts = {k.path[-1]: graph.get(k).partitions_def for k in graph.get_all_asset_keys()}
    assert parts["user_interactions_snapshot"] is None and parts["user_features"] is None
    assert parts["serving_model"] is None and parts["refreshed_recommendations"] is None
    assert parts["recommendation_scores"].get_partition_keys() == ["00-of-04", "01-of-04", "02-of-04", "03-of-04"]
    assert parts["user_recommendations"] == parts["recommendation_scores"]
    assert parts["recommendation_quality"] is None  # evaluates the whole user base


def test_shard_count_from_the_environment_is_checked(monkeypatch):
    from dagster_pipeline.partitions import shard_count_from_env

    monkeypatch.setenv("FEEDRANK_USER_SHARDS", "many")
    with pytest.raises(ValueError, match="FEEDRANK_USER_SHARDS"):
        shard_count_from_env()
    monkeypatch.setenv("FEEDRANK_USER_SHARDS", "0")
    with pytest.raises(ValueError, match="FEEDRANK_USER_SHARDS"):
        shard_count_from_env()
    monkeypatch.setenv("FEEDRANK_USER_SHARDS", "")
    assert shard_count_from_env() is None


@pytest.mark.parametrize("shards", [None, 4])
def test_daily_schedule_runs_the_whole_graph_at_two_utc(shards):
    d = build_definitions(shards)
    schedule = d.get_schedule_def("daily_recommendations")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == JOB_NAME
    with dg.build_schedule_context(scheduled_execution_time=__import__("datetime").datetime(2026, 1, 2, 2, 0)) as ctx:
        request = schedule.evaluate_tick(ctx).run_requests[0]
    assert request.run_key == "2026-01-02T02:00"
    if shards:
        assert request.partition_key_range.start == "00-of-04"
        assert request.partition_key_range.end == "03-of-04"
    else:
        assert request.partition_key_range is None
    job = d.resolve_job_def(JOB_NAME)
    assert {k.path[-1] for k in job.asset_layer.executable_asset_keys} == NIGHTLY_ASSETS, "not the refresh"


def test_the_experiment_reports_run_daily_after_midnight_utc_for_the_day_that_ended():
    from dagster_pipeline.definitions import REPORT_JOB_NAME

    schedule = defs.get_schedule_def("daily_experiment_reports")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 0 * * *", "UTC")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.job_name == REPORT_JOB_NAME
    with dg.build_schedule_context(scheduled_execution_time=__import__("datetime").datetime(2026, 12, 5, 0, 30)) as ctx:
        [request] = schedule.evaluate_tick(ctx).run_requests
    assert request.partition_key == "2026-12-04"
    job = defs.resolve_job_def(REPORT_JOB_NAME)
    assert {k.path[-1] for k in job.asset_layer.executable_asset_keys} == {"experiment_report"}


def test_the_failure_sensor_is_on_by_default():
    sensor = defs.get_sensor_def("alert_on_run_failure")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_the_refresh_sensor_runs_the_refresh_job_every_interval_on_by_default(monkeypatch):
    from dagster_pipeline.definitions import REFRESH_JOB_NAME

    monkeypatch.delenv("FEEDRANK_REFRESH_INTERVAL_SECONDS", raising=False)
    sensor = build_definitions(None).get_sensor_def("refresh_active_users")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 300 and sensor.job_name == REFRESH_JOB_NAME
    job = build_definitions(None).resolve_job_def(REFRESH_JOB_NAME)
    assert {k.path[-1] for k in job.asset_layer.executable_asset_keys} == {"refreshed_recommendations"}
    monkeypatch.setenv("FEEDRANK_REFRESH_INTERVAL_SECONDS", "120")
    assert build_definitions(4).get_sensor_def("refresh_active_users").minimum_interval_seconds == 120
    for bad in ("often", "10"):
        monkeypatch.setenv("FEEDRANK_REFRESH_INTERVAL_SECONDS", bad)
        with pytest.raises(ValueError, match="^FEEDRANK_REFRESH_INTERVAL_SECONDS"):
            build_definitions(None)


def test_the_refresh_sensor_skips_while_the_nightly_graph_runs_without_asking_postgresql():
    """Checked before any query: the database named does not exist (a fast test fails on a
    connection attempt anyway)."""
    from dagster._core.test_utils import create_run_for_test

    from dagster_pipeline.resources import PostgresResource

    sensor = build_definitions(None).get_sensor_def("refresh_active_users")
    nowhere = PostgresResource(database_url="postgres://nobody@127.0.0.1:1/nowhere")
    with dg.instance_for_test() as instance:
        # an operator materializing part of the nightly graph from the UI counts too
        run = create_run_for_test(
            instance, job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED,
            asset_selection=frozenset({dg.AssetKey("recommendation_scores")}),
        )
        with dg.build_sensor_context(instance=instance, resources={"postgres": nowhere}) as context:
            tick = sensor.evaluate_tick(context)
    assert not tick.run_requests and run.run_id in tick.skip_message


@dg.op
def explodes():
    raise RuntimeError("the database went away")


@dg.job
def failing_job():
    explodes()


def _failure_context(instance):
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    event = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    return dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=event,
    ).for_run_failure()


def test_failure_alert_is_a_log_line_by_default(monkeypatch, caplog):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    with dg.instance_for_test() as instance:
        ctx = _failure_context(instance)
        with caplog.at_level(logging.WARNING, logger="dagster_pipeline.alerts"):
            alert_on_run_failure(ctx, notifier=AlertNotifier())
    lines = [r.getMessage() for r in caplog.records if r.name == "dagster_pipeline.alerts"]
    assert len(lines) == 1 and "failing_job" in lines[0] and ctx.dagster_run.run_id in lines[0]


def test_failure_alert_is_posted_to_the_webhook_when_configured(monkeypatch):
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
        with dg.instance_for_test() as instance:
            ctx = _failure_context(instance)
            alert_on_run_failure(ctx, notifier=AlertNotifier())
    finally:
        server.shutdown()
    assert len(received) == 1
    body = received[0]["body"]
    assert received[0]["type"] == "application/json"
    assert body["job"] == "failing_job" and body["run_id"] == ctx.dagster_run.run_id
    assert "explodes" in body["error"] and body["text"].startswith("feedrank pipeline: run ")


def test_a_failing_webhook_is_reported_not_swallowed(monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/unreachable")
    with pytest.raises(OSError):
        AlertNotifier(timeout_seconds=2).notify(job="j", run_id="r", error="e")


def test_a_bad_scoring_value_in_the_run_config_stops_a_cli_run_in_its_first_step(tmp_path):
    """As an operator runs it: `dagster asset materialize --config run.yaml`, multiprocess executor
    (each step sets the scoring resource up in its own process). The first step fails naming the
    field; no other step starts (and nothing connects: the database named does not exist)."""
    run_config = tmp_path / "run.yaml"
    run_config.write_text("resources:\n  scoring:\n    config:\n      overrides: {top_k: 0}\n")
    (tmp_path / "home").mkdir()
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"), REDIS_URL="redis://127.0.0.1:1/0",
               DATABASE_URL="postgres://nobody@127.0.0.1:1/nowhere")
    env.pop("FEEDRANK_USER_SHARDS", None)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "dagster_pipeline.definitions",
         "--select", "not key:experiment_report", "--config", str(run_config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode != 0
    failed = [line for line in log.splitlines() if " - STEP_FAILURE - " in line]
    assert len(failed) == 1 and " - user_interactions_snapshot - " in failed[0], log[-3000:]
    assert "ValueError: top_k: must be >= 1" in log
    started = {line.split(" - ")[6] for line in log.splitlines() if " - STEP_WORKER_STARTING - " in line}
    assert started == {"user_interactions_snapshot"}
