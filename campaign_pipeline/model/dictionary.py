"""The data dictionary: what every table, view and column of the warehouse means, declared once.

The column names and types come from the Arrow schemas (:mod:`campaign_pipeline.model.schemas`) and the
view SQL (``campaign_pipeline/storage/sql``); this module adds their meanings, and from them:

- ``COMMENT ON`` statements for every table, view and column of a DuckDB database
  (:func:`comment_statements`, :func:`apply_comments`), so ``DESCRIBE``, ``duckdb_columns()``,
  DBeaver or any SQL tool show the dictionary. Whether a name is a table or a view is read from the
  database's catalog, so the same comments fit the warehouse (tables) and a database that exposes
  the same names as views over the Parquet lake;
- the column tables of ``docs/data-dictionary.md``, regenerated with
  ``python -m campaign_pipeline.model.dictionary --write`` (``--check`` fails when the file is stale);
- the descriptions of Dagster's column schemas
  (:mod:`campaign_pipeline.defs.table_metadata`).

Meanings are markdown (backticks for literal values); comments and Dagster get them as plain text.
A table, view or column without a meaning raises :class:`DictionaryError`, so drift fails loudly.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from campaign_pipeline.errors import CampaignPipelineError
from campaign_pipeline.model import schemas

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "data-dictionary.md"
VIEW_KIND = "VIEW"


class DictionaryError(CampaignPipelineError):
    """A table, view or column has no meaning in the dictionary (or the dictionary names a column
    that does not exist): add or fix it in :mod:`campaign_pipeline.model.dictionary`."""


@dataclass(frozen=True)
class Column:
    """One column's meaning and where its values come from (the API field for a table, the
    expression or source column for a view); both markdown."""

    meaning: str
    source: str


@dataclass(frozen=True)
class Relation:
    """A table or view: its description (grain and key, markdown) and its columns' meanings in order."""

    description: str
    columns: Mapping[str, Column]


# ------------------------------------------------------------------ tables

_APP_ID = Column("the CINNOX App ID the row came from (one deployment can ingest several apps)",
                 "`CINNOX_APP_ID` / `CINNOX_<APP>_APP_ID` of the fetching app")
_LAST_UPDATED = Column("when the status last changed", "`detail.lastUpdatedDateTime` / `LastUpdatedDateTime`")
_RECIPIENT = Column("recipient phone number, E.164 with a leading `+` (PII)", "`detail.recipient`")


def _table_description(spec: schemas.TableSpec, more: str = "") -> str:
    """A table's description: its grain (declared in :mod:`schemas`), anything more, then its key."""
    key = f" Key: ({', '.join(f'`{c}`' for c in spec.key_columns)})." if spec.key_columns else ""
    return f"{spec.grain}{f' {more}' if more else ''}{key}"


TABLES: dict[str, Relation] = {
    "campaigns": Relation(
        _table_description(schemas.CAMPAIGNS),
        {
            "app_id": _APP_ID,
            "campaign_id": Column("the campaign's id (the `historyID` of the detail call)", "`summary.id`"),
            "partition_date": Column("day of `sent_at` in the partition time zone", "derived from `summary.date`"),
            "sent_at": Column("when the campaign was sent", "`summary.date`"),
            "channel": Column("`SMS` or `WhatsApp`", "`summary.channel`"),
            "campaign_name": Column("the campaign's name", "`summary.campaignName`"),
            "created_by": Column("staff who created the campaign", "`summary.createdBy`"),
            "sender_phone": Column("SMS: virtual/service number or alphanumeric sender id; "
                                   "WhatsApp: the channel's number", "`summary.sender.phone`"),
            "sender_channel_name": Column("WhatsApp channel name (NULL for SMS)", "`summary.sender.channelName`"),
            "sender_source_name": Column("WhatsApp template source, e.g. 360dialog (NULL for SMS)",
                                         "`summary.sender.sourceName`"),
            "sender_eid": Column("SMS: id of the staff who sent it (NULL for WhatsApp)",
                                 "`summary.sender.senderEID`"),
            "subject": Column("WhatsApp template name (NULL for SMS)", "`summary.subject`"),
            "total_recipients": Column("recipients of the campaign", "`summary.totalRecipients`"),
            "delivered": Column("delivered count as the summary reports it (WhatsApp: may or may not include read)",
                                "`summary.delivered`"),
            "read": Column("WhatsApp read count (NULL for SMS)", "`summary.read`"),
            "replied": Column("WhatsApp replies (not rebuildable from detail rows)", "`summary.replied`"),
            "pending": Column("WhatsApp pending count", "`summary.pending`"),
            "failed": Column("WhatsApp failed count", "`summary.failed`"),
        },
    ),
    "sms_messages": Relation(
        _table_description(schemas.SMS_MESSAGES),
        {
            "app_id": _APP_ID,
            "campaign_id": Column("the campaign's id", "`detail.id`"),
            "recipient": _RECIPIENT,
            "partition_date": Column("the campaign's partition day", "derived from `summary.date`"),
            "sent_at": Column("when the campaign was sent", "`detail.date`"),
            "sender_phone": Column("virtual/service number or alphanumeric sender id", "`detail.sender.phone`"),
            "sender_eid": Column("id of the staff who sent the campaign", "`detail.sender.senderEID`"),
            "recipient_country": Column("ISO 3166-1 alpha-2 country of the recipient, upper case",
                                        "`detail.recipientCountry`"),
            "content": Column("the message text (PII)", "`detail.content`"),
            "num_sms": Column("billable segments submitted to the carrier (160/153 GSM-7, 70/67 Unicode characters)",
                              "`detail.numSMS`"),
            "status": Column("Submitted, Delivered, Undelivered, Pending or Failed", "`detail.status`"),
            "carrier_network_status": Column("Queued, Delivered or Undelivered; NULL when the carrier never "
                                             "received it", "`detail.carrierNetworkStatus`"),
            "last_updated_at": _LAST_UPDATED,
        },
    ),
    "whatsapp_messages": Relation(
        _table_description(schemas.WHATSAPP_MESSAGES),
        {
            "app_id": _APP_ID,
            "campaign_id": Column("the campaign's id", "`detail.id`"),
            "recipient": _RECIPIENT,
            "partition_date": Column("the campaign's partition day", "derived from `summary.date`"),
            "sent_at": Column("when the campaign was sent", "`detail.date`"),
            "sender_phone": Column("the WhatsApp channel's number", "`detail.sender.phone`"),
            "sender_channel_name": Column("WhatsApp channel name", "`detail.sender.channelName`"),
            "sender_source_name": Column("template source, e.g. 360dialog", "`detail.sender.sourceName`"),
            "subject": Column("template name", "`detail.subject`"),
            "status": Column("Delivered, Read, Pending or Failed", "`detail.status`"),
            "failed_reason": Column("e.g. `Error Code: 7061120 - 360Dialog bad request`; NULL unless Failed",
                                    "`detail.failedReason`"),
            "last_updated_at": _LAST_UPDATED,
        },
    ),
    "rejected_records": Relation(
        _table_description(schemas.REJECTED_RECORDS, "Also one row per summary count stored as NULL because it "
                                                     "was out of range (that campaign is loaded)."),
        {
            "app_id": _APP_ID,
            "partition_date": Column("the partition being loaded when the record arrived", "-"),
            "endpoint": Column("`summary` or `detail`", "-"),
            "channel": Column("the campaign's channel, when known", "`summary.channel`"),
            "campaign_id": Column("the campaign's id, when known", "`summary.id` / `historyID`"),
            "reason": Column("why the record was rejected, e.g. `missing id` (every reason: Rejected-record "
                             "reasons in docs/data-dictionary.md)", "-"),
            "raw_record": Column("the record as received, JSON text (may hold PII)", "the whole record"),
        },
    ),
}

# ------------------------------------------------------------------ views


def _reuse(table: str, column: str, source: str | None = None) -> Column:
    """A view column with the same meaning as ``table.column``, its source ``table.column`` unless given."""
    return Column(TABLES[table].columns[column].meaning, source or f"`{table}.{column}`")


_CHANNEL = Column("`SMS` or `WhatsApp`", "which table the row comes from")
_METRIC_CHANNEL = Column("`SMS` or `WhatsApp`", "`message_metrics.channel`")
_DAY = Column("the campaigns' partition day", "`message_metrics.partition_date`")
_SENT_AT = Column("when the campaign was sent", "`*_messages.sent_at`")
_STATUS = Column("the message's current status (SMS: Submitted, Delivered, Undelivered, Pending or Failed; "
                 "WhatsApp: Delivered, Read, Pending or Failed)", "`*_messages.status`")
_COUNTRY = Column("ISO alpha-2 country of the SMS recipient; NULL when the API gave none",
                  "`sms_messages.recipient_country`")

_MESSAGE_COLUMNS = {
    "channel": _CHANNEL,
    "app_id": Column("the CINNOX App ID the row came from", "`*_messages.app_id`"),
    "campaign_id": Column("the campaign's id", "`*_messages.campaign_id`"),
    "recipient": Column("recipient phone number, E.164 with a leading `+` (PII)", "`*_messages.recipient`"),
    "partition_date": Column("the campaign's partition day", "`*_messages.partition_date`"),
    "sent_at": _SENT_AT,
    "sender_phone": Column("the sending number or alphanumeric sender id (WhatsApp: the channel's number)",
                           "`*_messages.sender_phone`"),
    "status": _STATUS,
    "last_updated_at": Column("when the status last changed", "`*_messages.last_updated_at`"),
}


def _counts(messages: str, delivered: str = "delivered messages", read: str | None = "read messages; NULL for SMS",
            failed: str = "failed messages", undelivered: str | None = "undelivered SMS; 0 for WhatsApp",
            in_flight: str = "messages not settled yet (Pending, or SMS Submitted)") -> dict[str, Column]:
    """The count columns a rate view sums from the ``message_metrics`` flags."""
    columns = {"messages": Column(messages, "`count(*)`"),
               "delivered": Column(delivered, "`sum(is_delivered)`")}
    if read is not None:
        columns["read"] = Column(read, "`sum(is_read)`")
    columns["failed"] = Column(failed, "`sum(is_failed)`")
    if undelivered is not None:
        columns["undelivered"] = Column(undelivered, "`sum(is_undelivered)`")
    columns["in_flight"] = Column(in_flight, "`sum(is_in_flight)`")
    return columns


_DELIVERY_RATE = Column("delivered / (messages - in_flight); NULL when no message is settled",
                        "`delivery_rate()` macro")
_FAILURE_RATE = Column("(failed + undelivered) / (messages - in_flight); NULL when no message is settled",
                       "`failure_rate()` macro")
_READ_RATE = Column("read / delivered; NULL for SMS or when nothing was delivered", "`read_rate()` macro")
_RATES = {"delivery_rate": _DELIVERY_RATE, "failure_rate": _FAILURE_RATE, "read_rate": _READ_RATE}

VIEWS: dict[str, Relation] = {
    "messages": Relation(
        "One row per recipient message of either channel, with the columns both channels share. "
        "Key: (`app_id`, `campaign_id`, `recipient`).",
        _MESSAGE_COLUMNS,
    ),
    "message_metrics": Relation(
        "One row per recipient message of either channel, every column of both channels (NULL where the channel "
        "has no such field) plus one 0/1 flag per metric. Key: (`app_id`, `campaign_id`, `recipient`).",
        {
            **{name: _MESSAGE_COLUMNS[name] for name in ("channel", "app_id", "campaign_id", "recipient",
                                                          "partition_date", "sent_at", "last_updated_at",
                                                          "status", "sender_phone")},
            "sender_eid": Column("SMS: id of the staff who sent the campaign (NULL for WhatsApp)",
                                 "`sms_messages.sender_eid`"),
            "sender_channel_name": Column("WhatsApp channel name (NULL for SMS)",
                                          "`whatsapp_messages.sender_channel_name`"),
            "sender_source_name": Column("WhatsApp template source, e.g. 360dialog (NULL for SMS)",
                                         "`whatsapp_messages.sender_source_name`"),
            "subject": Column("WhatsApp template name (NULL for SMS)", "`whatsapp_messages.subject`"),
            "recipient_country": Column("ISO alpha-2 country of the SMS recipient (NULL for WhatsApp)",
                                        "`sms_messages.recipient_country`"),
            "num_sms": Column("billable SMS segments (NULL for WhatsApp)", "`sms_messages.num_sms`"),
            "carrier_network_status": Column("SMS carrier status: Queued, Delivered or Undelivered; NULL when the "
                                             "carrier never received it, and for WhatsApp",
                                             "`sms_messages.carrier_network_status`"),
            "failed_reason": Column("WhatsApp failure reason (NULL unless Failed, and for SMS)",
                                    "`whatsapp_messages.failed_reason`"),
            "is_delivered": Column("1 if delivered (SMS Delivered; WhatsApp Delivered or Read), else 0",
                                   "`status`, `channel`"),
            "is_read": Column("1 if WhatsApp Read, 0 if not; NULL for SMS", "`status`, `channel`"),
            "is_failed": Column("1 if status Failed, else 0", "`status`"),
            "is_undelivered": Column("1 if SMS Undelivered, else 0", "`status`, `channel`"),
            "is_pending": Column("1 if status Pending, else 0", "`status`"),
            "is_in_flight": Column("1 if not settled yet (Pending, or SMS Submitted), else 0",
                                   "`status`, `channel`"),
        },
    ),
    "delivery_rates_daily": Relation(
        "One row per `partition_date` and `channel` that has messages.",
        {"partition_date": _DAY, "channel": _METRIC_CHANNEL, **_counts("messages"), **_RATES},
    ),
    "delivery_rates_by_country": Relation(
        "One row per `partition_date` and SMS `recipient_country` (SMS only).",
        {"partition_date": _DAY, "recipient_country": _COUNTRY,
         **_counts("SMS messages", delivered="delivered SMS", read=None, failed="failed SMS",
                   undelivered="undelivered SMS", in_flight="SMS not settled yet (Pending or Submitted)"),
         "delivery_rate": _DELIVERY_RATE, "failure_rate": _FAILURE_RATE},
    ),
    "delivery_rates_by_sender": Relation(
        "One row per `partition_date`, `channel` and sender (`sender_phone`, `sender_eid`, "
        "`sender_channel_name`; the other channel's sender column is NULL).",
        {
            "partition_date": _DAY,
            "channel": _METRIC_CHANNEL,
            "sender_phone": Column("sending number or alphanumeric sender id (WhatsApp: the channel's number)",
                                   "`*_messages.sender_phone`"),
            "sender_eid": Column("SMS: id of the staff who sent the campaign (NULL for WhatsApp)",
                                 "`sms_messages.sender_eid`"),
            "sender_channel_name": Column("WhatsApp channel name (NULL for SMS)",
                                          "`whatsapp_messages.sender_channel_name`"),
            **_counts("messages"),
            **_RATES,
        },
    ),
    "delivery_rates_by_template": Relation(
        "One row per `partition_date` and WhatsApp template (`subject`, `sender_source_name`); WhatsApp only.",
        {
            "partition_date": _DAY,
            "subject": Column("WhatsApp template name", "`whatsapp_messages.subject`"),
            "sender_source_name": _reuse("whatsapp_messages", "sender_source_name"),
            **_counts("WhatsApp messages", delivered="delivered or read messages", read="read messages",
                      undelivered=None, in_flight="messages not settled yet (Pending)"),
            "delivery_rate": _DELIVERY_RATE,
            "failure_rate": Column("failed / (messages - in_flight); NULL when no message is settled",
                                   "`failure_rate()` macro"),
            "read_rate": Column("read / delivered; NULL when nothing was delivered", "`read_rate()` macro"),
        },
    ),
    "campaign_delivery": Relation(
        "One row per campaign (every row of `campaigns`): the summary's totals (`summary_*`) beside the counts "
        "rebuilt from the detail rows. A campaign without detail rows has `messages` = 0 and NULL rates. "
        "Key: (`app_id`, `campaign_id`).",
        {
            "app_id": Column("the CINNOX App ID the campaign came from", "`campaigns.app_id`"),
            **{name: _reuse("campaigns", name) for name in ("campaign_id", "partition_date", "sent_at", "channel",
                                                             "campaign_name", "created_by", "sender_phone",
                                                             "sender_eid", "sender_channel_name", "subject")},
            "total_recipients": Column("recipients according to the summary", "`campaigns.total_recipients`"),
            "summary_delivered": Column("delivered according to the summary", "`campaigns.delivered`"),
            "summary_read": Column("read according to the summary (WhatsApp)", "`campaigns.read`"),
            "summary_pending": Column("pending according to the summary (WhatsApp)", "`campaigns.pending`"),
            "summary_failed": Column("failed according to the summary (WhatsApp)", "`campaigns.failed`"),
            "summary_replied": Column("replies according to the summary (WhatsApp)", "`campaigns.replied`"),
            "messages": Column("detail rows loaded for the campaign (0 when none)", "`count(*)` of `message_metrics`"),
            "delivered": Column("delivered detail rows (WhatsApp: Delivered + Read)", "`sum(is_delivered)`"),
            "read": Column("read detail rows; NULL for SMS", "`sum(is_read)`"),
            "pending": Column("Pending detail rows", "`sum(is_pending)`"),
            "failed": Column("failed detail rows", "`sum(is_failed)`"),
            "undelivered": Column("undelivered SMS detail rows", "`sum(is_undelivered)`"),
            "in_flight": Column("detail rows not settled yet (Pending, or SMS Submitted)", "`sum(is_in_flight)`"),
            **_RATES,
            "recipients_diff": Column("messages - total_recipients (0 when detail and summary agree)", "derived"),
            "delivered_diff": Column("delivered - summary_delivered (WhatsApp: equals `read` if the summary counts "
                                     "Delivered only)", "derived"),
        },
    ),
    "failure_reasons": Relation(
        "One row per `partition_date`, `channel`, `status` and reason, over the messages that did not arrive "
        "(failed, or SMS undelivered).",
        {
            "partition_date": _DAY,
            "channel": _METRIC_CHANNEL,
            "status": Column("`Failed` or (SMS) `Undelivered`", "`message_metrics.status`"),
            "error_code": Column("WhatsApp error code, e.g. `7061120`; NULL for SMS or a reason without a code",
                                 "digits of `failed_reason` after `Error Code:`"),
            "error_text": Column("WhatsApp error text, e.g. `360Dialog bad request` (the whole reason if it has no "
                                 "code); NULL for SMS", "rest of `failed_reason`, dash removed"),
            "carrier_network_status": Column("SMS carrier status; NULL when the carrier never received the "
                                             "message, and for WhatsApp", "`sms_messages.carrier_network_status`"),
            "messages": Column("messages with this reason", "`count(*)`"),
        },
    ),
    "sms_segments_daily": Relation(
        "One row per `partition_date` and SMS `recipient_country`.",
        {
            "partition_date": _DAY,
            "recipient_country": _COUNTRY,
            "messages": Column("SMS messages, any status", "`count(*)`"),
            "segments": Column("billable segments: sum of `num_sms` over every SMS, any status", "`sum(num_sms)`"),
            "multipart_messages": Column("messages split into more than one segment",
                                         "`count(*) FILTER (num_sms > 1)`"),
        },
    ),
    "status_latency": Relation(
        "One row per `channel` and current `status`, over every loaded message.",
        {
            "channel": _METRIC_CHANNEL,
            "status": Column("the messages' current status", "`message_metrics.status`"),
            "messages": Column("messages with this status", "`count(*)`"),
            "p50_seconds": Column("median seconds from `sent_at` to `last_updated_at` (messages without "
                                  "`last_updated_at` are left out)", "`quantile_cont(…, 0.5)`"),
            "p90_seconds": Column("90th percentile of the same, linearly interpolated", "`quantile_cont(…, 0.9)`"),
            "p99_seconds": Column("99th percentile of the same, linearly interpolated", "`quantile_cont(…, 0.99)`"),
            "max_seconds": Column("the longest", "`max(…)`"),
        },
    ),
}

RELATIONS: dict[str, Relation] = {**TABLES, **VIEWS}


# ------------------------------------------------------------------ lookups


def _plain(markdown: str) -> str:
    """A meaning as plain text (for SQL comments and Dagster): without the markdown backticks."""
    return markdown.replace("`", "")


def _relation(name: str) -> Relation:
    try:
        return RELATIONS[name]
    except KeyError:
        raise DictionaryError(f"{name!r} has no entry in the data dictionary (campaign_pipeline/model/dictionary.py); "
                              f"known: {', '.join(RELATIONS)}") from None


def table_description(name: str) -> str:
    """The plain-text description (grain and key) of the table or view ``name``; raises
    :class:`DictionaryError` if the dictionary does not know it."""
    return _plain(_relation(name).description)


def column_descriptions(name: str) -> dict[str, str]:
    """Column name -> plain-text meaning for the table or view ``name``, in the dictionary's order
    (a table's is its Arrow schema's); raises :class:`DictionaryError` if the dictionary does not know it."""
    return {column: _plain(entry.meaning) for column, entry in _relation(name).columns.items()}


def digest() -> str:
    """A hash of every description and meaning: fold it into the warehouse's definitions digest so a
    changed meaning re-applies the comments."""
    lines = [f"{name}\t{relation.description}" for name, relation in RELATIONS.items()]
    lines += [f"{name}.{column}\t{entry.meaning}" for name, relation in RELATIONS.items()
              for column, entry in relation.columns.items()]
    text = "\n".join(lines)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ COMMENT ON

_CATALOG_SQL = """
SELECT 'TABLE' AS kind, table_name AS name FROM duckdb_tables()
WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal AND NOT temporary
UNION ALL
SELECT 'VIEW', view_name FROM duckdb_views()
WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal AND NOT temporary
ORDER BY name
"""
_COLUMNS_SQL = """
SELECT table_name, column_name FROM duckdb_columns()
WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal
ORDER BY table_name, column_index
"""


def catalog(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, list[str]]]:
    """(``TABLE`` | ``VIEW``, name, column names in order) of every table and view in schema ``main``
    of the connected database, internal ones (names starting with ``_``) left out."""
    columns: dict[str, list[str]] = {}
    for table, column in con.execute(_COLUMNS_SQL).fetchall():
        columns.setdefault(table, []).append(column)
    return [(kind, name, columns.get(name, [])) for kind, name in con.execute(_CATALOG_SQL).fetchall()
            if not name.startswith("_")]


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def comment_statements(con: duckdb.DuckDBPyConnection) -> list[str]:
    """``COMMENT ON TABLE|VIEW`` and ``COMMENT ON COLUMN`` for every table and view (and each of its
    columns) that exists in schema ``main`` of the connected database. TABLE or VIEW is read from the
    catalog, so a database that exposes the tables as views of the same names gets the same comments.
    Raises :class:`DictionaryError`, naming every problem, if an existing table, view or column has no
    meaning, or the dictionary lists a column that an existing table or view does not have."""
    statements: list[str] = []
    problems: list[str] = []
    for kind, name, columns in catalog(con):
        relation = RELATIONS.get(name)
        if relation is None:
            problems.append(f"{kind.lower()} {name} has no entry")
            continue
        missing = [column for column in columns if column not in relation.columns]
        stale = [column for column in relation.columns if column not in columns]
        if missing:
            problems.append(f"{kind.lower()} {name}: no meaning for column(s) {', '.join(missing)}")
        if stale:
            problems.append(f"{kind.lower()} {name}: the dictionary lists column(s) it does not have: "
                            f"{', '.join(stale)}")
        statements.append(f"COMMENT ON {kind} {_identifier(name)} IS {_literal(_plain(relation.description))}")
        statements.extend(
            f"COMMENT ON COLUMN {_identifier(name)}.{_identifier(column)} "
            f"IS {_literal(_plain(relation.columns[column].meaning))}"
            for column in columns if column in relation.columns
        )
    if problems:
        raise DictionaryError("the data dictionary (campaign_pipeline/model/dictionary.py) is out of date with the "
                              "database: " + "; ".join(problems))
    return statements


def apply_comments(con: duckdb.DuckDBPyConnection) -> int:
    """Run :func:`comment_statements` on ``con`` (a read-write connection; re-run after views are
    recreated: ``CREATE OR REPLACE VIEW`` drops a view's comments). Returns the number of statements
    applied: a DuckLake catalog refuses comments on a view's columns, which are then left out.
    Nothing is applied if any meaning is missing (:class:`DictionaryError`)."""
    statements = comment_statements(con)
    applied = 0
    view_columns_refused = False
    for statement in statements:
        if view_columns_refused and statement.startswith("COMMENT ON COLUMN") and _on_view(con, statement):
            continue
        try:
            con.execute(statement)
            applied += 1
        except duckdb.BinderException as error:
            # A DuckLake catalog keeps comments on tables, columns and views, not on a view's
            # columns ("Cannot comment on columns for entry ... - it is not a table").
            if "it is not a table" not in str(error):
                raise
            view_columns_refused = True
    return applied


def _on_view(con: duckdb.DuckDBPyConnection, statement: str) -> bool:
    name = statement.removeprefix("COMMENT ON COLUMN ").split(".", 1)[0].strip('"')
    return con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND database_name = current_database()",
                       [name]).fetchone()[0] > 0


# ------------------------------------------------------------------ docs/data-dictionary.md

_BLOCK = re.compile(r"<!-- generated: (?P<name>\w+) -->\n.*?<!-- end generated: (?P=name) -->\n", re.DOTALL)
_TYPE_NAMES = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}


def _column_types() -> dict[str, list[tuple[str, str]]]:
    """Table or view name -> [(column, DuckDB type)] in order: tables from their Arrow schemas, views
    as an in-memory warehouse with this code's definitions describes them."""
    from campaign_pipeline.storage.warehouse import prepare  # here: warehouse may import this module

    types = {name: [(f.name, schemas.duckdb_type(f.type)) for f in spec.schema]
             for name, spec in schemas.TABLES.items()}
    con = duckdb.connect()
    try:
        prepare(con)
        for kind, name, _ in catalog(con):
            if kind == VIEW_KIND:
                described = con.execute(f"DESCRIBE {_identifier(name)}").fetchall()
                types[name] = [(row[0], _TYPE_NAMES.get(row[1], row[1])) for row in described]
    finally:
        con.close()
    return types


def _section(name: str, columns: list[tuple[str, str]]) -> str:
    """The generated part of a ``### name`` section: the grain line and the column table."""
    relation = RELATIONS[name]
    missing = [column for column, _ in columns if column not in relation.columns]
    stale = [column for column in relation.columns if column not in dict(columns)]
    if missing or stale:
        raise DictionaryError(f"{name}: no meaning for {missing}, no such column {stale} "
                              "(campaign_pipeline/model/dictionary.py)")
    last = "API field" if name in TABLES else "source"
    lines = [f"<!-- generated: {name} -->",
             f"Grain: {relation.description[0].lower()}{relation.description[1:]}", "",
             f"| column | type | meaning | {last} |", "|---|---|---|---|"]
    for column, kind in columns:
        entry = relation.columns[column]
        if "|" in entry.meaning + entry.source:
            raise DictionaryError(f"{name}.{column}: a '|' would break the markdown table")
        lines.append(f"| {column} | {kind} | {entry.meaning} | {entry.source} |")
    lines.append(f"<!-- end generated: {name} -->")
    return "\n".join(lines) + "\n"


def render_doc(text: str) -> str:
    """``text`` (docs/data-dictionary.md) with every generated block (``<!-- generated: name -->`` to
    ``<!-- end generated: name -->``) rebuilt from this module; the prose around them is kept. Raises
    :class:`DictionaryError` if a table or view has no block, or a block names an unknown one."""
    types = _column_types()
    unknown, gone = sorted(set(types) - set(RELATIONS)), sorted(set(RELATIONS) - set(types))
    if unknown or gone:
        raise DictionaryError(f"campaign_pipeline/model/dictionary.py has no entry for {unknown} and entries for "
                              f"tables or views that do not exist: {gone}")
    found = [match["name"] for match in _BLOCK.finditer(text)]
    expected = sorted(types)
    if sorted(found) != expected:
        raise DictionaryError(f"the doc has generated blocks for {sorted(found)}, expected exactly one for each of "
                              f"{expected}: add `<!-- generated: name -->` / `<!-- end generated: name -->` "
                              "lines under the name's heading")
    return _BLOCK.sub(lambda match: _section(match["name"], types[match["name"]]), text)


def main(argv: list[str] | None = None) -> int:
    """``python -m campaign_pipeline.model.dictionary``: print docs/data-dictionary.md with its generated
    blocks rebuilt; ``--write`` rewrites the file in place, ``--check`` exits 1 (with a diff) if it is stale."""
    parser = argparse.ArgumentParser(prog="python -m campaign_pipeline.model.dictionary", description=main.__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the doc in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if the doc is not up to date")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="the markdown file (default: %(default)s)")
    args = parser.parse_args(argv)
    current = args.doc.read_text()
    if not current.strip():
        parser.error(f"{args.doc} is empty (redirected onto itself?): restore it (git checkout) and use --write")
    rendered = render_doc(current)
    if args.check:
        if rendered == current:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), rendered.splitlines(True),
                                                   str(args.doc), "generated"))
        print(f"\n{args.doc} is stale: run python -m campaign_pipeline.model.dictionary --write", file=sys.stderr)
        return 1
    if args.write:
        if rendered != current:
            args.doc.write_text(rendered)
        return 0
    sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
