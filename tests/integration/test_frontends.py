"""The two front ends over the one engine: Dagster records each day as it completes, and its
partition status always equals what DuckDB publishes, even when a day in the middle fails."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import dagster as dg

from campaign_pipeline.defs.backfill import run_backfill
from tests.conftest import FIRST_DAY, pipeline_env, read_table

DAYS = [FIRST_DAY + timedelta(days=n) for n in range(3)]


def published_days(data_dir) -> set[str]:
    """The days DuckDB serves, per table."""
    return {row["partition_date"].isoformat()
            for table in ("campaigns", "sms_messages", "whatsapp_messages")
            for row in read_table(data_dir / "warehouse.duckdb", table, "partition_date")}


def test_a_failure_on_day_k_leaves_dagster_partitions_equal_to_the_published_days(simulator, tmp_path, monkeypatch):
    # Land all three days, then lose the middle day's landing file: a re-split of the range
    # publishes day 1, fails on day 2 and never reaches day 3.
    landed = tmp_path / "landed"
    pipeline_env(monkeypatch, simulator, landed)
    assert run_backfill(DAYS[0], DAYS[2]).success
    data_dir = tmp_path / "data"
    (data_dir / "lake").mkdir(parents=True)
    (landed / "lake" / "raw").rename(data_dir / "lake" / "raw")
    middle = data_dir / "lake" / "raw" / f"date={DAYS[1].isoformat()}"
    for path in middle.iterdir():
        path.unlink()

    pipeline_env(monkeypatch, simulator, data_dir)
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_backfill(DAYS[0], DAYS[2], resplit_only=True, instance=instance)

    assert not outcome.success
    assert DAYS[1].isoformat() in outcome.failure and "no landed data" in outcome.failure
    assert published_days(data_dir) == {DAYS[0].isoformat()}
    for table in ("campaigns", "sms_messages", "whatsapp_messages", "rejected_records"):
        materialized = instance.get_materialized_partitions(dg.AssetKey(table))
        assert materialized == {DAYS[0].isoformat()}, table
    # Day 1 was recorded as it completed: before the step failed, not at the end of the run.
    events = [record.event_log_entry.dagster_event for record in instance.get_records_for_run(outcome.run_id).records
              if record.event_log_entry.dagster_event is not None]
    kinds = [event.event_type for event in events]
    first_materialization = kinds.index(dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert first_materialization < kinds.index(dg.DagsterEventType.STEP_FAILURE)
    assert all(event.partition == DAYS[0].isoformat() for event in events
               if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION)


def test_a_backfill_records_one_materialization_per_asset_and_day(simulator, tmp_path, monkeypatch):
    pipeline_env(monkeypatch, simulator, tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_backfill(DAYS[0], DAYS[2], instance=instance)
    assert outcome.success, outcome.failure
    keys = ["raw_campaign_responses", "campaigns", "sms_messages", "whatsapp_messages", "rejected_records"]
    assert outcome.materializations == len(keys) * len(DAYS)  # no second, run-wide materialization
    for key in keys:
        assert instance.get_materialized_partitions(dg.AssetKey(key)) == {d.isoformat() for d in DAYS}


def test_per_day_progress_reaches_the_run_event_log_at_info(simulator, tmp_path, monkeypatch):
    """With python_logs.managed_python_loggers (as in the shipped instance configs), the engine's
    per-day lines and the client's warnings are in the run's event log."""
    import yaml

    settings = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "dagster.local.yaml").read_text())
    pipeline_env(monkeypatch, simulator, tmp_path)
    instance = dg.DagsterInstance.ephemeral(settings={"python_logs": settings["python_logs"]})
    outcome = run_backfill(DAYS[0], DAYS[1], instance=instance)
    assert outcome.success, outcome.failure
    messages = [(record.event_log_entry.level, record.event_log_entry.user_message)
                for record in instance.get_records_for_run(outcome.run_id).records
                if record.event_log_entry.dagster_event is None]
    published = [message for level, message in messages if "published: campaigns" in message]
    assert len(published) == 2 and all(level == logging.INFO for level, message in messages if message in published)
    assert any(DAYS[0].isoformat() in message for message in published)
