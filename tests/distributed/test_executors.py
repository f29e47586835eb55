"""FEEDRANK_EXECUTOR picks where a run's steps execute (dagster_pipeline/executors.py), and the
shipped Dagster instance (deploy/dagster.yaml) is what its comments say:

- the Kubernetes path is checked only as far as this machine allows: the definitions load with
  dagster-k8s's ``k8s_job_executor`` and accept its run config (no cluster runs it here);
- Celery's settings hand a dead worker's step to another (acks late, requeued when lost);
- a bad executor name or a missing broker fail when the code location loads, naming the variable;
- the instance keeps runs, events and schedules in the PostgreSQL database that
  DAGSTER_POSTGRES_URL names, behind the queued run coordinator's limit of 4 runs.
"""

import os
import subprocess
import sys

import dagster as dg
import pytest

from dagster_pipeline.definitions import JOB_NAME, build_definitions
from dagster_pipeline.executors import CELERY_SETTINGS

from .cluster import REPO_ROOT

K8S_RUN_CONFIG = {
    "execution": {
        "config": {
            "job_namespace": "feedrank",
            "max_concurrent": 4,
            "step_k8s_config": {
                "container_config": {"resources": {"requests": {"cpu": "1", "memory": "3Gi"}}},
            },
        }
    }
}


def test_the_definitions_load_with_the_kubernetes_executor(monkeypatch):
    monkeypatch.setenv("FEEDRANK_EXECUTOR", "k8s")
    # read when a run's config is resolved (never connected to here)
    monkeypatch.setenv("DATABASE_URL", "postgres://feedrank@postgres.feedrank.svc:5432/feedrank")
    monkeypatch.setenv("REDIS_URL", "redis://redis.feedrank.svc:6379/0")
    defs = build_definitions(4)
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(JOB_NAME)
    assert job.executor_def.name == "k8s"
    resolved = dg.validate_run_config(job, K8S_RUN_CONFIG)["execution"]["k8s"]
    assert resolved["job_namespace"] == "feedrank" and resolved["max_concurrent"] == 4
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurrent"):
        dg.validate_run_config(job, {"execution": {"config": {"max_concurrent": "four"}}})
    # and as an operator checks it: `dg check defs` in the repository
    env = dict(os.environ, FEEDRANK_EXECUTOR="k8s", FEEDRANK_USER_SHARDS="4")
    done = subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "dg")), "check", "defs"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "All definitions loaded successfully" in done.stdout + done.stderr, done.stderr


def test_the_celery_executor_requeues_the_step_of_a_dead_worker(monkeypatch):
    monkeypatch.setenv("FEEDRANK_EXECUTOR", "celery")
    monkeypatch.setenv("FEEDRANK_CELERY_BROKER", "pyamqp://guest:guest@rabbitmq:5672/feedrank")
    job = build_definitions(3).resolve_job_def(JOB_NAME)
    assert job.executor_def.name == "celery"
    assert CELERY_SETTINGS["task_acks_late"] and CELERY_SETTINGS["task_reject_on_worker_lost"]
    # the workers' app has the same settings as the runs' executor
    monkeypatch.delitem(sys.modules, "dagster_pipeline.celery_worker", raising=False)
    from dagster_pipeline.celery_worker import app

    assert app.conf.broker_url == "pyamqp://guest:guest@rabbitmq:5672/feedrank"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEEDRANK_EXECUTOR": "spark"}, "FEEDRANK_EXECUTOR: must be one of multiprocess, celery, k8s"),
        ({"FEEDRANK_EXECUTOR": "celery"}, "FEEDRANK_CELERY_BROKER: required with FEEDRANK_EXECUTOR=celery"),
    ],
)
def test_a_bad_executor_setting_fails_when_the_location_loads(monkeypatch, env, message):
    monkeypatch.delenv("FEEDRANK_CELERY_BROKER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        build_definitions(None)


def test_the_shipped_instance_keeps_its_state_in_postgresql_behind_a_run_queue(dagster_home, instance_db):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job(), run_id=None)
    # the run is in the test's own database, where another process (a worker) finds it
    import psycopg

    with psycopg.connect(os.environ["DAGSTER_POSTGRES_URL"].replace("postgresql+psycopg2://", "postgres://")) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_id = %s", (run.run_id,)).fetchone()[0] == 1
    assert instance_db in os.environ["DAGSTER_POSTGRES_URL"]
    assert "password" not in (REPO_ROOT / "deploy" / "dagster.yaml").read_text().split("postgres_url:")[1].split("\n")[1]
