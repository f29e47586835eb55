"""Where a run's steps execute, chosen by ``FEEDRANK_EXECUTOR`` when the code location loads (like
``FEEDRANK_USER_SHARDS``, so that every process of a run, workers included, builds the same job):

- unset or ``multiprocess``: Dagster's default, each step in its own process on the run's machine
  (run config may still choose ``in_process``); the intermediate data may stay on a local disk;
- ``celery``: dagster-celery, each step a Celery task on the broker ``FEEDRANK_CELERY_BROKER``
  (``pyamqp://user:password@rabbitmq:5672/vhost``, or ``redis://...``), its events back through
  ``FEEDRANK_CELERY_BACKEND`` (default ``rpc://``: over the broker); the workers run
  ``celery -A dagster_pipeline.celery_worker worker -Q dagster`` with the same variables, and the
  intermediate data must be on storage every worker reaches (``FEEDRANK_STORAGE_URL=s3://...``);
- ``k8s``: dagster-k8s's ``k8s_job_executor``, each step a Kubernetes Job (docs/scaling.md:
  documented and loaded by the tests, not run here).

The broker and backend URLs are read from the environment by each process that needs them
(``{"env": ...}`` config), so a password in them never lands in a run's stored config.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

EXECUTOR_ENV = "FEEDRANK_EXECUTOR"
BROKER_ENV = "FEEDRANK_CELERY_BROKER"
BACKEND_ENV = "FEEDRANK_CELERY_BACKEND"
EXECUTORS = ("multiprocess", "celery", "k8s")

# A step is acknowledged when it ends, not when a worker takes it, and a worker that dies while
# running it (SIGKILL, a lost host) hands it back: the broker delivers it to another worker. Each
# worker takes one step at a time (a step uses a core and up to 2 GB at full size).
CELERY_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
}


def executor_name() -> str:
    """``FEEDRANK_EXECUTOR``, checked: one of EXECUTORS (unset: ``multiprocess``)."""
    name = os.environ.get(EXECUTOR_ENV, "").strip() or "multiprocess"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}: must be one of {', '.join(EXECUTORS)}, got {name!r}")
    return name


def celery_config() -> dict[str, Any]:
    """The Celery executor's config, the same for the run (which sends steps) and the workers
    (celery_worker.py); the URLs as ``{"env": ...}`` references."""
    if not os.environ.get(BROKER_ENV):
        raise ValueError(f"{BROKER_ENV}: required with {EXECUTOR_ENV}=celery (e.g. pyamqp://guest@rabbitmq:5672//)")
    backend: Any = {"env": BACKEND_ENV} if os.environ.get(BACKEND_ENV) else "rpc://"
    return {"broker": {"env": BROKER_ENV}, "backend": backend, "config_source": dict(CELERY_SETTINGS)}


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor of the code location's jobs; ``None``: Dagster's default (multiprocess)."""
    name = executor_name()
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(), name="celery")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return None
