"""The client against a real simulator in each misbehaving-server mode: listings complete, bodies decoded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from campaign_pipeline.client import UTF8_BOM, CinnoxClient, Page
from campaign_pipeline.errors import AuthError
from campaign_pipeline.simulator import SimulatorServer, day_bounds_utc
from tests.conftest import FIRST_DAY, start_simulator

START, END = day_bounds_utc(FIRST_DAY)


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
