"""The columnar fast path: a clean detail page typed with Arrow kernels instead of record by record.

Two ways in, one typing function (:func:`typed_detail_batch`) over an Arrow struct array of the
page's records:

* :func:`decode_detail_body` decodes a detail response body straight to Arrow with Arrow's C++
  JSON reader (which releases the GIL, so fetch threads decode pages in parallel). It declares the
  known fields' JSON types, so a record whose field has another type makes the body decline.
* :func:`clean_page_batch` takes already decoded records (a re-split of the landing file, or
  pseudonymized pages) and converts them with ``pa.array``.

A page qualifies only when every record is already in the canonical shape (string ids equal to
the historyID, ``+``-prefixed E.164 recipients, RFC3339 timestamps with an offset, statuses in the
channel's canonical casing, integer ``numSMS``). Anything else returns ``None`` and the caller
types the page record by record with :mod:`campaign_pipeline.records`, which also explains every
rejection. Both paths produce identical rows; ``tests/test_columnar.py`` holds them to that.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

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
_NULL_STRING = pa.scalar(None, pa.string())

#: The JSON types of the known detail fields, as the fast path expects them: text everywhere
#: except the integer ``numSMS`` and the ``sender`` object. Declared to Arrow's JSON reader, so a
#: value of another JSON type fails the decode (and the page goes to the record parser) instead of
#: being inferred into something else; fields not declared here are inferred and reported as unknown.
SENDER_JSON_TYPE = pa.struct([(name, pa.string()) for name in sorted(records.SENDER_FIELDS)])
DETAIL_RECORD_JSON_TYPE = pa.struct(
    [
        (name, pa.int64() if name == "numSMS" else SENDER_JSON_TYPE if name == "sender" else pa.string())
        for name in sorted(records.DETAIL_FIELDS)
    ]
)
_DETAIL_BODY_PARSE = pa_json.ParseOptions(
    explicit_schema=pa.schema(
        [(settings.ENVELOPE_CODE, pa.int64()), (settings.ENVELOPE_RESULT, pa.list_(DETAIL_RECORD_JSON_TYPE))]
    ),
    unexpected_field_behavior="infer",
)


#: The top-level fields of a success body (``cid`` is the vendor's internal id).
_ENVELOPE_FIELDS = frozenset({settings.ENVELOPE_CODE, settings.ENVELOPE_RESULT, "cid"})


class _NotClean(Exception):
    """The page is not in canonical shape; type it record by record."""


def decode_detail_body(body: bytes) -> pa.StructArray | None:
    """The records of a detail response body ``{"code": 0, "result": [...]}`` as a struct array.

    Decoded by Arrow's JSON reader without holding the GIL. Returns ``None`` (decode it with
    orjson instead) unless the body is exactly one JSON object whose ``code`` is the integer 0 and
    whose ``result`` is a list of objects with the known fields in their declared JSON types.
    """
    try:
        table = pa_json.read_json(
            pa.BufferReader(body),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(body) + 1, 1 << 16)),
            parse_options=_DETAIL_BODY_PARSE,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != 1 or not set(table.schema.names) <= _ENVELOPE_FIELDS:
        return None  # landed byte for byte, so only the documented envelope fields may be in it
    code = table.column(settings.ENVELOPE_CODE)[0].as_py()
    pages = table.column(settings.ENVELOPE_RESULT)
    pages = pages.chunk(0) if pages.num_chunks == 1 else pages.combine_chunks()
    if code != settings.CODE_OK or pages.null_count:
        return None
    page = pages.flatten()
    if page.null_count:
        return None
    try:
        page.validate(full=True)  # Arrow's reader lets invalid UTF-8 through; orjson (and a re-split) would not
    except pa.ArrowInvalid:
        return None
    return page


def _column(page: pa.StructArray, name: str) -> pa.Array:
    """The field ``name`` of every record (null where absent); ``sender.x`` reaches into ``sender``."""
    path = name.split(".")
    if path[0] not in page.type.names:
        return pa.nulls(len(page), pa.string())
    if len(path) == 2:
        sender = page.field(path[0])
        if pa.types.is_null(sender.type):
            return pa.nulls(len(page), pa.string())
        if not pa.types.is_struct(sender.type):
            raise _NotClean
        if path[1] not in sender.type.names:
            return pa.nulls(len(page), pa.string())
    return pc.struct_field(page, path)


def _strings(array: pa.Array) -> pa.Array:
    if array.type == pa.null():
        return array.cast(pa.string())
    if array.type != pa.string():
        raise _NotClean
    return array


def _optional_text(array: pa.Array) -> pa.Array:
    """Like :func:`records.text_or_none` over a column: trimmed, ``""`` and null become null."""
    array = pc.utf8_trim_whitespace(_strings(array))
    return pc.if_else(pc.equal(array, ""), _NULL_STRING, array)


def _ascii_upper(array: pa.Array) -> pa.Array:
    """Upper-cased like ``str.upper``, which Arrow's Unicode rules match only for ASCII text."""
    present = array.drop_null()
    if len(present) and not _all(pc.string_is_ascii(present)):
        raise _NotClean
    return pc.ascii_upper(array)


def _all(mask: pa.Array) -> bool:
    return mask.null_count == 0 and pc.all(mask).as_py() is not False


def _timestamps(array: pa.Array, required: bool, repeating: bool = False) -> pa.Array:
    """RFC3339 text as UTC timestamps; ``repeating`` when a page holds few distinct values (a
    campaign's send time), so the shape is checked once per value instead of once per row."""
    array = _strings(array)
    array = pc.if_else(pc.equal(array, ""), _NULL_STRING, array)
    if required and array.null_count:  # absent, null or "": the record parser rejects it
        raise _NotClean
    present = array.drop_null()
    if repeating:
        present = pc.unique(present)
    if len(present) and not _all(pc.match_substring_regex(present, _TIMESTAMP)):
        raise _NotClean
    return array.cast(schemas.TIMESTAMP_UTC)


def _status(array: pa.Array, vocabulary: pa.Array) -> pa.Array:
    array = _strings(array)
    present = array.drop_null()
    if len(present) and not _all(pc.is_in(present, value_set=vocabulary)):
        raise _NotClean
    return array


def _unknown_fields(page: pa.StructArray) -> set[str]:
    unknown = {name for name in page.type.names if name not in records.DETAIL_FIELDS}
    if "sender" in page.type.names and pa.types.is_struct(page.type.field("sender").type):
        sender_type = page.type.field("sender").type
        unknown |= {f"sender.{name}" for name in sender_type.names if name not in records.SENDER_FIELDS}
    return unknown


def typed_detail_batch(
    page: pa.StructArray, history_id: str, channel: str
) -> tuple[pa.RecordBatch, set[str]] | None:
    """The page's records (a struct array) as a record batch of the channel's row schema (without
    ``app_id``/``partition_date``) and the names of unknown fields, or ``None`` when the page needs
    the record-by-record path."""
    try:
        if not len(page) or page.null_count or not pa.types.is_struct(page.type):
            return None
        ids = _strings(_column(page, "id"))  # checked equal to history_id: the campaign_id column
        if ids.null_count or not _all(pc.equal(ids, history_id)):
            return None
        sender_type = page.type.field("sender").type if "sender" in page.type.names else pa.null()
        if not (pa.types.is_struct(sender_type) or pa.types.is_null(sender_type)):
            return None
        recipients = _strings(_column(page, "recipient"))
        if recipients.null_count or not _all(pc.match_substring_regex(recipients, _RECIPIENT)):
            return None
        sent_at = _timestamps(_column(page, "date"), required=True, repeating=True)
        lower = _strings(_column(page, "lastUpdatedDateTime"))
        upper = _strings(_column(page, "LastUpdatedDateTime"))
        use_lower = pc.fill_null(pc.not_equal(lower, ""), False)
        updated = _timestamps(pc.if_else(use_lower, lower, upper), required=False)
        phones = _optional_text(_column(page, "sender.phone"))
        if channel == settings.CHANNEL_SMS:
            num_sms = _column(page, "numSMS")
            if num_sms.type == pa.null() or (num_sms.type == pa.string() and num_sms.null_count == len(num_sms)):
                num_sms = pa.nulls(len(page), pa.int64())
            if num_sms.type != pa.int64() or (len(num_sms.drop_null()) and pc.min(num_sms).as_py() < 0):
                return None
            carrier = _optional_text(_column(page, "carrierNetworkStatus"))
            present = carrier.drop_null()
            if len(present) and not _all(pc.is_in(present, value_set=_CARRIER_STATUSES)):
                return None
            columns = [
                ids, recipients, sent_at, phones,
                _optional_text(_column(page, "sender.senderEID")),
                _ascii_upper(_optional_text(_column(page, "recipientCountry"))),
                _optional_text(_column(page, "content")),
                num_sms.cast(pa.int32()),
                _status(_column(page, "status"), _STATUSES[channel]),
                carrier, updated,
            ]  # fmt: skip
            row_schema = _SMS_ROW_SCHEMA
        else:
            columns = [
                ids, recipients, sent_at, phones,
                _optional_text(_column(page, "sender.channelName")),
                _optional_text(_column(page, "sender.sourceName")),
                _optional_text(_column(page, "subject")),
                _status(_column(page, "status"), _STATUSES[channel]),
                _optional_text(_column(page, "failedReason")),
                updated,
            ]  # fmt: skip
            row_schema = _WHATSAPP_ROW_SCHEMA
        return pa.RecordBatch.from_arrays(columns, schema=row_schema), _unknown_fields(page)
    except (_NotClean, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def clean_page_batch(page_records: list, history_id: str, channel: str) -> tuple[pa.RecordBatch, set[str]] | None:
    """:func:`typed_detail_batch` over already decoded records (``None`` when they are not a list
    of objects Arrow can type column by column)."""
    if not page_records or any(r.__class__ is not dict for r in page_records):
        return None
    try:
        page = pa.array(page_records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return None
    return typed_detail_batch(page, history_id, channel)
