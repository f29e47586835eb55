"""The daily rebuild: 02:00 UTC, the whole graph, every user shard in one run. The experiment
reports: 00:30 UTC, the day that just ended."""

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG


def all_shards_tags(shards: dg.PartitionsDefinition | None) -> dict[str, str]:
    """Run tags that make one run cover every user shard (the assets' single-run backfill policy
    lets one step handle a range of shards); none when the graph is not partitioned."""
    if shards is None:
        return {}
    keys = shards.get_partition_keys()
    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


def build_daily_schedule(
    job, shards: dg.PartitionsDefinition | None
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_recommendations",
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Rebuilds everyone's recommendations daily at 02:00 UTC (all shards, one run).",
    )
    def daily_recommendations(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(
            run_key=context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M"),
            tags=all_shards_tags(shards),
        )

    return daily_recommendations


def build_report_schedule(job) -> dg.ScheduleDefinition:
    """``experiment_report`` of the day that just ended, at 00:30 UTC (a day's report is
    cumulative: each experiment from its start to the end of that day)."""
    return dg.build_schedule_from_partitioned_job(
        job, name="daily_experiment_reports", hour_of_day=0, minute_of_hour=30,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The experiment reports of the day that just ended, at 00:30 UTC.",
    )
