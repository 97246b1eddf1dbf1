"""Several CINNOX apps in one deployment: two simulator instances, one asset set per app, shared tables."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from campaign_pipeline.defs.backfill import run_backfill
from campaign_pipeline.defs.definitions import build_definitions
from tests.conftest import FIRST_DAY, pipeline_env, read_table, start_simulator, table_fingerprint

START, END = FIRST_DAY, FIRST_DAY + timedelta(days=1)


@pytest.fixture
def two_apps(tmp_path, monkeypatch):
    hk = start_simulator(seed=21, app_id="app-hk", token="token-hk-0001")
    sg = start_simulator(seed=22, app_id="app-sg", token="token-sg-0001", campaigns_per_day=3)
    pipeline_env(monkeypatch, hk, tmp_path, CAMPAIGN_APPS="hk,sg")
    for name, server in (("HK", hk), ("SG", sg)):
        monkeypatch.setenv(f"CINNOX_{name}_BASE_URL", server.base_url)
        monkeypatch.setenv(f"CINNOX_{name}_APP_ID", server.app_id)
        monkeypatch.setenv(f"CINNOX_{name}_APP_TOKEN", server.token)
    yield {"app-hk": hk, "app-sg": sg}
    hk.stop()
    sg.stop()


def _truth(server):
    return server.simulator.ground_truth(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))


def test_two_apps_load_into_shared_tables_with_app_id(two_apps, tmp_path):
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.get_repository_def().asset_graph.get_all_asset_keys()}
    assert {"hk/sms_messages", "sg/sms_messages", "hk/raw_campaign_responses"} <= keys

    outcome = run_backfill(START, END)
    assert outcome.success, outcome.failure
    warehouse = tmp_path / "warehouse.duckdb"
    campaigns = read_table(warehouse, "campaigns", "app_id, campaign_id")
    for app_id, server in two_apps.items():
        truth = _truth(server)
        assert sorted(r["campaign_id"] for r in campaigns if r["app_id"] == app_id) == sorted(
            c["campaign_id"] for c in truth.campaigns)
        messages = [r for t in ("sms_messages", "whatsapp_messages") for r in read_table(warehouse, t)
                    if r["app_id"] == app_id]
        assert Counter(r["status"] for r in messages) == Counter(m["status"] for m in truth.messages)
        keys = [(r["campaign_id"], r["recipient"]) for r in messages]
        assert len(keys) == len(set(keys))
    files = sorted(p.name for p in (tmp_path / "lake" / "sms_messages" / "date=2024-05-01").iterdir())
    assert files == ["part-hk.parquet", "part-sg.parquet"]

    # Re-loading one app's day replaces only that app's rows.
    before = table_fingerprint(warehouse)
    assert run_backfill(START, START).success
    assert table_fingerprint(warehouse) == before


def test_each_app_gets_its_own_checks(two_apps):
    instance = dg.DagsterInstance.ephemeral()
    assert run_backfill(START, START, instance=instance).success
    for prefix in ("hk", "sg"):
        key = dg.AssetCheckKey(dg.AssetKey([prefix, "campaigns"]), "reconciles_with_details")
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert record is not None and record.event.dagster_event.event_specific_data.passed
