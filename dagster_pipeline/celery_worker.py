"""The Celery app of the pipeline's workers: ``celery -A dagster_pipeline.celery_worker worker -Q
dagster --concurrency 1`` with ``FEEDRANK_CELERY_BROKER`` (and ``FEEDRANK_CELERY_BACKEND``) as the
runs that send the steps have them (executors.py), plus what a step needs: ``DAGSTER_POSTGRES_URL``
(the instance), ``DATABASE_URL``, ``REDIS_URL``, ``FEEDRANK_STORAGE_URL`` and the AWS_* variables of
the object store, ``FEEDRANK_USER_SHARDS`` and ``FEEDRANK_EXECUTOR=celery``.

dagster-celery's own ``dagster-celery worker start`` writes these settings into a module under
DAGSTER_HOME; importing them from executors.py keeps one copy of them.
"""

from dagster._config import post_process_config
from dagster_celery.executor import CeleryExecutor, celery_executor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from dagster_pipeline.executors import celery_config


def _app_args() -> dict:
    config_type = celery_executor.config_schema.config_type
    resolved = post_process_config(config_type, celery_config()).value  # {"env": ...} read here
    return CeleryExecutor.for_cli(
        broker=resolved["broker"], backend=resolved["backend"], config_source=resolved["config_source"]
    ).app_args()


app = make_app(_app_args())
execute_plan = create_task(app)
