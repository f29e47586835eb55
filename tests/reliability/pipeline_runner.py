"""Runs the whole pipeline graph once, in this process (``dg.materialize``), against
``DATABASE_URL`` / ``REDIS_URL`` / ``REDIS_KEY_PREFIX``, storing intermediate values under argv[1].

The reliability tests start it as a subprocess so that they can SIGKILL it mid-write, or start two
at once. Exit code 0 when the run succeeded.
"""

import os
import sys

import dagster as dg

from dagster_pipeline.assets import build_assets
from dagster_pipeline.checks import ALL_CHECKS
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource, ScoringResource


def main() -> int:
    storage = sys.argv[1]
    result = dg.materialize(
        [*build_assets(None), *ALL_CHECKS],
        resources={
            "postgres": PostgresResource(database_url=os.environ["DATABASE_URL"]),
            "redis": RedisResource(redis_url=os.environ["REDIS_URL"],
                                   key_prefix=os.environ.get("REDIS_KEY_PREFIX", "")),
            "notifier": AlertNotifier(),
            "io_manager": BundleIOManager(base_dir=storage),
            "scoring": ScoringResource(),
        },
        raise_on_error=False,
    )
    print("pipeline run", "succeeded" if result.success else "FAILED", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
