"""Pure transforms, the Parquet lake and the DuckDB warehouse, each on real files in a temp dir."""

from __future__ import annotations

import random
from datetime import date

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from campaign_pipeline.model import schemas
from campaign_pipeline.model.transform import DaySplitter, deduplicate_latest, latest_row_indices
from campaign_pipeline.model.windows import PartitionWindow
from campaign_pipeline.storage.lake import Lake
from campaign_pipeline.storage.warehouse import Warehouse, WarehouseError

DAY = date(2024, 5, 1)
APP = "app-1"


def summary(cid: str, when: str, channel: str = "SMS", total: int = 1) -> dict:
    return {"id": cid, "date": when, "channel": channel, "campaignName": "n", "createdBy": "ops",
            "sender": {"phone": "ACME", "senderEID": "e1"}, "totalRecipients": total, "delivered": total}


def detail(cid: str, recipient: str, updated: str, status: str = "Delivered", when="2024-05-01T10:00:00Z") -> dict:
    return {"id": cid, "date": when, "sender": {"phone": "ACME", "senderEID": "e1"}, "recipient": recipient,
            "recipientCountry": "HK", "content": "hi", "numSMS": 1, "status": status,
            "carrierNetworkStatus": "Delivered", "lastUpdatedDateTime": updated}


def split(summary_records, details_by_campaign, tz="UTC"):
    splitter = DaySplitter(PartitionWindow.for_day(DAY, tz), APP)
    splitter.add_summary_records(summary_records)
    for cid, rows in details_by_campaign.items():
        splitter.add_detail_records(cid, rows)
    return splitter.finish()


def test_split_drops_campaigns_outside_the_window_including_the_inclusive_end_edge():
    result = split([summary("in", "2024-05-01T00:00:00.000Z"), summary("edge", "2024-05-02T00:00:00.000Z"),
                    summary("before", "2024-04-30T23:59:59.999Z")], {})
    assert result.tables["campaigns"]["campaign_id"].to_pylist() == ["in"]
    assert result.stats.campaigns_out_of_window == 2


def test_split_keeps_latest_last_updated_among_duplicate_recipients():
    rows = [detail("c", "+85291234567", "2024-05-01T10:05:00Z", "Delivered"),
            detail("c", "+85291234567", "2024-05-01T10:01:00Z", "Submitted"),
            detail("c", "+85291234568", "2024-05-01T10:01:00Z", "Pending")]
    result = split([summary("c", "2024-05-01T10:00:00Z", total=2)], {"c": rows})
    table = result.tables["sms_messages"]
    assert table.num_rows == 2
    assert dict(zip(table["recipient"].to_pylist(), table["status"].to_pylist(), strict=True)) == {
        "+85291234567": "Delivered", "+85291234568": "Pending"}
    assert result.stats.duplicate_messages_dropped == 1


def test_split_rejects_bad_records_and_loads_the_rest():
    rows = [detail("c", "+85291234567", "2024-05-01T10:05:00Z"), {**detail("c", "", "2024-05-01T10:05:00Z")},
            detail("c", "+85291234569", "2024-05-01T10:05:00Z", when="not-a-date")]
    result = split([summary("c", "2024-05-01T10:00:00Z"), {"date": "2024-05-01T10:00:00Z"}], {"c": rows})
    rejected = result.tables["rejected_records"].to_pylist()
    assert sorted(r["reason"] for r in rejected) == ["missing id", "missing recipient", "unparseable date"]
    assert result.tables["sms_messages"].num_rows == 1
    assert all(r["partition_date"] == DAY for r in rejected)


def test_split_output_matches_declared_schemas():
    result = split([summary("c", "2024-05-01T10:00:00Z")], {"c": [detail("c", "+85291234567", "2024-05-01T10:05:00Z")]})
    for name, table in result.tables.items():
        assert table.schema == schemas.TABLES[name].schema, name
        assert set(table["app_id"].to_pylist()) <= {APP}


def test_split_uses_partition_timezone_for_membership():
    # 20:00Z on 2024-04-30 is 04:00 on 2024-05-01 in Hong Kong.
    result = split([summary("hk", "2024-04-30T20:00:00Z"), summary("late", "2024-05-01T20:00:00Z")], {},
                   tz="Asia/Hong_Kong")
    assert result.tables["campaigns"]["campaign_id"].to_pylist() == ["hk"]


def test_deduplicate_latest_prefers_non_null_and_later_arrival_on_ties():
    table = pa.table({"k": ["a", "a", "a", "b"], "v": [1, None, 1, None], "tag": ["first", "null", "last", "only"]})
    out = deduplicate_latest(table, ("k",), "v")
    assert out["tag"].to_pylist() == ["last", "only"]


@pytest.mark.parametrize("seed", range(12))
def test_latest_row_indices_matches_a_plain_python_reference(seed):
    # Half the tables have unique keys (the sort-only fast path), half have duplicates (full path).
    rng = random.Random(seed)
    rows = 1 + rng.randrange(40)
    key_space = rows * 4 if seed % 2 == 0 else max(1, rows // 3)
    keys = rng.sample(range(key_space), rows) if seed % 2 == 0 else [rng.randrange(key_space) for _ in range(rows)]
    table = pa.table({
        "c": ["x"] * rows,
        "k": [f"+65{key:08d}" for key in keys],
        "v": [None if rng.random() < 0.2 else rng.randrange(3) for _ in range(rows)],
    })
    best: dict = {}
    for arrival, (key, value) in enumerate(zip(table["k"].to_pylist(), table["v"].to_pylist(), strict=True)):
        rank = (value is not None, value if value is not None else 0, arrival)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, arrival)
    expected = [best[key][1] for key in sorted(best)]
    for key_columns in (("k",), ("c", "k")):
        assert latest_row_indices(table, key_columns, "v").to_pylist() == expected


def test_parquet_keeps_dictionaries_for_repeating_columns_only(tmp_path):
    for spec in schemas.TABLES.values():
        assert set(spec.mostly_unique_columns) <= set(spec.schema.names), spec.name
    rows = 300
    table = pa.table({
        "app_id": ["app"] * rows, "campaign_id": [f"c{n % 3}" for n in range(rows)],
        "recipient": [f"+6580{n:06d}" for n in range(rows)], "partition_date": [DAY] * rows,
        "sent_at": pa.array([n % 3 * 1_000_000 for n in range(rows)], schemas.TIMESTAMP_UTC),
        "sender_phone": ["+6588001234"] * rows, "sender_eid": ["eid"] * rows, "recipient_country": ["SG"] * rows,
        "content": [f"Hello {n}" for n in range(rows)], "num_sms": pa.array([1] * rows, pa.int32()),
        "status": ["Delivered"] * rows, "carrier_network_status": [None] * rows,
        "last_updated_at": pa.array([1_000_000 + n for n in range(rows)], schemas.TIMESTAMP_UTC),
    }, schema=schemas.SMS_MESSAGES_SCHEMA)
    path = Lake(str(tmp_path / "lake")).write_parquet(schemas.SMS_MESSAGES.name, DAY, table)
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    dictionary_encoded = {metadata.column(i).path_in_schema for i in range(metadata.num_columns)
                          if any("DICTIONARY" in encoding for encoding in metadata.column(i).encodings)}
    assert dictionary_encoded == set(table.column_names) - set(schemas.SMS_MESSAGES.mostly_unique_columns)


def test_lake_parquet_write_is_atomic_and_replaces(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    table = pa.table({"x": [1, 2]})
    lake.write_parquet("t", DAY, table)
    lake.write_parquet("t", DAY, pa.table({"x": [3]}))
    assert lake.read_parquet("t", DAY)["x"].to_pylist() == [3]
    files = [p.name for p in (tmp_path / "lake" / "t" / "date=2024-05-01").iterdir()]
    assert files == ["part-default.parquet"]


def test_lake_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with lake.raw_writer(DAY) as writer:
        writer.write_page("summary", None, 0, [{"id": "old"}])
    writer.staged.commit()
    with lake.raw_writer(DAY) as writer:  # complete, but never committed (its day failed its checks)
        writer.write_page("summary", None, 0, [{"id": "rejected"}])
    assert [p.records for p in lake.iter_raw_pages(DAY)] == [[{"id": "old"}]]
    writer.staged.discard()
    with pytest.raises(RuntimeError):
        with lake.raw_writer(DAY) as writer:
            writer.write_page("summary", None, 0, [{"id": "new"}])
            raise RuntimeError("crash mid-landing")
    pages = list(lake.iter_raw_pages(DAY))
    assert [p.records for p in pages] == [[{"id": "old"}]]
    assert sorted(p.name for p in (tmp_path / "lake" / "raw" / "date=2024-05-01").iterdir()) == ["responses-default.ndjson.zst"]


def test_landed_response_bodies_read_back_as_their_records(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    first = [detail("c", "+85291234567", "2024-05-01T10:05:00Z"), detail("c", "+85291234568", "")]
    second = [detail("c", "+85291234569", "2024-05-01T10:06:00Z")]
    pretty = orjson.dumps({"code": 0, "result": second}, option=orjson.OPT_INDENT_2)
    assert b"\n" in pretty
    with lake.raw_writer(DAY) as writer:
        writer.write_page("summary", None, 0, [summary("c", "2024-05-01T10:00:00Z")])
        writer.write_response("detail", "c", 0, orjson.dumps({"code": 0, "message": "ok", "result": first}), 2)
        writer.write_response("detail", "c", 2, pretty, 1)  # spread over lines: re-encoded onto one
    writer.staged.commit()
    assert (writer.pages, writer.records) == (3, 4)
    pages = list(lake.iter_raw_pages(DAY))
    assert [(p.endpoint, p.history_id, p.offset) for p in pages] == [("summary", None, 0), ("detail", "c", 0),
                                                                    ("detail", "c", 2)]
    assert [p.records for p in pages[1:]] == [first, second]


def test_warehouse_replace_partition_is_idempotent(tmp_path):
    result = split([summary("c", "2024-05-01T10:00:00Z")], {"c": [detail("c", "+85291234567", "2024-05-01T10:05:00Z")]})
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.replace_partition(DAY, result.tables, APP)
    warehouse.replace_partition(DAY, result.tables, APP)
    with warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM sms_messages").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM campaigns").fetchone() == (1,)
        assert con.execute("SELECT messages, delivery_rate FROM delivery_rates_daily").fetchone() == (1, 1.0)


def test_warehouse_rolls_back_the_whole_day_on_failure(tmp_path):
    result = split([summary("c", "2024-05-01T10:00:00Z")], {"c": [detail("c", "+85291234567", "2024-05-01T10:05:00Z")]})
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.replace_partition(DAY, result.tables, APP)
    broken = dict(result.tables)
    broken["sms_messages"] = pa.table({"nonsense": [1]})
    with pytest.raises((pa.ArrowInvalid, ValueError, KeyError)):
        warehouse.replace_partition(DAY, broken, APP)
    with warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM campaigns").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM sms_messages").fetchone() == (1,)


def test_warehouse_schema_drift_fails_loudly(tmp_path):
    import duckdb

    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE campaigns (campaign_id VARCHAR)")
    con.close()
    with pytest.raises(WarehouseError, match="campaigns"):
        with Warehouse(path).writer():
            pass


def test_warehouse_replaces_one_app_without_touching_another(tmp_path):
    result = split([summary("c", "2024-05-01T10:00:00Z")], {"c": [detail("c", "+85291234567", "2024-05-01T10:05:00Z")]})
    other = DaySplitter(PartitionWindow.for_day(DAY, "UTC"), "app-2")
    other.add_summary_records([summary("d", "2024-05-01T11:00:00Z")])
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.replace_partition(DAY, result.tables, APP)
    warehouse.replace_partition(DAY, other.finish().tables, "app-2")
    warehouse.replace_partition(DAY, result.tables, APP)
    with warehouse.reader() as con:
        assert con.execute("SELECT app_id, campaign_id FROM campaigns ORDER BY 1").fetchall() == [
            ("app-1", "c"), ("app-2", "d")]
