"""End to end through Dagster: simulator -> client -> raw landing -> Parquet -> DuckDB, vs ground truth."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pyarrow.dataset as ds
import pytest

from campaign_pipeline.defs.backfill import run_backfill
from tests.conftest import FIRST_DAY, pipeline_env, read_table, start_simulator, table_fingerprint

START, END = FIRST_DAY, FIRST_DAY + timedelta(days=2)


def truth_for(server, start: date, end: date, tz: str = "UTC"):
    zone = ZoneInfo(tz)
    lower = datetime.combine(start, time(0), tzinfo=zone).astimezone(UTC)
    upper = datetime.combine(end + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    return server.simulator.ground_truth(lower, upper)


@pytest.fixture(scope="module")
def loaded(simulator, tmp_path_factory):
    """Three days backfilled once through Dagster into a fresh data dir."""
    data_dir = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        pipeline_env(mp, simulator, data_dir)
        outcome = run_backfill(START, END)
    assert outcome.success, outcome.failure
    return data_dir, outcome


def test_backfill_loads_every_campaign_of_the_range_exactly_once(loaded, simulator):
    data_dir, outcome = loaded
    truth = truth_for(simulator, START, END)
    rows = read_table(data_dir / "warehouse.duckdb", "campaigns", "campaign_id")
    assert sorted(r["campaign_id"] for r in rows) == sorted(c["campaign_id"] for c in truth.campaigns)
    assert outcome.failed_checks == []


def test_backfill_counts_and_statuses_match_ground_truth_per_channel(loaded, simulator):
    data_dir, _ = loaded
    truth = truth_for(simulator, START, END)
    for table, channel in (("sms_messages", "SMS"), ("whatsapp_messages", "WhatsApp")):
        rows = read_table(data_dir / "warehouse.duckdb", table)
        expected = [m for m in truth.messages if m["channel"] == channel]
        assert len(rows) == len(expected) > 0
        assert Counter(r["status"] for r in rows) == Counter(m["status"] for m in expected)


@pytest.mark.parametrize("table", ["sms_messages", "whatsapp_messages"])
def test_backfill_every_column_matches_ground_truth(loaded, simulator, table):
    data_dir, _ = loaded
    truth = {(m["campaign_id"], m["recipient"]): m for m in truth_for(simulator, START, END).messages}
    rows = read_table(data_dir / "warehouse.duckdb", table)
    for row in rows:
        expected = truth[(row["campaign_id"], row["recipient"])]
        assert row["partition_date"] == expected["sent_at"].date()
        assert row["app_id"] == simulator.app_id
        for column, value in row.items():
            if column in ("partition_date", "app_id"):
                continue
            assert value == expected[column], (column, row["campaign_id"])


def test_backfill_campaign_columns_match_ground_truth(loaded, simulator):
    data_dir, _ = loaded
    truth = {c["campaign_id"]: c for c in truth_for(simulator, START, END).campaigns}
    for row in read_table(data_dir / "warehouse.duckdb", "campaigns", "campaign_id"):
        expected = truth[row["campaign_id"]]
        for column, value in row.items():
            if column not in ("partition_date", "app_id"):
                assert value == expected[column], column


def test_backfill_writes_hive_partitioned_parquet_equal_to_duckdb(loaded):
    data_dir, _ = loaded
    for table in ("campaigns", "sms_messages", "whatsapp_messages"):
        dataset = ds.dataset(data_dir / "lake" / table, format="parquet", partitioning="hive")
        dates = sorted({str(d) for d in dataset.to_table(columns=["partition_date"])["partition_date"].to_pylist()})
        assert dates == [(START + timedelta(days=i)).isoformat() for i in range(3)]
        assert dataset.count_rows() == len(read_table(data_dir / "warehouse.duckdb", table, "1"))


def test_rematerializing_a_partition_leaves_identical_tables(loaded, simulator, monkeypatch):
    data_dir, _ = loaded
    before = table_fingerprint(data_dir / "warehouse.duckdb")
    pipeline_env(monkeypatch, simulator, data_dir)
    assert run_backfill(START + timedelta(days=1), START + timedelta(days=1)).success
    assert table_fingerprint(data_dir / "warehouse.duckdb") == before
    assert run_backfill(START, END, resplit_only=True).success
    assert table_fingerprint(data_dir / "warehouse.duckdb") == before


def test_day_boundary_campaign_is_counted_once(simulator, tmp_path, monkeypatch):
    # Find a day whose campaign sits exactly at midnight: the API returns it for both adjacent windows.
    day = next(
        FIRST_DAY + timedelta(days=i) for i in range(1, 15)
        if any(c["sent_at"].time() == time(0) for c in truth_for(simulator, FIRST_DAY + timedelta(days=i),
                                                                 FIRST_DAY + timedelta(days=i)).campaigns)
    )
    pipeline_env(monkeypatch, simulator, tmp_path)
    assert run_backfill(day - timedelta(days=1), day).success
    rows = read_table(tmp_path / "warehouse.duckdb", "campaigns", "campaign_id")
    ids = [r["campaign_id"] for r in rows]
    assert len(ids) == len(set(ids))
    midnight = [r for r in rows if r["sent_at"].astimezone(UTC).time() == time(0)]
    assert any(r["partition_date"] == day for r in midnight)
    assert all(r["partition_date"] == r["sent_at"].astimezone(UTC).date() for r in midnight)


@pytest.mark.parametrize("tz", ["Asia/Hong_Kong", "America/New_York"])
def test_partition_timezone_shifts_day_boundaries(tz, tmp_path, monkeypatch):
    # 2024-03-10 is the US DST change: the New York day is 23 hours long.
    first = date(2024, 3, 9)
    server = start_simulator(now=datetime(2024, 3, 20, tzinfo=UTC))
    try:
        pipeline_env(monkeypatch, server, tmp_path, CAMPAIGN_PARTITION_TZ=tz, CAMPAIGN_PARTITION_START="2024-03-01")
        assert run_backfill(first, first + timedelta(days=1)).success
        truth = truth_for(server, first, first + timedelta(days=1), tz)
        rows = read_table(tmp_path / "warehouse.duckdb", "campaigns", "campaign_id")
        assert {r["campaign_id"]: r["partition_date"] for r in rows} == {
            c["campaign_id"]: c["sent_at"].astimezone(ZoneInfo(tz)).date() for c in truth.campaigns
        }
        messages = read_table(tmp_path / "warehouse.duckdb", "sms_messages")
        assert len(messages) == sum(1 for m in truth.messages if m["channel"] == "SMS")
    finally:
        server.stop()


def test_materializations_carry_partition_rates(simulator, tmp_path, monkeypatch):
    import dagster as dg

    pipeline_env(monkeypatch, simulator, tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert run_backfill(START, START + timedelta(days=1), instance=instance).success
    truth = truth_for(simulator, START, START)
    whatsapp = [m for m in truth.messages if m["channel"] == "WhatsApp"]
    delivered = sum(m["status"] in ("Delivered", "Read") for m in whatsapp)
    settled = sum(m["status"] != "Pending" for m in whatsapp)
    records = instance.fetch_materializations(dg.AssetKey("whatsapp_messages"), limit=10).records
    by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert set(by_partition) == {START.isoformat(), (START + timedelta(days=1)).isoformat()}
    metadata = by_partition[START.isoformat()]
    assert metadata["delivery_rate"].value == pytest.approx(delivered / settled, abs=5e-5)
    assert 0 <= metadata["read_rate"].value <= 1 and 0 <= metadata["failure_rate"].value <= 1
