"""The lake on object storage: a real S3 protocol server (moto) on loopback, same tables as local disk."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from campaign_pipeline.defs.backfill import run_backfill
from campaign_pipeline.storage.lake import Lake, s3_filesystem
from tests.conftest import FIRST_DAY, moto_s3, pipeline_env, table_fingerprint

START, END = FIRST_DAY, FIRST_DAY + timedelta(days=1)


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3("campaign-lake") as endpoint:
        yield endpoint


def test_s3_lake_tables_match_a_local_disk_run(simulator, s3_endpoint, tmp_path, monkeypatch):
    local_dir, s3_dir = tmp_path / "local", tmp_path / "s3"
    pipeline_env(monkeypatch, simulator, local_dir)
    assert run_backfill(START, END).success

    pipeline_env(monkeypatch, simulator, s3_dir, CAMPAIGN_LAKE_URI="s3://campaign-lake/prod", AWS_ENDPOINT_URL=s3_endpoint,
                 AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
    outcome = run_backfill(START, END)
    assert outcome.success, outcome.failure
    assert table_fingerprint(s3_dir / "warehouse.duckdb") == table_fingerprint(local_dir / "warehouse.duckdb")
    assert not (s3_dir / "lake").exists()  # nothing of the lake went to local disk

    fs = s3_filesystem(s3_endpoint, "us-east-1")
    for table in ("campaigns", "sms_messages", "whatsapp_messages", "rejected_records"):
        remote = ds.dataset(f"campaign-lake/prod/{table}", filesystem=fs, format="parquet", partitioning="hive")
        local = ds.dataset(local_dir / "lake" / table, format="parquet", partitioning="hive")
        assert remote.to_table().sort_by("partition_date").equals(local.to_table().sort_by("partition_date")), table
        assert sorted(p.split("/")[-2] for p in remote.files) == ["date=2024-05-01", "date=2024-05-02"]

    # Re-split straight from the landed objects: no API, identical tables.
    before = table_fingerprint(s3_dir / "warehouse.duckdb")
    assert run_backfill(START, END, resplit_only=True).success
    assert table_fingerprint(s3_dir / "warehouse.duckdb") == before


def test_a_write_that_fails_halfway_leaves_the_previous_object_intact(s3_endpoint, monkeypatch):
    """Closing an S3 stream completes the upload, so a streamed Parquet write whose source raises
    must not reach the bucket: the previous version of the day stays whole."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    lake = Lake("s3://campaign-lake/halfway", s3_endpoint_url=s3_endpoint, s3_region="us-east-1")
    table = pa.table({"n": pa.array(range(100_000), pa.int64())})
    path = lake.write_parquet("t", FIRST_DAY, table)

    def failing_batches():
        yield from table.slice(0, 40_000).to_batches(max_chunksize=4_096)
        raise OSError("staged file unreadable")

    with pytest.raises(OSError, match="unreadable"):
        lake.write_parquet("t", FIRST_DAY, pa.RecordBatchReader.from_batches(table.schema, failing_batches()))
    assert lake.read_parquet("t", FIRST_DAY).equals(table), path
