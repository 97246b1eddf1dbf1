"""The partitioned job and its daily schedule."""

from __future__ import annotations

import dagster as dg

JOB_NAME = "campaign_daily_job"


def build_job_and_schedule(partitions: dg.DailyPartitionsDefinition):
    """A job over every partitioned asset and a schedule that runs it daily for the latest
    complete day (the partition that ended at midnight in the partition timezone)."""
    job = dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.all(),
        description="Fetch, land, split and load CINNOX sent campaigns for the selected day(s).",
    )
    schedule = dg.build_schedule_from_partitioned_job(job, hour_of_day=1, minute_of_hour=0)
    return job, schedule
