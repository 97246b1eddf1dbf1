"""The client against a real simulator in each misbehaving-server mode: listings complete, bodies decoded;
a dripping or oversized API fails within the documented bound and with bounded memory, down to the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from campaign_pipeline.cinnox.client import UTF8_BOM, CinnoxClient, Page
from campaign_pipeline.errors import AuthError, RetriesExhaustedError
from campaign_pipeline.simulator import SimulatorServer, day_bounds_utc
from tests.conftest import FIRST_DAY, simulator_env, start_simulator

START, END = day_bounds_utc(FIRST_DAY)
ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("campaign-pipeline")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "campaign_pipeline.cli"]
# Start-up and shut-down of a CLI subprocess (imports, the day's summary, the warehouse) on a loaded 2-core machine.
STARTUP_SLACK_S = 20.0
# Thread scheduling between the deadline and the error reaching the caller, per call.
SCHEDULING_SLACK_S = 0.5


@pytest.fixture
def serve() -> Iterator:
    """``serve(**overrides)`` starts a simulator (stopped after the test) and returns it with a client."""
    started: list[tuple[SimulatorServer, CinnoxClient]] = []

    def start(**overrides) -> tuple[SimulatorServer, CinnoxClient]:
        server = start_simulator(**overrides)
        client = CinnoxClient(server.base_url, server.app_id, server.token, rate_limit_per_min=None,
                              max_attempts=2, backoff_max_s=0.01)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        client.close()
        server.stop()


def records(pages: Iterator[Page]) -> list[dict]:
    return [row for page in pages for row in page.records]


def day_listing(client: CinnoxClient) -> list[dict]:
    """The summary rows of FIRST_DAY (the API's end is inclusive: drop the next day's midnight campaign)."""
    listing = records(client.iter_summary_pages(START, END))
    return [r for r in listing if not r["date"].startswith("2024-05-02")]


def details(client: CinnoxClient, campaign: dict) -> list[dict]:
    return records(client.iter_detail_pages(campaign["id"], expected_rows=campaign["totalRecipients"]))


def assert_clean_transport(client: CinnoxClient) -> None:
    stats = client.stats.as_dict()
    assert stats["retries"] == 0 and stats["errors"] == 0, stats


def test_capped_summary_server_lists_all_150_campaigns_of_a_day(serve):
    server, client = serve(campaigns_per_day=150, recipients_per_campaign=3, summary_page_cap=100)
    pages = list(client.iter_summary_pages(START, END))
    truth = server.simulator.ground_truth(START, END)
    listed = {r["id"] for page in pages for r in page.records}
    assert {c["campaign_id"] for c in truth.campaigns} <= listed and len(truth.campaigns) == 150
    assert [p.row_count for p in pages] == [100, len(listed) - 100, 0]
    assert client.stats.requests == server.stats()["requests_by_endpoint"]["sent-campaigns-summary"] == 3
    assert_clean_transport(client)


def test_capped_detail_server_lists_every_recipient_of_every_campaign(serve):
    server, client = serve(detail_page_cap=25)
    truth = server.simulator.ground_truth(START, END)
    for campaign in day_listing(client):
        got = {r["recipient"] for r in details(client, campaign)}
        expected = {m["recipient"] for m in truth.messages if m["campaign_id"] == campaign["id"]}
        assert got == expected and len(got) == campaign["totalRecipients"] > 25
    assert_clean_transport(client)


def test_capped_detail_server_without_expected_rows_loses_rows(serve):
    # the reason iter_detail_pages takes expected_rows: the first short page looks like the end
    _server, client = serve(detail_page_cap=25)
    campaign = day_listing(client)[0]
    assert len(records(client.iter_detail_pages(campaign["id"]))) == 25 < campaign["totalRecipients"]


def test_bom_bodies_decode_to_the_clean_records_and_pages_keep_the_bom(serve):
    _, bom_client = serve(bom_bodies=True)
    _, clean_client = serve()
    listing = list(bom_client.iter_summary_pages(START, END))
    assert records(iter(listing)) == records(clean_client.iter_summary_pages(START, END))
    for campaign in day_listing(bom_client):
        pages = list(bom_client.iter_detail_pages(campaign["id"], expected_rows=campaign["totalRecipients"]))
        assert records(iter(pages)) == details(clean_client, campaign)
        listing += pages
    assert all(p.body.startswith(UTF8_BOM) and p.normalized_body == p.body[len(UTF8_BOM):] for p in listing)
    assert_clean_transport(bom_client)


def test_bom_error_bodies_keep_their_meaning(serve):
    server, _ = serve(bom_bodies=True)
    wrong = CinnoxClient(server.base_url, server.app_id, "wrong-token-12345", rate_limit_per_min=None)
    with pytest.raises(AuthError) as info:
        list(wrong.iter_summary_pages(START, END))
    wrong.close()
    assert info.value.code == 6450401 and wrong.stats.requests == 1


def test_poisoned_values_decode_and_reach_the_records_layer_untouched(serve):
    server, client = serve(poison_values=True)
    truth = server.simulator.ground_truth(START, END)
    listing = day_listing(client)
    served = {(c["id"], r["recipient"]): r for c in listing for r in details(client, c)}
    by_id = {c["id"]: c for c in listing}
    assert_clean_transport(client)  # the lone surrogate page decoded without a retry
    fields = set()
    for anomaly in truth.anomalies:
        assert anomaly["mode"] == "poison_values"
        if anomaly["endpoint"] == "summary":
            assert by_id[anomaly["campaign_id"]][anomaly["field"]] == anomaly["value"] == 10**20
        else:
            row = served[(anomaly["campaign_id"], anomaly["recipient"])]
            assert row[anomaly["field"]] == anomaly["value"]
        fields.add(anomaly["field"])
    assert fields == {"replied", "numSMS", "content"}
    # every message of the truth was listed; the poisoned ones are the rejected records
    good = {(m["campaign_id"], m["recipient"]) for m in truth.messages}
    rejected = {(r["campaign_id"], r["recipient"]) for r in truth.rejected if r["endpoint"] == "detail"}
    assert good | rejected == set(served) and len(rejected) == 2


def test_truncated_details_end_at_an_empty_page_short_of_total_recipients(serve):
    server, client = serve(truncate_details=True)
    (anomaly,) = server.simulator.ground_truth(START, END).anomalies
    for campaign in day_listing(client):
        before = client.stats.requests
        rows = details(client, campaign)
        if campaign["id"] == anomaly["campaign_id"]:
            # one short page below totalRecipients, then the empty page that ends it: no error here,
            # the shortfall is for the caller to see
            assert len(rows) == anomaly["rows_served"] < campaign["totalRecipients"]
            assert campaign["totalRecipients"] == anomaly["total_recipients"]
            assert client.stats.requests - before == 2
        else:
            assert len(rows) == campaign["totalRecipients"] and client.stats.requests - before == 1
    assert_clean_transport(client)


def test_empty_summary_is_one_empty_page(serve):
    server, client = serve(empty_summary=True)
    pages = list(client.iter_summary_pages(START, END))
    assert [p.row_count for p in pages] == [0] and client.stats.requests == 1
    (anomaly,) = server.simulator.ground_truth(START, END).anomalies
    assert anomaly == {"mode": "empty_summary", "endpoint": "summary", "campaigns_hidden": 4}


def test_duplicate_summary_lists_the_stale_copy_first_then_the_real_one(serve):
    server, client = serve(duplicate_summary=True, summary_page_cap=2)
    listing = records(client.iter_summary_pages(START, END))
    (anomaly,) = server.simulator.ground_truth(START, END).anomalies
    copies = [r for r in listing if r["id"] == anomaly["campaign_id"]]
    assert len(copies) == 2 and copies[0] == anomaly["stale_copy"] and copies[0]["campaignName"] == "STALE"
    assert copies[1]["totalRecipients"] > 1
    # the real copy's count lists every recipient
    assert len(details(client, copies[1])) == copies[1]["totalRecipients"]


def test_naive_dates_and_odd_channel_reach_the_records_layer_untouched(serve):
    server, client = serve(naive_dates=True, odd_channel=True)
    by_id = {r["id"]: r for r in day_listing(client)}
    anomalies = server.simulator.ground_truth(START, END).anomalies
    assert {a["mode"] for a in anomalies} == {"naive_dates", "odd_channel"}
    for anomaly in anomalies:
        assert by_id[anomaly["campaign_id"]][anomaly["field"]] == anomaly["value"]


def test_every_mode_at_once_lists_and_decodes_everything(serve):
    server, client = serve(campaigns_per_day=12, summary_page_cap=3, detail_page_cap=20, bom_bodies=True,
                           poison_values=True, truncate_details=True, duplicate_summary=True,
                           naive_dates=True, odd_channel=True)
    truth = server.simulator.ground_truth(START, END)
    listing = day_listing(client)
    assert {r["id"] for r in listing} == {c["campaign_id"] for c in truth.campaigns} | {
        r["campaign_id"] for r in truth.rejected if r["endpoint"] == "summary"}
    cut = next(a for a in truth.anomalies if a["mode"] == "truncate_details")
    real = {r["id"]: r for r in listing}  # the later (real) copy wins
    for history_id, campaign in real.items():
        rows = details(client, campaign)
        if history_id == cut["campaign_id"]:
            assert len(rows) == cut["rows_served"]
        else:
            assert len(rows) == campaign["totalRecipients"]
    assert_clean_transport(client)
    assert client.stats.requests > 12 * 2  # capped pages: many requests, none of them retried


def test_clean_server_needs_one_extra_summary_request_per_day_and_none_for_details(serve):
    server, client = serve()
    listing = day_listing(client)
    for campaign in listing:
        details(client, campaign)
    by_endpoint = server.stats()["requests_by_endpoint"]
    assert by_endpoint["sent-campaigns-summary"] == 2  # the day's rows, then the empty page
    assert by_endpoint["sent-campaigns-detail"] == len(listing)  # campaigns under 500 rows: one page each


# --- a dripping API: the per-attempt deadline ----------------------------------------------------

QUICK = {"rate_limit_per_min": None, "read_timeout": 1.0, "max_attempts": 2, "backoff_max_s": 0.05}


def first_campaign(server: SimulatorServer) -> dict:
    """FIRST_DAY's first campaign, listed by a plain client (summaries are never dripped or padded)."""
    with CinnoxClient(server.base_url, server.app_id, server.token, rate_limit_per_min=None) as client:
        return day_listing(client)[0]


def test_dripped_detail_body_fails_at_the_deadline_within_the_bound(serve):
    server, _ = serve(drip_bytes_per_s=200)
    campaign = first_campaign(server)
    with CinnoxClient(server.base_url, server.app_id, server.token, request_deadline=1.0, **QUICK) as client:
        bound = client.worst_case_retry_seconds()
        started = time.monotonic()
        with pytest.raises(RetriesExhaustedError) as info:
            details(client, campaign)
        elapsed = time.monotonic() - started
    assert bound == pytest.approx(2 * 1.0 + 1 * 0.05)
    # a byte every 5 ms never trips the 1 s read timeout: without the deadline this call would take the
    # body's whole drip time, many times the bound
    body_seconds = len(server.simulator.render_detail_page(campaign["id"], 0, 500)) / 200
    assert body_seconds > 20 * bound
    assert 2 * 1.0 <= elapsed <= bound + SCHEDULING_SLACK_S
    error = info.value
    assert error.last_error.kind == "deadline" and error.last_error.status == 200
    assert "no complete response within the 1 s request deadline (CINNOX_REQUEST_DEADLINE_S)" in str(error)
    assert "\n" not in str(error)
    assert client.stats.as_dict()["errors_deadline"] == 2 and client.stats.requests == 2


def test_dripped_detail_body_within_the_deadline_lists_the_clean_records(serve):
    server, _ = serve(drip_bytes_per_s=400_000)  # a ~30 KB page in under 0.1 s
    _, clean = serve()
    campaign = first_campaign(server)
    with CinnoxClient(server.base_url, server.app_id, server.token, request_deadline=5.0, **QUICK) as client:
        started = time.monotonic()
        assert details(client, campaign) == details(clean, campaign)
        assert time.monotonic() - started > 0.02  # really dripped
        assert_clean_transport(client)


def test_client_on_its_own_session_still_cuts_a_dripped_body_at_the_deadline(serve):
    # a caller's session has no watched connections: the body is still watched from the response
    server, _ = serve(drip_bytes_per_s=200)
    campaign = first_campaign(server)
    with requests.Session() as session, CinnoxClient(server.base_url, server.app_id, server.token,
                                                     request_deadline=0.5, session=session, **QUICK) as client:
        started = time.monotonic()
        with pytest.raises(RetriesExhaustedError) as info:
            details(client, campaign)
        assert time.monotonic() - started <= client.worst_case_retry_seconds() + SCHEDULING_SLACK_S
    assert info.value.last_error.kind == "deadline"


# --- an oversized API: the body cap ----------------------------------------------------------------


def test_oversized_detail_body_is_refused_as_too_large_then_the_client_gives_up(serve):
    server, _ = serve(oversized_mb=8)
    campaign = first_campaign(server)
    with CinnoxClient(server.base_url, server.app_id, server.token, max_response_mb=1, **QUICK) as client:
        with pytest.raises(RetriesExhaustedError) as info:
            details(client, campaign)
    error = info.value
    assert error.attempts == 2 and error.last_error.kind == "too_large" and error.last_error.status == 200
    assert error.last_error.cinnox_message == "response body larger than 1 MB (CINNOX_MAX_RESPONSE_MB)"
    assert client.stats.as_dict()["errors_too_large"] == 2
    assert client.stats.bytes == 0  # nothing refused counts as received


def test_padded_detail_body_under_the_cap_decodes_to_the_clean_records(serve):
    server, _ = serve(oversized_mb=0.5)
    _, clean = serve()
    campaign = first_campaign(server)
    with CinnoxClient(server.base_url, server.app_id, server.token, **QUICK) as client:
        pages = list(client.iter_detail_pages(campaign["id"], expected_rows=campaign["totalRecipients"]))
        assert_clean_transport(client)
    assert records(iter(pages)) == details(clean, campaign)
    assert pages[0].nbytes == 2**19 and pages[0].body.startswith(b'{"padding":"xxx')


# --- the same through the CLI ------------------------------------------------------------------------


def cli_env(server: SimulatorServer, data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without pipeline settings, pointed at ``server`` as a real CINNOX app."""
    clean = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
    return {**clean, **simulator_env(server, data_dir, **extra)}


def run_backfill(env: dict[str, str], timeout: float) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run ``campaign-pipeline backfill`` for FIRST_DAY; return the result, its wall time and its peak RSS
    in bytes (polled every 20 ms)."""
    args = [*CLI, "backfill", "--start", FIRST_DAY.isoformat(), "--end", FIRST_DAY.isoformat()]
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        try:
            watched = psutil.Process(proc.pid)
            while not done.is_set():
                tree = [watched, *watched.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
                done.wait(0.02)
        except psutil.Error:
            pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"backfill still running after {timeout:.0f}s; stderr: {stderr[-2000:]}")
    finally:
        done.set()
        poller.join()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), time.monotonic() - started, peak


def failure_line(result: subprocess.CompletedProcess) -> str:
    """The one ``backfill failed:`` line, which must end stderr; no traceback anywhere."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    reasons = [line for line in lines if line.startswith("backfill failed:")]
    assert len(reasons) == 1 and lines[-1] == reasons[0], result.stderr
    assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr
    return reasons[0]


def test_backfill_against_a_dripping_api_fails_within_the_bound_with_one_line(tmp_path):
    server = start_simulator(drip_bytes_per_s=20)  # a ~30 KB detail page would take about 25 minutes
    try:
        settings = {"CINNOX_MAX_ATTEMPTS": "2", "CINNOX_READ_TIMEOUT_S": "1", "CINNOX_BACKOFF_MAX_S": "0.1",
                    "CINNOX_REQUEST_DEADLINE_S": "2"}
        env = cli_env(server, tmp_path / "data", **settings)
        with CinnoxClient(server.base_url, server.app_id, server.token, read_timeout=1, request_deadline=2,
                          max_attempts=2, backoff_max_s=0.1, rate_limit_per_min=60000) as twin:
            bound = twin.worst_case_retry_seconds()
        result, seconds, _ = run_backfill(env, timeout=bound + STARTUP_SLACK_S + 60)
    finally:
        server.stop()
    assert bound == pytest.approx(2 * 2 + 0.1 + 2 * 60 / 60000)
    assert result.returncode == 1, result.stderr
    assert seconds <= bound + STARTUP_SLACK_S
    reason = failure_line(result)
    assert "gave up after 2 attempts" in reason and "CINNOX_REQUEST_DEADLINE_S" in reason, reason
    # the failed day left nothing behind that a reader could take for a loaded (empty) day
    assert not [path for path in (tmp_path / "data" / "lake").rglob("*") if path.is_file()]


def test_backfill_against_an_oversized_api_is_refused_with_bounded_memory(tmp_path):
    server = start_simulator(oversized_mb=200)
    try:
        env = cli_env(server, tmp_path / "data", CINNOX_MAX_ATTEMPTS="2", CINNOX_BACKOFF_MAX_S="0.1",
                      CINNOX_MAX_RESPONSE_MB="20")
        result, _, peak = run_backfill(env, timeout=300)
    finally:
        server.stop()
    assert result.returncode == 1, result.stderr
    reason = failure_line(result)
    assert "response body larger than 20 MB (CINNOX_MAX_RESPONSE_MB)" in reason, reason
    # read whole and decoded (no cap), the 200 MB body takes this process to about 1.5 GB
    assert 0 < peak < 400 * 2**20, f"peak RSS {peak / 2**20:.0f} MB"
