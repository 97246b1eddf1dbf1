"""The columnar fast path: one clean detail page typed with Arrow kernels instead of per record.

A page qualifies only when every record is already in the canonical shape (string ids equal to
the historyID, ``+``-prefixed E.164 recipients, RFC3339 timestamps with an offset, statuses in the
channel's canonical casing, numeric ``numSMS``). Anything else returns ``None`` and the caller
types the page record by record with :mod:`campaign_pipeline.records`, which also explains every
rejection. Both paths produce identical rows; ``tests/test_columnar.py`` holds them to that.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from campaign_pipeline import records, schemas, settings

_RECIPIENT = r"^\+[0-9]{6,15}$"
_TIMESTAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"
_STATUSES = {
    settings.CHANNEL_SMS: pa.array(settings.SMS_STATUSES),
    settings.CHANNEL_WHATSAPP: pa.array(settings.WHATSAPP_STATUSES),
}
_CARRIER_STATUSES = pa.array(settings.SMS_CARRIER_STATUSES)
_SMS_ROW_SCHEMA = schemas.row_schema(schemas.SMS_MESSAGES_SCHEMA)
_WHATSAPP_ROW_SCHEMA = schemas.row_schema(schemas.WHATSAPP_MESSAGES_SCHEMA)


class _NotClean(Exception):
    """The page is not in canonical shape; type it record by record."""


def _strings(values: list) -> pa.Array:
    array = pa.array(values)
    if array.type == pa.null():
        return array.cast(pa.string())
    if array.type != pa.string():
        raise _NotClean
    return array


def _optional_text(values: list) -> pa.Array:
    """Like :func:`records.text_or_none` over a column: trimmed, ``""`` and null become null."""
    array = pc.utf8_trim_whitespace(_strings(values))
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _all(mask: pa.Array) -> bool:
    return mask.null_count == 0 and pc.all(mask).as_py() is not False


def _timestamps(values: list, required: bool) -> pa.Array:
    array = _strings(values)
    if required and array.null_count:
        raise _NotClean
    array = pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)
    present = array.drop_null()
    if len(present) and not _all(pc.match_substring_regex(present, _TIMESTAMP)):
        raise _NotClean
    return array.cast(schemas.TIMESTAMP_UTC)


def _status(values: list, vocabulary: pa.Array) -> pa.Array:
    array = _strings(values)
    present = array.drop_null()
    if len(present) and not _all(pc.is_in(present, value_set=vocabulary)):
        raise _NotClean
    return array


def clean_page_batch(page_records: list, history_id: str, channel: str) -> tuple[pa.RecordBatch, set[str]] | None:
    """The page as a record batch (schema without ``app_id``/``partition_date``) and the names of
    unknown fields, or ``None`` when the page needs the record-by-record path."""
    try:
        if not page_records or any(r.__class__ is not dict for r in page_records):
            return None
        if [r.get("id") for r in page_records].count(history_id) != len(page_records):
            return None
        known = records.DETAIL_FIELDS
        field_names = set().union(*page_records)
        senders = [r.get("sender") or {} for r in page_records]
        if any(s.__class__ is not dict for s in senders):
            return None
        sender_names = set().union(*senders)
        unknown = {name for name in field_names if name not in known}
        unknown |= {f"sender.{name}" for name in sender_names if name not in records.SENDER_FIELDS}
        recipients = _strings([r.get("recipient") for r in page_records])
        if recipients.null_count or not _all(pc.match_substring_regex(recipients, _RECIPIENT)):
            return None
        sent_at = _timestamps([r.get("date") for r in page_records], required=True)
        updated = _timestamps(
            [r.get("lastUpdatedDateTime") or r.get("LastUpdatedDateTime") for r in page_records], required=False
        )
        ids = pa.array([history_id] * len(page_records), pa.string())
        phones = _optional_text([s.get("phone") for s in senders])
        if channel == settings.CHANNEL_SMS:
            num_sms = pa.array([r.get("numSMS") for r in page_records])
            if num_sms.type == pa.null():
                num_sms = num_sms.cast(pa.int64())
            if num_sms.type != pa.int64() or (len(num_sms.drop_null()) and pc.min(num_sms).as_py() < 0):
                return None
            carrier = _optional_text([r.get("carrierNetworkStatus") for r in page_records])
            present = carrier.drop_null()
            if len(present) and not _all(pc.is_in(present, value_set=_CARRIER_STATUSES)):
                return None
            columns = [
                ids, recipients, sent_at, phones,
                _optional_text([s.get("senderEID") for s in senders]),
                pc.utf8_upper(_optional_text([r.get("recipientCountry") for r in page_records])),
                _optional_text([r.get("content") for r in page_records]),
                num_sms.cast(pa.int32()),
                _status([r.get("status") for r in page_records], _STATUSES[channel]),
                carrier, updated,
            ]
            row_schema = _SMS_ROW_SCHEMA
        else:
            columns = [
                ids, recipients, sent_at, phones,
                _optional_text([s.get("channelName") for s in senders]),
                _optional_text([s.get("sourceName") for s in senders]),
                _optional_text([r.get("subject") for r in page_records]),
                _status([r.get("status") for r in page_records], _STATUSES[channel]),
                _optional_text([r.get("failedReason") for r in page_records]),
                updated,
            ]
            row_schema = _WHATSAPP_ROW_SCHEMA
        return pa.RecordBatch.from_arrays(columns, schema=row_schema), unknown
    except (_NotClean, pa.ArrowInvalid, pa.ArrowTypeError, AttributeError, TypeError):
        return None
