"""The daily rebuild: 02:00 UTC, the whole graph, all user shards in one run."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dagster_pipeline.jobs import build_recommendations
from dagster_pipeline.partitions import user_shards


def all_shards_tags() -> dict[str, str]:
    """Run tags that make one run cover every user shard (the assets' single-run backfill
    policy lets one step handle a range of shards)."""
    keys = user_shards.get_partition_keys()
    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


@dg.schedule(
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    job=build_recommendations,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuilds everyone's recommendations daily at 02:00 UTC.",
)
def daily_recommendations(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M"),
        tags=all_shards_tags(),
    )
