"""`make bench-api`'s serving model: the pipeline's own `serving_model` asset (with the snapshot
and the features it reads) materialized on the benchmark's database, so that the feed's
request-time sources `fresh` and `because_you_liked` run in the benchmark as they do after a
nightly run. Prints the new model's id.

    DATABASE_URL=postgres://.../feedrank_bench .venv/bin/python api/bench/serving_model.py
"""

from __future__ import annotations

import sys
import tempfile

import dagster as dg

from dagster_pipeline.assets import build_assets
from dagster_pipeline.io_manager import BundleIOManager
from dagster_pipeline.resources import AlertNotifier, PostgresResource, RedisResource, ScoringResource
from feedrank import db

SELECTION = ["user_interactions_snapshot", "post_features", "user_features", "serving_model"]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-serving-model-") as storage:
        result = dg.materialize(
            build_assets(None),
            selection=SELECTION,
            resources={
                "postgres": PostgresResource(database_url=db.database_url()),
                # not written by these assets; required by the definitions
                "redis": RedisResource(redis_url=db.redis_url(), key_prefix="bench-serving-model:"),
                "notifier": AlertNotifier(),
                "io_manager": BundleIOManager(base_dir=storage),
                "scoring": ScoringResource(),
            },
        )
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey("serving_model"):
            print(event.materialization.metadata["model_id"].value)
            return 0
    print("bench: the serving_model asset materialized nothing", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
