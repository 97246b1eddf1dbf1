"""Pure transforms: a day's raw API pages -> typed Arrow tables for every warehouse table.

``DaySplitter`` consumes summary pages first, then detail pages, page by page, typing every record
with :mod:`campaign_pipeline.model.records` (the one typing path). Rows are held as compact Arrow tables
per campaign, never as a partition's worth of Python dicts. It keeps only campaigns inside the
partition window (the API's ``endAt`` may be inclusive), de-duplicates each campaign's messages on
(campaign_id, recipient) keeping the latest ``last_updated_at`` as soon as the campaign's last page
is in, and ``finish()`` returns the tables sorted deterministically so a re-run produces identical
files. A whole 10x day is about 50 MB of Arrow, so a day's tables stay in memory.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from campaign_pipeline import settings
from campaign_pipeline.model import records, schemas
from campaign_pipeline.model.windows import PartitionWindow

_BATCH_ROWS = 1_024
_PART_ROWS = 8_192  # small campaigns are joined into parts of about this many rows


@dataclass
class SplitStats:
    """Counts describing one day's split; PII-free, safe for logs and metadata."""

    summary_records: int = 0
    detail_records: int = 0
    campaigns_out_of_window: int = 0
    duplicate_campaigns_dropped: int = 0
    duplicate_messages_dropped: int = 0
    details_for_unknown_campaigns: int = 0
    unplaced_campaigns: dict[str, str] = field(default_factory=dict)  # campaign id -> why its summary was rejected
    rejected_by_reason: Counter = field(default_factory=Counter)
    unknown_fields: set[str] = field(default_factory=set)
    unknown_statuses: dict[str, set[str]] = field(default_factory=dict)

    def as_metadata(self) -> dict:
        """Plain JSON-able values for Dagster metadata."""
        return {
            "summary_records": self.summary_records,
            "detail_records": self.detail_records,
            "campaigns_out_of_window": self.campaigns_out_of_window,
            "duplicate_campaigns_dropped": self.duplicate_campaigns_dropped,
            "duplicate_messages_dropped": self.duplicate_messages_dropped,
            "details_for_unknown_campaigns": self.details_for_unknown_campaigns,
            "unplaced_campaigns": dict(sorted(self.unplaced_campaigns.items())),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "unknown_fields": sorted(self.unknown_fields),
            "unknown_statuses": {k: sorted(v) for k, v in sorted(self.unknown_statuses.items())},
        }


class DayTable:
    """One table's rows for one day: row tables (the schema without the partition columns) in
    order. Reading adds ``app_id`` and ``partition_date`` batch by batch."""

    def __init__(self, schema: pa.Schema, app_id: str, day: date, parts: list[pa.Table] | None = None):
        self.schema = schema
        self.app_id = app_id
        self.day = day
        self.parts: list[pa.Table] = parts or []

    def __repr__(self) -> str:
        return f"DayTable({self.num_rows} rows in {len(self.parts)} parts)"

    @property
    def num_rows(self) -> int:
        """Rows in the table."""
        return sum(part.num_rows for part in self.parts)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows as record batches of the table's schema, part by part (no copy of the parts)."""
        for part in self.parts:
            for batch in part.to_batches():
                yield with_partition_columns(batch, self.schema, self.app_id, self.day)

    def reader(self) -> pa.RecordBatchReader:
        """A one-pass stream of the rows (for Parquet and DuckDB); each call starts a new pass."""
        return pa.RecordBatchReader.from_batches(self.schema, self.batches())

    def read_all(self) -> pa.Table:
        """The whole table as one Arrow table."""
        return pa.Table.from_batches(list(self.batches()), schema=self.schema)


@dataclass
class DayTables:
    """The typed tables of one partition, keyed by table name, plus the split's stats."""

    day: date
    parts: dict[str, DayTable]
    stats: SplitStats

    @property
    def tables(self) -> dict[str, pa.Table]:
        """Every table as one Arrow table."""
        return {name: table.read_all() for name, table in self.parts.items()}

    @property
    def row_counts(self) -> dict[str, int]:
        """Rows per table."""
        return {name: table.num_rows for name, table in self.parts.items()}


@dataclass
class TypedDetailPage:
    """One detail page typed by :meth:`DaySplitter.type_detail_page`: row tuples plus (record,
    reason) rejections. ``channel`` is ``None`` when the page's campaign is not in the window's summary."""

    history_id: str
    channel: str | None
    row_count: int
    rows: list[tuple] = field(default_factory=list)
    rejected: list[tuple] = field(default_factory=list)
    unknown_fields: set[str] = field(default_factory=set)


class _ColumnBuffer:
    """Row tuples buffered briefly, flushed to Arrow record batches every ``_BATCH_ROWS`` rows."""

    def __init__(self, schema: pa.Schema):
        self.partial_schema = schemas.row_schema(schema)
        self.rows: list[tuple] = []
        self.batches: list[pa.RecordBatch] = []

    def extend(self, rows: list[tuple]) -> None:
        """Append row tuples in the row schema's column order."""
        self.rows.extend(rows)
        if len(self.rows) >= _BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Turn the buffered rows into one record batch."""
        if not self.rows:
            return
        columns = list(zip(*self.rows, strict=True))
        self.rows = []
        fields = list(self.partial_schema)
        arrays = [pa.array(values, type=_storage_type(f.type)) for f, values in zip(fields, columns, strict=True)]
        arrays = [a.cast(f.type) if a.type != f.type else a for a, f in zip(arrays, fields, strict=True)]
        self.batches.append(pa.RecordBatch.from_arrays(arrays, schema=self.partial_schema))

    def to_row_table(self) -> pa.Table:
        """Everything appended so far, without the partition columns; empties the buffer."""
        self.flush()
        table = pa.Table.from_batches(self.batches, schema=self.partial_schema)
        self.batches = []
        return table


def with_partition_columns(data, schema: pa.Schema, app_id: str, day: date):
    """Add the constant ``app_id`` and ``partition_date`` columns to a row table or record batch,
    in their schema positions, and cast it to ``schema``."""
    for name, value, kind in (("app_id", app_id, pa.string()), ("partition_date", day, pa.date32())):
        data = data.add_column(schema.get_field_index(name), name, pa.repeat(pa.scalar(value, kind), data.num_rows))
    return data.cast(schema)


def _storage_type(arrow_type: pa.DataType) -> pa.DataType:
    # Timestamps arrive as epoch microseconds; build them as int64, then cast.
    return pa.int64() if pa.types.is_timestamp(arrow_type) else arrow_type


_CAMPAIGN_COLUMNS = schemas.row_schema(schemas.CAMPAIGNS_SCHEMA).names
_TOTAL_INDEX = _CAMPAIGN_COLUMNS.index("total_recipients")


_LONE_SURROGATE_ESCAPE = re.compile(
    r"(?<!\\)\\u(d[89ab][0-9a-f]{2})(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def json_text(record) -> str:
    """A record as compact JSON text with sorted keys. Text that is not valid Unicode (a lone
    surrogate) is kept as the literal characters of its escape (``\\ud83d``), so the text stays
    valid JSON for DuckDB's JSON functions."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # orjson refuses lone surrogates
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
        return _LONE_SURROGATE_ESCAPE.sub(lambda m: "\\\\u" + (m.group(1) or m.group(2)), text)


class DaySplitter:
    """Split one partition's raw pages into typed tables. Feed summary pages, then detail pages.

    Fetch threads may type pages concurrently (:meth:`type_detail_page`) once the summary is in;
    one thread per campaign keeps a campaign's pages in order."""

    def __init__(self, window: PartitionWindow, app_id: str):
        self.window = window
        self.app_id = app_id
        self.stats = SplitStats()
        self._campaign_channels: dict[str, str] = {}
        self._campaign_rows: dict[str, tuple] = {}  # campaign id -> its row (the copy listed last)
        # Messages are kept per campaign: a campaign is de-duplicated and sorted on its own once
        # its pages are in (duplicates only occur within one campaign's listing), so the day's
        # table is its campaigns in id order, with no day-sized sort or copy.
        self._open_campaigns: dict[str, _ColumnBuffer] = {}
        self._finished_campaigns: dict[str, pa.Table] = {}
        self._statuses: dict[str, set[str]] = {}  # channel -> statuses seen
        self._rejected: list[tuple] = []
        self._lock = threading.Lock()

    @property
    def campaign_channels(self) -> dict[str, str]:
        """Campaign id -> channel for the campaigns that belong to this window."""
        return self._campaign_channels

    @property
    def campaigns_to_fetch(self) -> dict[str, int | None]:
        """Campaign id -> expected detail rows (the summary's ``totalRecipients``) for every
        campaign whose details must be fetched: those in the window, and those whose summary
        record could not be typed but names a usable id (their details are landed and counted
        as rejected, and the day fails its ``campaigns_placed`` check, instead of the campaign
        disappearing)."""
        wanted: dict[str, int | None] = {cid: row[_TOTAL_INDEX] for cid, row in self._campaign_rows.items()}
        wanted.update({cid: None for cid in self.stats.unplaced_campaigns if cid not in wanted})
        return wanted

    def add_summary_records(self, page_records: list) -> None:
        """Type summary records; keep those whose ``date`` falls in the window. A campaign listed
        twice keeps the copy listed last (the one every check sees too)."""
        for record in page_records:
            self.stats.summary_records += 1
            try:
                row = records.parse_campaign(record)
            except records.RecordRejected as rejected:
                campaign_id = _safe_id(record)
                self._reject("summary", record, rejected.reason, None, campaign_id)
                if campaign_id is not None:
                    self.stats.unplaced_campaigns[campaign_id] = rejected.reason
                continue
            if isinstance(record, dict):
                self.stats.unknown_fields.update(records.unknown_fields(record, records.SUMMARY_FIELDS))
            if not self.window.contains_us(row["sent_at"]):
                self.stats.campaigns_out_of_window += 1
                continue
            campaign_id = row["campaign_id"]
            if campaign_id in self._campaign_rows:
                self.stats.duplicate_campaigns_dropped += 1
            self.stats.unplaced_campaigns.pop(campaign_id, None)
            self._campaign_channels[campaign_id] = row["channel"]
            self._campaign_rows[campaign_id] = tuple(row[c] for c in _CAMPAIGN_COLUMNS)
            for reason in row["nulled"]:  # a count outside its column's range, stored as NULL
                self._reject("summary", record, reason, row["channel"], campaign_id)

    def add_detail_records(self, history_id: str, page_records: list) -> None:
        """Type the detail records of campaign ``history_id`` into its channel's table."""
        self.add_typed_detail_page(self.type_detail_page(history_id, page_records))

    def type_detail_page(self, history_id: str, page_records: list) -> TypedDetailPage:
        """Type one detail page without changing the splitter (safe to call from several threads
        once the summary is in); hand the result to :meth:`add_typed_detail_page`."""
        channel = self._campaign_channels.get(history_id)
        if channel is None:
            unplaced = self.stats.unplaced_campaigns.get(history_id)
            rejected = [(record, f"campaign summary rejected: {unplaced}") for record in page_records] if unplaced else []
            return TypedDetailPage(history_id, None, len(page_records), rejected=rejected)
        typed = TypedDetailPage(history_id, channel, len(page_records))
        parse = records.MESSAGE_PARSERS[channel]
        known = records.DETAIL_FIELDS
        for record in page_records:
            try:
                typed.rows.append(parse(record, history_id))
            except records.RecordRejected as rejected:
                typed.rejected.append((record, rejected.reason))
                continue
            if not known.issuperset(record) or "sender" in record and not records.SENDER_FIELDS.issuperset(
                records.sender_of(record)
            ):
                typed.unknown_fields.update(records.unknown_fields(record, known))
        return typed

    def add_typed_detail_page(self, typed: TypedDetailPage) -> None:
        """Add a page typed by :meth:`type_detail_page` to its campaign (thread-safe)."""
        with self._lock:
            if typed.channel is None:
                for record, reason in typed.rejected:
                    self._reject("detail", record, reason, None, typed.history_id)
                if not typed.rejected:
                    self.stats.details_for_unknown_campaigns += typed.row_count
                return
            self.stats.detail_records += typed.row_count
            self.stats.unknown_fields.update(typed.unknown_fields)
            for record, reason in typed.rejected:
                self._reject("detail", record, reason, typed.channel, typed.history_id)
            buffer = self._open_campaigns.get(typed.history_id)
            if buffer is None:
                spec = schemas.SMS_MESSAGES if typed.channel == settings.CHANNEL_SMS else schemas.WHATSAPP_MESSAGES
                buffer = self._open_campaigns[typed.history_id] = _ColumnBuffer(spec.schema)
        buffer.extend(typed.rows)

    def finish_campaign(self, history_id: str) -> None:
        """De-duplicate and sort one campaign whose pages are all in (thread-safe; the work runs
        outside the lock, so fetch threads finish their campaigns in parallel)."""
        with self._lock:
            buffer = self._open_campaigns.pop(history_id, None)
        if buffer is None:
            return
        table = buffer.to_row_table()
        # Every row of the buffer carries this campaign's id, so the recipient alone is the key.
        kept = table.take(latest_row_indices(table, ("recipient",), "last_updated_at"))
        statuses = set(pc.unique(kept["status"]).drop_null().to_pylist())
        with self._lock:
            self.stats.duplicate_messages_dropped += table.num_rows - kept.num_rows
            self._statuses.setdefault(self._campaign_channels[history_id], set()).update(statuses)
            self._finished_campaigns[history_id] = kept

    def _coalesced(self, campaign_ids: list[str]) -> list[pa.Table]:
        """The finished campaigns, in order, as parts of about ``_PART_ROWS`` rows each: tiny
        campaigns are joined (thousands of tiny batches cost DuckDB about 150 MB more to insert),
        and each campaign is dropped as soon as it is copied into its part."""
        parts: list[pa.Table] = []
        group: list[pa.Table] = []
        rows = 0
        for cid in campaign_ids:
            table = self._finished_campaigns.pop(cid)
            if table.num_rows >= _PART_ROWS:
                parts.append(table)
                continue
            group.append(table)
            rows += table.num_rows
            if rows >= _PART_ROWS:
                parts.append(pa.concat_tables(group).combine_chunks())
                group, rows = [], 0
        if rows:
            parts.append(pa.concat_tables(group).combine_chunks())
        return parts

    def _reject(self, endpoint: str, record, reason: str, channel: str | None, campaign_id: str | None) -> None:
        self.stats.rejected_by_reason[reason] += 1
        raw = json_text(record)
        self._rejected.append((endpoint, channel, campaign_id, reason, raw))

    def finish(self) -> DayTables:
        """Build the day's tables: de-duplicated, sorted, typed by the declared schemas. Message
        tables are their campaigns in id order."""
        day, app_id = self.window.day, self.app_id
        buffer = _ColumnBuffer(schemas.CAMPAIGNS_SCHEMA)
        buffer.extend(list(self._campaign_rows.values()))
        campaigns = _sorted(buffer.to_row_table(), schemas.CAMPAIGNS)
        parts = {schemas.CAMPAIGNS.name: DayTable(schemas.CAMPAIGNS.schema, app_id, day, [campaigns])}
        for history_id in list(self._open_campaigns):
            self.finish_campaign(history_id)
        for spec in schemas.MESSAGE_TABLES:
            channel = settings.CHANNEL_SMS if spec is schemas.SMS_MESSAGES else settings.CHANNEL_WHATSAPP
            ids = [cid for cid in sorted(self._finished_campaigns) if self._campaign_channels[cid] == channel]
            parts[spec.name] = DayTable(spec.schema, app_id, day, self._coalesced(ids))
            unknown = self._statuses.get(channel, set()) - set(
                settings.SMS_STATUSES if channel == settings.CHANNEL_SMS else settings.WHATSAPP_STATUSES
            )
            if unknown:
                self.stats.unknown_statuses[channel] = unknown
        rejected = _sorted(self._rejected_row_table(), schemas.REJECTED_RECORDS)
        parts[schemas.REJECTED_RECORDS.name] = DayTable(schemas.REJECTED_RECORDS.schema, app_id, day, [rejected])
        return DayTables(day=day, parts=parts, stats=self.stats)

    def _rejected_row_table(self) -> pa.Table:
        columns = list(zip(*self._rejected, strict=True)) if self._rejected else [[]] * 5
        names = ["endpoint", "channel", "campaign_id", "reason", "raw_record"]
        return pa.table({name: pa.array(values, pa.string()) for name, values in zip(names, columns, strict=True)},
                        schema=schemas.row_schema(schemas.REJECTED_RECORDS_SCHEMA))


def _safe_id(record) -> str | None:
    if not isinstance(record, dict):
        return None
    try:
        return records.text_or_none(record.get("id"))
    except records.RecordRejected:
        return None


def _sorted(table: pa.Table, spec: schemas.TableSpec) -> pa.Table:
    """``table`` in its spec's order (a row table: the constant partition columns are not in it)."""
    if table.num_rows == 0:
        return table
    keys = [(c, "ascending") for c in spec.sort_columns if c in table.schema.names]
    return table.take(pc.sort_indices(table, sort_keys=keys))


def deduplicate_latest(table: pa.Table, key_columns: tuple[str, ...], order_column: str) -> pa.Table:
    """Keep one row per key: the one with the greatest ``order_column`` (nulls lowest), ties to the
    row that arrived last. The result is sorted by the key columns."""
    if table.num_rows == 0:
        return table
    return table.take(latest_row_indices(table, key_columns, order_column))


def latest_row_indices(table: pa.Table, key_columns: tuple[str, ...], order_column: str) -> pa.Array:
    """Indices of the rows :func:`deduplicate_latest` keeps, in key order. Sorts only the key
    columns, so the caller can take the kept rows slice by slice instead of copying the table."""
    if table.num_rows == 0:
        return pa.array([], pa.int64())
    # Most campaigns hold no duplicate keys: a (stable) sort of the keys alone is then the answer,
    # at about half the cost of the full sort below (measured on 8k-row campaigns).
    if key_columns:
        indices = pc.sort_indices(table.select(list(key_columns)), sort_keys=[(c, "ascending") for c in key_columns])
        if not _has_adjacent_duplicates(table, key_columns, indices):
            return indices
    arrival = pa.array(range(table.num_rows), pa.int64())
    keys = pa.table({**{c: table[c] for c in key_columns}, order_column: table[order_column], "__arrival": arrival})
    sort_keys = [(c, "ascending") for c in key_columns]
    sort_keys += [(order_column, "descending", "at_end"), ("__arrival", "descending")]
    indices = pc.sort_indices(keys, sort_keys=sort_keys)
    keep = pa.concat_arrays([pa.array([True]), _key_changes(keys, key_columns, indices)])
    del keys
    return indices.filter(keep)


def _key_changes(table: pa.Table, key_columns: tuple[str, ...], indices: pa.Array) -> pa.Array:
    """For rows ``indices[1:]``: True where the key differs from the previous row's (by ``indices``)."""
    keep = None
    for column in key_columns:
        values = table[column].take(indices).combine_chunks()
        changed = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1))
        keep = changed if keep is None else pc.or_(keep, changed)
    return keep


def _has_adjacent_duplicates(table: pa.Table, key_columns: tuple[str, ...], indices: pa.Array) -> bool:
    if len(indices) < 2:
        return False
    changes = _key_changes(table, key_columns, indices)
    return changes.false_count > 0 or changes.null_count > 0  # a null key takes the full path too
