"""The columnar fast path types clean pages exactly like the record-by-record path, and declines odd ones."""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson
import pyarrow as pa
import pytest

from campaign_pipeline import records, schemas, settings
from campaign_pipeline.columnar import clean_page_batch, decode_detail_body, typed_detail_batch
from campaign_pipeline.simulator import CinnoxSimulator, SimulatorConfig, day_bounds_utc
from campaign_pipeline.transform import DaySplitter
from campaign_pipeline.windows import PartitionWindow

DAY = date(2024, 5, 2)


def _pages(odd: bool):
    sim = CinnoxSimulator(SimulatorConfig(seed=9, campaigns_per_day=6, recipients_per_campaign=120, odd_records=odd,
                                          now=datetime(2024, 5, 20, tzinfo=UTC)))
    for campaign in sim.summary_records(*day_bounds_utc(DAY)):
        rows = sim.detail_records(campaign["id"])
        for offset in range(0, len(rows), 50):
            yield campaign["id"], campaign["channel"], rows[offset:offset + 50]


def _slow_batch(page, history_id, channel):
    spec = schemas.SMS_MESSAGES if channel == settings.CHANNEL_SMS else schemas.WHATSAPP_MESSAGES
    fields = list(schemas.row_schema(spec.schema))
    rows = [records.MESSAGE_PARSERS[channel](record, history_id) for record in page]
    columns = list(zip(*rows, strict=True))
    arrays = [pa.array(values, pa.int64() if pa.types.is_timestamp(f.type) else f.type).cast(f.type)
              for f, values in zip(fields, columns, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def test_clean_pages_take_the_fast_path_and_match_the_record_parser():
    pages = list(_pages(odd=False))
    assert pages
    for history_id, channel, page in pages:
        fast = clean_page_batch(page, history_id, channel)
        assert fast is not None, "a clean page fell back to the slow path"
        batch, unknown = fast
        assert batch.equals(_slow_batch(page, history_id, channel))
        assert unknown == set()


def test_odd_pages_fall_back_unless_they_are_canonical():
    declined = 0
    for history_id, channel, page in _pages(odd=True):
        fast = clean_page_batch(page, history_id, channel)
        if fast is None:
            declined += 1
            continue
        # Whatever the fast path accepts must type exactly as the record parser does.
        assert fast[0].equals(_slow_batch(page, history_id, channel))
    assert declined > 0


@pytest.mark.parametrize(
    ("change", "channel"),
    [
        ({"recipient": 85291234567}, settings.CHANNEL_SMS),
        ({"recipient": "85291234567"}, settings.CHANNEL_SMS),
        ({"numSMS": "2"}, settings.CHANNEL_SMS),
        ({"status": "delivered"}, settings.CHANNEL_SMS),
        ({"status": "Expired"}, settings.CHANNEL_SMS),
        ({"carrierNetworkStatus": "queued"}, settings.CHANNEL_SMS),
        ({"date": "2024-05-02T10:00:00"}, settings.CHANNEL_SMS),
        ({"date": "2024-05-02 10:00:00Z"}, settings.CHANNEL_SMS),
        ({"id": "another"}, settings.CHANNEL_SMS),
        ({"date": ""}, settings.CHANNEL_SMS),  # a required timestamp that is empty: the parser rejects it
        ({"recipientCountry": "ß"}, settings.CHANNEL_SMS),  # upper-cased differently by Arrow and Python
        ({"status": "READ"}, settings.CHANNEL_WHATSAPP),
    ],
)
def test_one_odd_record_sends_the_page_to_the_record_parser(change, channel):
    record = {"id": "c1", "date": "2024-05-02T10:00:00.000Z", "sender": {"phone": "ACME"}, "recipient": "+85291234567",
              "recipientCountry": "HK", "content": "hi", "numSMS": 1, "status": "Delivered",
              "carrierNetworkStatus": "Delivered", "failedReason": "", "lastUpdatedDateTime": "2024-05-02T10:01:00Z"}
    page = [dict(record, recipient=f"+8529123456{i}") for i in range(5)]
    assert clean_page_batch(page, "c1", channel) is not None
    page[3] = {**page[3], **change}
    assert clean_page_batch(page, "c1", channel) is None
    decoded = decode_detail_body(_body(page))
    assert decoded is None or typed_detail_batch(decoded, "c1", channel) is None


def _body(page: list, **envelope) -> bytes:
    return orjson.dumps({"code": 0, **envelope, "result": page})


def test_response_bodies_decoded_by_arrow_type_exactly_like_the_record_parser():
    pages = list(_pages(odd=False))
    for history_id, channel, page in pages:
        decoded = decode_detail_body(_body(page))
        assert decoded is not None and len(decoded) == len(page)
        fast = typed_detail_batch(decoded, history_id, channel)
        assert fast is not None, "a clean body fell back to the slow path"
        assert fast[0].equals(_slow_batch(page, history_id, channel))
        assert fast[1] == set()


def test_odd_bodies_decline_or_type_exactly_like_the_record_parser():
    declined = typed = 0
    for history_id, channel, page in _pages(odd=True):
        decoded = decode_detail_body(_body(page))
        fast = typed_detail_batch(decoded, history_id, channel) if decoded is not None else None
        if fast is None:
            declined += 1
            continue
        typed += 1
        assert fast[0].equals(_slow_batch(page, history_id, channel))
    assert declined > 0 and typed > 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":6451010,"result":[]}',  # throttled: the JSON classifier must see it
        b'{"code":"0","result":[]}',
        b'{"result":[{"id":"c1"}]}',  # no code
        b'{"code":0,"result":null}',
        b'{"code":0,"result":[{"id":"c1"},5]}',
        b'{"code":0,"result":[{"id":"c1"},null]}',
        b'{"code":0,"result":[{"id":"c1","numSMS":"2"}]}',  # a known field in another JSON type
        b'{"code":0,"result":[{"id":"c1","sender":"ACME"}]}',
        b'{"code":0,"result":[]}{"code":0,"result":[]}',
        b'{"code":0,"result":[]',  # truncated
        b"[]",
        b"",
        b'{"code":0,"result":[{"id":"c1","subject":"\xff"}]}',  # invalid UTF-8: orjson (and a re-split) refuse it
        b'{"code":0,"result":[],"echo":"Bearer x"}',  # not the documented envelope: never landed verbatim
    ],
)
def test_bodies_arrow_cannot_take_are_left_to_the_json_decoder(body):
    assert decode_detail_body(body) is None


def test_unknown_fields_are_reported_from_both_decoders():
    record = {"id": "c1", "date": "2024-05-02T10:00:00.000Z", "sender": {"phone": "ACME", "tier": 2},
              "recipient": "+85291234567", "subject": "s", "status": "Read", "failedReason": "", "extra": [1]}
    expected = {"extra", "sender.tier"}
    from_arrow = typed_detail_batch(decode_detail_body(_body([record])), "c1", settings.CHANNEL_WHATSAPP)
    from_dicts = clean_page_batch([record], "c1", settings.CHANNEL_WHATSAPP)
    assert from_arrow is not None and from_dicts is not None
    assert from_arrow[1] == from_dicts[1] == expected
    assert from_arrow[0].equals(from_dicts[0])


@pytest.mark.parametrize("odd", [False, True])
def test_a_campaigns_pages_typed_together_give_the_same_day_as_page_by_page(odd):
    sim = CinnoxSimulator(SimulatorConfig(seed=9, campaigns_per_day=6, recipients_per_campaign=120, odd_records=odd,
                                          now=datetime(2024, 5, 20, tzinfo=UTC)))
    summary = sim.summary_records(*day_bounds_utc(DAY))
    window = PartitionWindow.for_day(DAY, "UTC")
    by_page, together = DaySplitter(window, "app"), DaySplitter(window, "app")
    for splitter in (by_page, together):
        splitter.add_summary_records(summary)
    combined = 0
    for campaign in summary:
        rows = sim.detail_records(campaign["id"])
        pages = [rows[offset:offset + 50] for offset in range(0, len(rows), 50)]
        for page in pages:
            by_page.add_detail_records(campaign["id"], page)
        bodies = [_body(page) for page in pages]
        decoded = [decode_detail_body(body) for body in bodies]
        arrow_or_dicts = [d if d is not None else page for d, page in zip(decoded, pages, strict=True)]
        typed = together.type_detail_pages(campaign["id"], arrow_or_dicts, lambda i, b=bodies: orjson.loads(b[i])["result"])
        combined += len(pages) > 1 and len(typed) == 1
        for typed_page in typed:
            together.add_typed_detail_page(typed_page)
    assert combined > 0 or odd  # odd pages sit in every campaign: those go page by page
    expected, got = by_page.finish(), together.finish()
    for name, table in expected.tables.items():
        assert got.tables[name].equals(table), name
    assert got.stats.as_metadata() == expected.stats.as_metadata()
