"""Never lose or hide data: write, audit, then publish each day; a worse version never replaces a
good one; the landing file is a checked source; poison values become rejected records."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from campaign_pipeline import engine
from campaign_pipeline.config import PipelineConfig
from campaign_pipeline.model import records
from campaign_pipeline.model.windows import PartitionWindow
from tests.conftest import FIRST_DAY, read_table, simulator_env, start_simulator, table_fingerprint
from tests.unit.storage.test_transform_lake_warehouse import APP, detail, split, summary

ROOT = Path(__file__).resolve().parents[2]
DAY = FIRST_DAY
LATER = datetime(2024, 5, 20, 12, tzinfo=UTC)


def run(server, data_dir: Path, resplit: bool = False, allow_shrink: bool = False, **extra) -> engine.DayResult:
    """One day through the engine (as the CLI runs it), against ``server``."""
    cfg = PipelineConfig.from_env(simulator_env(server, data_dir, **extra))
    options = engine.RunOptions(resplit=resplit, allow_shrink=allow_shrink, run_id="test-run")
    (result,) = engine.run_range(cfg, DAY, DAY, options)
    return result


def snapshot(data_dir: Path) -> tuple[dict, dict]:
    """What readers see: every table's content and every published lake file's bytes."""
    lake = data_dir / "lake"
    files = {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in lake.rglob("*") if p.is_file() and "_quarantine" not in p.parts}
    return table_fingerprint(data_dir / "warehouse.duckdb"), files


@pytest.fixture
def good_day(tmp_path):
    """DAY loaded once from a simulator at a late clock (every campaign sent and settled)."""
    server = start_simulator(now=LATER)
    result = run(server, tmp_path)
    assert result.published, result.failure
    yield server, tmp_path, snapshot(tmp_path)
    server.stop()


def test_a_run_gives_the_process_its_garbage_collector_back(good_day):
    """While a run lasts the engine collects young objects rarely (engine.py); a front end's
    process (a Dagster run worker, a notebook) has its own thresholds back once the run ends."""
    server, data_dir, _ = good_day
    before = gc.get_threshold()
    cfg = PipelineConfig.from_env(simulator_env(server, data_dir))
    during = [gc.get_threshold() for _ in engine.run_range(cfg, DAY, DAY, engine.RunOptions(run_id="gc"))]
    assert during == [(10_000, *before[1:])]
    assert gc.get_threshold() == before


def test_an_empty_reload_never_erases_a_published_day(good_day):
    _, data_dir, before = good_day
    early = start_simulator(now=LATER, empty_summary=True)  # a bad night: the summary answers nothing
    try:
        result = run(early, data_dir)
        assert not result.published
        assert "no_unexplained_shrink" in result.failure and "quarantined in" in result.failure
        assert snapshot(data_dir) == before  # tables, views' inputs, lake files and landing file unchanged
        # The rejected version is kept aside with its check results.
        quarantine = data_dir / "lake" / "_quarantine" / f"date={DAY.isoformat()}" / "run=test-run"
        checks = json.loads((quarantine / "checks-default.json").read_text())
        failed = {c["check"] for c in checks["checks"] if not c["passed"] and c["blocking"]}
        assert failed == {"no_unexplained_shrink"}
        assert (quarantine / "raw-responses-default.ndjson.zst").is_file()
        assert (quarantine / "campaigns-part-default.parquet").is_file()
        # With --allow-shrink the user says the smaller day is right, and it is published.
        allowed = run(early, data_dir, allow_shrink=True)
        assert allowed.published, allowed.failure
        assert read_table(data_dir / "warehouse.duckdb", "campaigns", "campaign_id") == []
    finally:
        early.stop()


def test_a_blocking_check_failure_leaves_the_report_identical(good_day, tmp_path):
    server, data_dir, before = good_day
    env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_"))}
    env.update(simulator_env(server, data_dir))
    report = [sys.executable, "-m", "campaign_pipeline.cli", "report", "--start", DAY.isoformat(), "--end",
              DAY.isoformat(), "--by", "campaign"]
    first = subprocess.run(report, env=env, capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    backfill = [sys.executable, "-m", "campaign_pipeline.cli", "backfill", "--start", DAY.isoformat(), "--end",
                DAY.isoformat()]
    early = start_simulator(now=LATER, empty_summary=True)
    try:
        env_early = {**env, **simulator_env(early, data_dir)}
        failed = subprocess.run(backfill, env=env_early, capture_output=True, text=True, cwd=ROOT, timeout=300,
                                check=False)
    finally:
        early.stop()
    assert failed.returncode == 1
    assert f"{DAY.isoformat()}: blocking check failed (campaigns:no_unexplained_shrink)" in failed.stderr
    second = subprocess.run(report, env=env, capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    assert second.stdout == first.stdout and first.stdout.strip()
    assert snapshot(data_dir) == before


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated", "flipped_bit", "missing"])
def test_a_damaged_landing_file_fails_the_resplit_and_keeps_the_published_day(good_day, damage):
    server, data_dir, before = good_day
    landing = next((data_dir / "lake" / "raw").rglob("responses-default.ndjson.zst"))
    data = landing.read_bytes()
    if damage == "zero_bytes":
        landing.write_bytes(b"")
    elif damage == "truncated":
        landing.write_bytes(data[: len(data) // 2])
    elif damage == "flipped_bit":
        landing.write_bytes(data[:-40] + bytes([data[-40] ^ 0x01]) + data[-39:])
    else:
        landing.unlink()
    result = run(server, data_dir, resplit=True)
    assert not result.published
    expected = "no landed data" if damage == "missing" else "landing file"
    assert expected in result.failure
    tables, files = snapshot(data_dir)
    assert tables == before[0]
    assert {k: v for k, v in files.items() if not k.startswith("raw/")} == {
        k: v for k, v in before[1].items() if not k.startswith("raw/")}


def test_a_resplit_of_an_intact_landing_file_gives_identical_tables(good_day):
    server, data_dir, before = good_day
    result = run(server, data_dir, resplit=True)
    assert result.published, result.failure
    assert snapshot(data_dir) == before


def test_the_partition_timezone_is_pinned_to_the_data_dir(good_day):
    server, data_dir, before = good_day
    env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_"))}
    env.update(simulator_env(server, data_dir, CAMPAIGN_PARTITION_TZ="Asia/Hong_Kong"))
    result = subprocess.run([sys.executable, "-m", "campaign_pipeline.cli", "backfill", "--start", "2024-05-02",
                             "--end", "2024-05-02"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120,
                            check=False)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "CAMPAIGN_PARTITION_TZ=UTC" in line and "CAMPAIGN_PARTITION_TZ=Asia/Hong_Kong" in line
    assert snapshot(data_dir) == before


# --- the splitter: one rule per case --------------------------------------------------------------


def test_a_campaign_listed_twice_keeps_the_copy_listed_last():
    stale = {**summary("c", "2024-05-01T10:00:00Z", total=1), "campaignName": "STALE"}
    real = {**summary("c", "2024-05-01T10:00:00Z", total=2), "campaignName": "real"}
    result = split([stale, real], {"c": [detail("c", "+85291234567", ""), detail("c", "+85291234568", "")]})
    (row,) = result.tables["campaigns"].to_pylist()
    assert (row["campaign_name"], row["total_recipients"]) == ("real", 2)
    assert result.stats.duplicate_campaigns_dropped == 1


@pytest.mark.parametrize(("bad", "reason"), [({"date": "2024-05-01T10:00:00"}, "date has no UTC offset"),
                                             ({"channel": "WhatsApp Business"}, "unknown channel")])
def test_an_untypeable_summary_record_still_has_its_details_fetched_and_fails_the_day(bad, reason):
    from campaign_pipeline.model.transform import DaySplitter

    splitter = DaySplitter(PartitionWindow.for_day(DAY, "UTC"), "app")
    splitter.add_summary_records([{**summary("odd", "2024-05-01T10:00:00Z", total=2), **bad},
                                  summary("ok", "2024-05-01T11:00:00Z")])
    assert splitter.campaigns_to_fetch == {"ok": 1, "odd": None}
    splitter.add_detail_records("odd", [detail("odd", "+85291234567", ""), detail("odd", "+85291234568", "")])
    splitter.add_detail_records("ok", [detail("ok", "+85291234569", "")])
    tables = splitter.finish()
    rejected = tables.tables["rejected_records"].to_pylist()
    # The two messages are counted as rejected (not one summary record), with the reason.
    assert sorted((r["endpoint"], r["campaign_id"], r["reason"]) for r in rejected) == [
        ("detail", "odd", f"campaign summary rejected: {reason}")] * 2 + [("summary", "odd", reason)]
    assert tables.stats.unplaced_campaigns == {"odd": reason}
    from campaign_pipeline import quality

    outcome = quality.check_campaigns_placed(tables.stats)
    assert not outcome.passed and outcome.spec.blocking and "odd" in outcome.description


@pytest.mark.parametrize(("field", "value", "reason"), [("numSMS", 3_000_000_000, "numSMS out of range"),
                                                        ("numSMS", "1e20", "numSMS out of range"),
                                                        ("content", "ok \ud83d", "text is not valid Unicode")])
def test_a_poison_value_rejects_its_record_and_the_rest_of_the_day_loads(field, value, reason):
    poisoned = {**detail("c", "+85291234567", ""), field: value}
    result = split([summary("c", "2024-05-01T10:00:00Z", total=2)],
                   {"c": [poisoned, detail("c", "+85291234568", "")]})
    assert result.tables["sms_messages"]["recipient"].to_pylist() == ["+85291234568"]
    (rejected,) = result.tables["rejected_records"].to_pylist()
    assert rejected["reason"] == reason
    json.loads(rejected["raw_record"])  # stored as valid JSON text, escapes kept


def test_a_summary_count_out_of_range_becomes_null_with_its_reason():
    poisoned = {**summary("c", "2024-05-01T10:00:00Z"), "replied": 10**20}
    row = records.parse_campaign(poisoned)
    assert row["replied"] is None and row["nulled"] == ["replied out of range (stored as NULL)"]
    result = split([poisoned], {"c": [detail("c", "+85291234567", "")]})
    (campaign,) = result.tables["campaigns"].to_pylist()
    assert campaign["replied"] is None and campaign["total_recipients"] == 1
    (rejected,) = result.tables["rejected_records"].to_pylist()
    assert (rejected["endpoint"], rejected["campaign_id"], rejected["reason"]) == (
        "summary", "c", "replied out of range (stored as NULL)")


# --- the whole pipeline against misbehaving servers (the simulator's modes) -------------------------


def _truth(server):
    from campaign_pipeline.simulator import day_bounds_utc

    return server.simulator.ground_truth(*day_bounds_utc(DAY))


def run_on(data_dir: Path, extra_env: dict | None = None, **modes):
    """One engine run of DAY against a simulator started with ``modes`` (late clock); returns the
    day's result and the simulator's ground truth for DAY."""
    server = start_simulator(now=LATER, **modes)
    try:
        return run(server, data_dir, **(extra_env or {})), _truth(server)
    finally:
        server.stop()


def _loaded_messages(data_dir: Path) -> set[tuple[str, str]]:
    return {(r["campaign_id"], r["recipient"]) for table in ("sms_messages", "whatsapp_messages")
            for r in read_table(data_dir / "warehouse.duckdb", table)}


def test_a_server_capping_its_pages_still_loads_every_campaign_and_recipient(tmp_path):
    result, truth = run_on(tmp_path, campaigns_per_day=30, recipients_per_campaign=300,
                           summary_page_cap=7, detail_page_cap=60)
    assert result.published, result.failure
    campaigns = {r["campaign_id"] for r in read_table(tmp_path / "warehouse.duckdb", "campaigns", "campaign_id")}
    assert campaigns == {c["campaign_id"] for c in truth.campaigns} and len(campaigns) >= 25
    assert _loaded_messages(tmp_path) == {(m["campaign_id"], m["recipient"]) for m in truth.messages}


def test_a_truncated_reload_is_quarantined_and_the_good_day_kept(good_day):
    _, data_dir, before = good_day
    result, _ = run_on(data_dir, truncate_details=True)
    assert not result.published
    assert "campaigns:reconciles_with_details" in result.failure
    assert snapshot(data_dir) == before
    quarantine = data_dir / "lake" / "_quarantine" / f"date={DAY.isoformat()}" / "run=test-run"
    checks = json.loads((quarantine / "checks-default.json").read_text())
    assert "reconciles_with_details" in {c["check"] for c in checks["checks"] if not c["passed"] and c["blocking"]}
    assert checks["inserted"]["sms_messages"] + checks["inserted"]["whatsapp_messages"] < sum(
        1 for _ in read_table(data_dir / "warehouse.duckdb", "sms_messages")) + sum(
        1 for _ in read_table(data_dir / "warehouse.duckdb", "whatsapp_messages"))


def test_poison_values_become_rejected_records_and_the_rest_of_the_day_loads(tmp_path):
    result, truth = run_on(tmp_path, {"CAMPAIGN_REJECTED_THRESHOLD": "0.5"}, poison_values=True, campaigns_per_day=6)
    assert result.published, result.failure
    rejected = read_table(tmp_path / "warehouse.duckdb", "rejected_records", "endpoint, campaign_id, reason")
    poisoned = [r for r in truth.rejected if r["reason_kind"] in ("num_sms_out_of_range", "invalid_unicode")]
    assert sorted(r["reason"] for r in rejected if r["endpoint"] == "detail") == sorted(
        {"num_sms_out_of_range": "numSMS out of range", "invalid_unicode": "text is not valid Unicode"}[r["reason_kind"]]
        for r in poisoned) != []
    # The summary count of 10^20 is stored as NULL (with its reason): the campaign and its messages load.
    (summary_row,) = [r for r in rejected if r["endpoint"] == "summary"]
    assert summary_row["reason"].endswith("out of range (stored as NULL)")
    campaigns = {r["campaign_id"] for r in read_table(tmp_path / "warehouse.duckdb", "campaigns", "campaign_id")}
    assert summary_row["campaign_id"] in campaigns
    expected = {(m["campaign_id"], m["recipient"]) for m in truth.messages}
    assert _loaded_messages(tmp_path) >= expected and len(_loaded_messages(tmp_path)) > 0


@pytest.mark.parametrize("mode", ["naive_dates", "odd_channel"])
def test_a_campaign_whose_summary_cannot_be_typed_fails_the_day_instead_of_disappearing(good_day, mode):
    _, data_dir, before = good_day
    result, truth = run_on(data_dir, **{mode: True})
    (anomaly,) = [a for a in truth.anomalies if a["mode"] == mode]
    assert not result.published and "campaigns:campaigns_placed" in result.failure
    assert anomaly["campaign_id"] in result.failure or anomaly["campaign_id"] in json.dumps(
        [c.metadata for c in result.checks])
    assert snapshot(data_dir) == before
    # Its details were fetched and landed (in the quarantined version), counted as rejected messages.
    quarantine = data_dir / "lake" / "_quarantine" / f"date={DAY.isoformat()}" / "run=test-run"
    import pyarrow.parquet as pq

    rejected = pq.read_table(quarantine / "rejected_records-part-default.parquet").to_pylist()
    detail_rows = [r for r in rejected if r["endpoint"] == "detail" and r["campaign_id"] == anomaly["campaign_id"]]
    assert detail_rows and all(r["reason"].startswith("campaign summary rejected") for r in detail_rows)


def test_a_duplicated_summary_entry_stores_and_checks_the_real_copy(tmp_path):
    result, truth = run_on(tmp_path, duplicate_summary=True)
    assert result.published, result.failure
    (anomaly,) = [a for a in truth.anomalies if a["mode"] == "duplicate_summary"]
    rows = {r["campaign_id"]: r for r in read_table(tmp_path / "warehouse.duckdb", "campaigns", "campaign_id")}
    stored = rows[anomaly["campaign_id"]]
    assert stored["campaign_name"] != "STALE" and stored["total_recipients"] > 1
    assert rows.keys() == {c["campaign_id"] for c in truth.campaigns}


def test_bom_bodies_load_and_their_landing_file_re_splits(tmp_path):
    server = start_simulator(now=LATER, bom_bodies=True)
    try:
        fetched = run(server, tmp_path)
        before = snapshot(tmp_path)
        resplit = run(server, tmp_path, resplit=True)
    finally:
        server.stop()
    assert fetched.published and resplit.published, (fetched.failure, resplit.failure)
    assert snapshot(tmp_path) == before


def test_a_data_dir_with_glob_characters_in_its_path_loads(tmp_path):
    """DuckDB's read_parquet reads a path as a glob: a data dir named like `cinnox[prod]` must still load."""
    result, _ = run_on(tmp_path / "cinnox[prod]*")
    assert result.published, result.failure
    assert read_table(tmp_path / "cinnox[prod]*" / "warehouse.duckdb", "campaigns", "campaign_id")


def test_a_record_for_another_campaign_does_not_count_toward_this_ones_reconciliation(tmp_path):
    from campaign_pipeline import quality
    from campaign_pipeline.model.transform import SplitStats
    from campaign_pipeline.storage.warehouse import Warehouse

    window = PartitionWindow.for_day(DAY, "UTC")
    result = split([summary("c", "2024-05-01T10:00:00Z", total=2)],
                   {"c": [detail("other", "+85291234567", ""), detail("other", "+85291234568", "")]})
    assert [r["reason"] for r in result.tables["rejected_records"].to_pylist()] == ["id does not match historyID"] * 2
    warehouse = Warehouse(tmp_path / "w.duckdb")
    outcomes = {}

    def audit(con) -> bool:
        outcomes.update({o.spec.name: o for o in quality.evaluate_day(con, window, APP, SplitStats(), None, 1.0)})
        return True

    warehouse.replace_partition(DAY, result.tables, APP, audit)
    reconciliation = outcomes["reconciles_with_details"]
    assert not reconciliation.passed and reconciliation.metadata["mismatching_campaign_ids"] == ["c"]
