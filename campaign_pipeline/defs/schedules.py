"""The partitioned job and its daily schedule (the latest complete days, as one run)."""

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

JOB_NAME = "campaign_daily_job"
SCHEDULE_NAME = "campaign_daily_schedule"


def lookback_range(
    partitions: dg.DailyPartitionsDefinition, scheduled_time, lookback_days: int
) -> tuple[str, str] | None:
    """First and last partition key of the trailing ``lookback_days`` complete days at
    ``scheduled_time`` (clipped to the first partition), or ``None`` before the first one ends."""
    keys = partitions.get_partition_keys(current_time=scheduled_time)
    if not keys:
        return None
    window = keys[-lookback_days:]
    return window[0], window[-1]


def build_job_and_schedule(partitions: dg.DailyPartitionsDefinition, lookback_days: int = 3):
    """A job over every partitioned asset, and a schedule that runs it daily shortly after midnight
    (partition timezone) for the last ``lookback_days`` complete days, as one run: statuses keep
    changing after a day ends (Pending -> Delivered -> Read) and re-materialized days replace
    their rows."""
    job = dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.all(),
        description="Fetch, land, split and load CINNOX sent campaigns for the selected day(s).",
    )

    @dg.schedule(
        name=SCHEDULE_NAME,
        job=job,
        cron_schedule="15 0 * * *",
        execution_timezone=partitions.timezone,
        description=f"Daily at 00:15: re-materialize the last {lookback_days} complete days as one run.",
    )
    def campaign_daily_schedule(context: dg.ScheduleEvaluationContext):
        bounds = lookback_range(partitions, context.scheduled_execution_time, lookback_days)
        if bounds is None:
            return dg.SkipReason("no complete partition yet")
        first, last = bounds
        return dg.RunRequest(
            run_key=f"{first}..{last}",
            tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        )

    return job, campaign_daily_schedule
