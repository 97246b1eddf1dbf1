"""Record parsing: every way a CINNOX record really arrives, one parameterized case each."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from campaign_pipeline.model import records


def _us(text: str) -> int:
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def sms_record(**overrides) -> dict:
    record = {
        "id": "c1", "date": "2024-05-01T20:00:00.000Z", "sender": {"phone": "ACME", "senderEID": "eid-1"},
        "recipient": "+85291234567", "recipientCountry": "HK", "content": "hello", "numSMS": 1,
        "status": "Delivered", "carrierNetworkStatus": "Delivered", "lastUpdatedDateTime": "2024-05-01T20:00:05.000Z",
    }  # fmt: skip
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not _ABSENT}


def wa_record(**overrides) -> dict:
    record = {
        "id": "c2", "date": "2024-05-01T20:00:00.000Z",
        "sender": {"phone": "+6561234567", "channelName": "Main", "sourceName": "360dialog"},
        "recipient": "+6591234567", "subject": "promo_v1", "status": "Read", "failedReason": "",
        "lastUpdatedDateTime": "2024-05-01T21:00:00.000Z",
    }  # fmt: skip
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not _ABSENT}


_ABSENT = object()
SMS_COLUMNS = ["campaign_id", "recipient", "sent_at", "sender_phone", "sender_eid", "recipient_country",
               "content", "num_sms", "status", "carrier_network_status", "last_updated_at"]
WA_COLUMNS = ["campaign_id", "recipient", "sent_at", "sender_phone", "sender_channel_name", "sender_source_name",
              "subject", "status", "failed_reason", "last_updated_at"]


@pytest.mark.parametrize(
    ("overrides", "column", "expected"),
    [
        pytest.param({"recipient": 85291234567}, "recipient", "+85291234567", id="recipient-json-number"),
        pytest.param({"recipient": "85291234567"}, "recipient", "+85291234567", id="recipient-digit-string"),
        pytest.param({"recipient": " +852 9123-4567 "}, "recipient", "+85291234567", id="recipient-formatted"),
        pytest.param({"numSMS": "3"}, "num_sms", 3, id="numsms-numeric-string"),
        pytest.param({"numSMS": 2}, "num_sms", 2, id="numsms-number"),
        pytest.param({"lastUpdatedDateTime": _ABSENT, "LastUpdatedDateTime": "2024-05-02T00:00:00Z"},
                     "last_updated_at", _us("2024-05-02T00:00:00+00:00"), id="last-updated-capitalized"),
        pytest.param({"date": "2024-05-01T20:00:00Z"}, "sent_at", _us("2024-05-01T20:00:00+00:00"),
                     id="rfc3339-no-millis"),
        pytest.param({"date": "2024-05-02T04:00:00.250+08:00"}, "sent_at", _us("2024-05-01T20:00:00.250+00:00"),
                     id="rfc3339-offset-millis"),
        pytest.param({"date": "2024-05-01T15:00:00-05:00"}, "sent_at", _us("2024-05-01T20:00:00+00:00"),
                     id="rfc3339-negative-offset"),
        pytest.param({"status": "delivered"}, "status", "Delivered", id="status-lowercase"),
        pytest.param({"status": "UNDELIVERED"}, "status", "Undelivered", id="status-uppercase"),
        pytest.param({"status": "Expired"}, "status", "Expired", id="status-unknown-kept"),
        pytest.param({"carrierNetworkStatus": ""}, "carrier_network_status", None, id="carrier-empty-null"),
        pytest.param({"failedReason": "x", "subject": None, "sender": {"phone": "A", "channelName": ""}},
                     "sender_phone", "A", id="other-channel-fields-ignored"),
        pytest.param({"recipientCountry": "hk"}, "recipient_country", "HK", id="country-uppercased"),
    ],
)
def test_parse_sms_message_accepts_real_world_variants(overrides, column, expected):
    row = dict(zip(SMS_COLUMNS, records.parse_sms_message(sms_record(**overrides), "c1"), strict=True))
    assert row[column] == expected


@pytest.mark.parametrize(
    ("overrides", "column", "expected"),
    [
        pytest.param({"status": "READ"}, "status", "Read", id="status-uppercase"),
        pytest.param({"failedReason": ""}, "failed_reason", None, id="failed-reason-empty-null"),
        pytest.param({"failedReason": None}, "failed_reason", None, id="failed-reason-null"),
        pytest.param({"content": "", "numSMS": None, "recipientCountry": None, "carrierNetworkStatus": ""},
                     "subject", "promo_v1", id="sms-fields-empty-or-null"),
        pytest.param({"recipient": 6591234567}, "recipient", "+6591234567", id="recipient-json-number"),
        pytest.param({"unknownExtra": 1, "priority": "high"}, "status", "Read", id="extra-fields-ignored"),
    ],
)
def test_parse_whatsapp_message_accepts_real_world_variants(overrides, column, expected):
    row = dict(zip(WA_COLUMNS, records.parse_whatsapp_message(wa_record(**overrides), "c2"), strict=True))
    assert row[column] == expected


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"recipient": _ABSENT}, "missing recipient", id="missing-recipient"),
        pytest.param({"recipient": ""}, "missing recipient", id="empty-recipient"),
        pytest.param({"recipient": "call me"}, "invalid recipient number", id="garbage-recipient"),
        pytest.param({"id": _ABSENT}, "missing id", id="missing-id"),
        pytest.param({"id": "other"}, "id does not match historyID", id="foreign-id"),
        pytest.param({"date": "not-a-date"}, "unparseable date", id="unparseable-date"),
        pytest.param({"date": "2024-05-01T20:00:00"}, "date has no UTC offset", id="naive-date"),
        pytest.param({"numSMS": "two"}, "invalid numSMS", id="bad-numsms"),
        pytest.param({"lastUpdatedDateTime": "yesterday"}, "unparseable lastUpdatedDateTime", id="bad-last-updated"),
    ],
)
def test_parse_sms_message_rejects_untypeable_records(overrides, reason):
    with pytest.raises(records.RecordRejected) as caught:
        records.parse_sms_message(sms_record(**overrides), "c1")
    assert caught.value.reason == reason


def test_rejection_reason_never_contains_the_phone_number():
    with pytest.raises(records.RecordRejected) as caught:
        records.parse_sms_message(sms_record(recipient="85291234567x"), "c1")
    assert "85291234567" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "column", "expected"),
    [
        pytest.param({"channel": "whatsapp"}, "channel", "WhatsApp", id="channel-casing"),
        pytest.param({"totalRecipients": "12"}, "total_recipients", 12, id="count-as-string"),
        pytest.param({"pending": None}, "pending", None, id="absent-count-null"),
        pytest.param({"date": "2024-05-01T20:00:00+00:00"}, "sent_at", _us("2024-05-01T20:00:00+00:00"),
                     id="date-offset"),
    ],
)
def test_parse_campaign_accepts_variants(overrides, column, expected):
    record = {"id": "c9", "date": "2024-05-01T20:00:00.000Z", "channel": "WhatsApp", "campaignName": "n",
              "sender": {"phone": "+1", "channelName": "x", "sourceName": "y"}, "totalRecipients": 3,
              "delivered": 2, "read": 1, "replied": 0, "pending": 1, "failed": 0}
    record.update(overrides)
    assert records.parse_campaign(record)[column] == expected


def test_parse_campaign_rejects_unknown_channel():
    with pytest.raises(records.RecordRejected, match="unknown channel"):
        records.parse_campaign({"id": "c", "date": "2024-05-01T00:00:00Z", "channel": "Telegram"})


def test_unknown_fields_reports_top_level_and_sender_names():
    record = sms_record(campaignTag="x")
    record["sender"]["team"] = "ops"
    assert sorted(records.unknown_fields(record, records.DETAIL_FIELDS)) == ["campaignTag", "sender.team"]


def _row_from_field_functions(record, campaign_id: str, channel: str) -> tuple:
    """The row the field functions give one by one: what the inlined common cases must equal."""
    records._check_detail(record, campaign_id)
    sender = records.sender_of(record)
    last = record.get("lastUpdatedDateTime")
    last = record.get("LastUpdatedDateTime") if last is None or last == "" else last
    head = (campaign_id, records.normalize_recipient(record.get("recipient")),
            records.parse_timestamp_us(record.get("date"), "date"), records.text_or_none(sender.get("phone")))
    tail = records.optional_timestamp_us(last, "lastUpdatedDateTime")
    if channel == "SMS":
        country = records.text_or_none(record.get("recipientCountry"))
        return (*head, records.text_or_none(sender.get("senderEID")), country.upper() if country else None,
                records.text_or_none(record.get("content")), records.parse_count(record.get("numSMS"), "numSMS",
                                                                                 records.INT32_MAX),
                records.canonical_status(record.get("status"), "SMS"),
                records.canonical_carrier_status(record.get("carrierNetworkStatus")), tail)
    return (*head, records.text_or_none(sender.get("channelName")), records.text_or_none(sender.get("sourceName")),
            records.text_or_none(record.get("subject")), records.canonical_status(record.get("status"), "WhatsApp"),
            records.text_or_none(record.get("failedReason")), tail)


_FIELD_VARIANTS = {
    "recipient": ["+85291234567", "85291234567", 85291234567, " +852 9123-4567 ", "+1", "+85291234567\u0663", None, True],
    "date": ["2024-05-18T02:19:10.000Z", "2024-05-18T10:19:10+08:00", "2024-05-18T02:19:10", "", None, 17],
    "status": ["Delivered", "delivered", "Read", "READ", "Queued", " Failed ", "", None, 3],
    "carrierNetworkStatus": ["Delivered", "queued", "", None, "Mystery"],
    "numSMS": [1, "2", 2.0, -1, 2**31, True, "x", None, ""],
    "content": ["hello", "  padded  ", "caf\u00e9", "\ud83d", "", None, 12],
    "recipientCountry": ["hk", " HK ", "", None],
    "subject": ["order_update", "", None, " x "],
    "failedReason": ["", "131026", 131026, None],
    "lastUpdatedDateTime": ["2024-05-18T02:19:20.145Z", "", None, "yesterday"],
    "sender": [{"phone": "ACME", "senderEID": "e", "channelName": "c", "sourceName": "s"}, {"phone": " +65 "},
               None, "not an object", {"phone": 5}],
    "id": ["c1", "c2", None, ""],
}


@pytest.mark.parametrize("channel", ["SMS", "WhatsApp"])
def test_message_rows_equal_the_field_functions_for_every_shape(channel):
    """Each field varied on its own over the shapes records arrive in: the message parsers
    (which inline the common cases for speed) give the same row or the same rejection as the
    field functions applied one by one."""
    base = {"id": "c1", "date": "2024-05-18T02:19:10.000Z", "recipient": "+85291234567", "status": "Delivered",
            "sender": {"phone": "ACME", "senderEID": "e", "channelName": "c", "sourceName": "s"},
            "recipientCountry": "HK", "content": "hi", "numSMS": 1, "carrierNetworkStatus": "Delivered",
            "subject": "s", "failedReason": "", "lastUpdatedDateTime": "2024-05-18T02:19:20.145Z"}
    parse = records.MESSAGE_PARSERS[channel]
    compared = 0
    for field, values in _FIELD_VARIANTS.items():
        for value in values:
            record = {**base, field: value}
            for variant in (record, {k: v for k, v in record.items() if k != field}):
                try:
                    expected = _row_from_field_functions(variant, "c1", channel)
                except records.RecordRejected as rejected:
                    with pytest.raises(records.RecordRejected) as raised:
                        parse(variant, "c1")
                    assert raised.value.reason == rejected.reason, (field, value)
                else:
                    assert parse(variant, "c1") == expected, (field, value)
                compared += 1
    assert compared == 2 * sum(len(v) for v in _FIELD_VARIANTS.values())
