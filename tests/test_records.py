"""Record parsing: every way a CINNOX record really arrives, one parameterized case each."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from campaign_pipeline import records


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
