"""Per-partition data-quality checks over the warehouse, without Dagster.

Each check answers one question about one table for one partition day and returns a
:class:`CheckOutcome`; the Dagster layer turns outcomes into partitioned asset-check evaluations.
Checks that guard correctness are *blocking*: when one fails, the day's new version is rolled back and
quarantined, and readers keep the previous one.
Metadata carries counts, statuses, field names and campaign ids only, never phone numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb

from campaign_pipeline import settings
from campaign_pipeline.model import records, schemas
from campaign_pipeline.model.transform import SplitStats
from campaign_pipeline.model.windows import PartitionWindow

ERROR, WARN = "ERROR", "WARN"
DEFAULT_REJECTED_RATIO_THRESHOLD = settings.DEFAULT_REJECTED_THRESHOLD
MAX_IDS_IN_METADATA = 50


@dataclass(frozen=True)
class CheckSpec:
    """A check's identity and contract: which table, its name, whether it blocks, what it asks."""

    table: str
    name: str
    blocking: bool
    description: str


@dataclass
class CheckOutcome:
    """The result of one check on one partition."""

    spec: CheckSpec
    passed: bool
    severity: str = ERROR
    description: str = ""
    metadata: dict = field(default_factory=dict)


def _spec(table: str, name: str, blocking: bool, description: str) -> CheckSpec:
    return CheckSpec(table, name, blocking, description)


UNIQUE_RECIPIENT = {
    t.name: _spec(t.name, "unique_campaign_recipient", True, "(campaign_id, recipient) is unique in the partition")
    for t in schemas.MESSAGE_TABLES
}
STATUS_VOCABULARY = {
    t.name: _spec(t.name, "status_in_vocabulary", False,
                  "Every status is in the channel's documented vocabulary; warns and names unknown values")
    for t in schemas.MESSAGE_TABLES
}
SENT_AT_IN_WINDOW = {
    t.name: _spec(t.name, "sent_at_in_partition", True,
                  "Every sent_at falls inside the partition's day in the partition timezone")
    for t in (schemas.CAMPAIGNS, *schemas.MESSAGE_TABLES)
}
RECONCILIATION = _spec(
    schemas.CAMPAIGNS.name, "reconciles_with_details", True,
    "Per campaign: detail rows = total_recipients; WhatsApp Read rows = read; delivered matches Delivered or "
    "Delivered+Read; pending and failed match where present (the campaign's rejected detail records may account "
    "for the difference). The summary is re-fetched once before a mismatch.",
)
SCHEMA_DRIFT = _spec(schemas.CAMPAIGNS.name, "schema_drift", False,
                     "Warns with the names of API fields the typed tables do not model")
REJECTED_RATIO = _spec(schemas.REJECTED_RECORDS.name, "rejected_ratio", True,
                       "Share of records rejected: warns above 0, fails above the threshold (default 1%)")
CAMPAIGNS_PLACED = _spec(schemas.CAMPAIGNS.name, "campaigns_placed", True,
                         "Every campaign the summary lists for the day could be typed and placed in it; a campaign "
                         "whose summary record was rejected fails the day (its details are landed and rejected)")
NO_UNEXPLAINED_SHRINK = _spec(
    schemas.CAMPAIGNS.name, "no_unexplained_shrink", True,
    "A re-load never publishes fewer campaigns or fewer messages than the day's published version "
    "(recipients are never removed from a sent campaign); allow it for one run with --allow-shrink",
)

ALL_CHECKS: list[CheckSpec] = [
    *UNIQUE_RECIPIENT.values(), *STATUS_VOCABULARY.values(), *SENT_AT_IN_WINDOW.values(),
    RECONCILIATION, SCHEMA_DRIFT, REJECTED_RATIO, CAMPAIGNS_PLACED, NO_UNEXPLAINED_SHRINK,
]  # fmt: skip


def check_unique_recipients(
    con: duckdb.DuckDBPyConnection, table: str, window: PartitionWindow, app_id: str
) -> CheckOutcome:
    """Fail if any (campaign_id, recipient) appears more than once in the app's day."""
    rows = con.execute(
        f'SELECT campaign_id, count(*) AS n FROM (SELECT campaign_id, recipient FROM "{table}" '
        "WHERE partition_date = $day AND app_id = $app) GROUP BY campaign_id, recipient HAVING count(*) > 1",
        {"day": window.day, "app": app_id},
    ).fetchall()
    campaigns = sorted({r[0] for r in rows})
    return CheckOutcome(
        UNIQUE_RECIPIENT[table], passed=not rows,
        description=f"{len(rows)} duplicated (campaign_id, recipient) keys" if rows else "all keys unique",
        metadata={"duplicate_keys": len(rows), "campaign_ids": campaigns[:MAX_IDS_IN_METADATA]},
    )


def check_status_vocabulary(
    con: duckdb.DuckDBPyConnection, table: str, window: PartitionWindow, app_id: str
) -> CheckOutcome:
    """Warn (never fail) when statuses outside the channel's vocabulary appear; names them."""
    vocabulary = settings.SMS_STATUSES if table == schemas.SMS_MESSAGES.name else settings.WHATSAPP_STATUSES
    rows = con.execute(
        f'SELECT status, count(*) FROM "{table}" WHERE partition_date = $day AND app_id = $app '
        "AND status IS NOT NULL AND NOT list_contains($vocabulary, status) GROUP BY status ORDER BY status",
        {"day": window.day, "app": app_id, "vocabulary": list(vocabulary)},
    ).fetchall()
    unknown = {status: count for status, count in rows}
    return CheckOutcome(
        STATUS_VOCABULARY[table], passed=not unknown, severity=WARN,
        description=f"unknown statuses: {', '.join(unknown)}" if unknown else "all statuses known",
        metadata={"unknown_statuses": unknown},
    )


def check_sent_at_in_window(
    con: duckdb.DuckDBPyConnection, table: str, window: PartitionWindow, app_id: str
) -> CheckOutcome:
    """Fail if any row's ``sent_at`` lies outside the partition's [start, end) in UTC."""
    outside, first, last = con.execute(
        "SELECT count(*) FILTER (WHERE sent_at < $start OR sent_at >= $end), min(sent_at), max(sent_at) "
        f'FROM "{table}" WHERE partition_date = $day AND app_id = $app',
        {"start": window.start_utc, "end": window.end_utc, "day": window.day, "app": app_id},
    ).fetchone()
    return CheckOutcome(
        SENT_AT_IN_WINDOW[table], passed=outside == 0,
        description=f"{outside} rows outside {window.start_utc.isoformat()}..{window.end_utc.isoformat()}"
        if outside else f"all rows inside the {window.tz_name} day",
        metadata={"rows_outside": outside, "window_start_utc": window.start_utc.isoformat(),
                  "window_end_utc": window.end_utc.isoformat(),
                  "min_sent_at": first.isoformat() if first else None,
                  "max_sent_at": last.isoformat() if last else None},
    )


# Per campaign: the summary's counts, the typed detail rows' counts, and the same counts with the
# campaign's rejected detail records added (their status read from the raw record), so a record
# rejected for one poison value is accounted for (the rejected ratio judges it) instead of failing
# the day's reconciliation.
_DETAIL_COUNTS_SQL = """
WITH detail AS (
    SELECT campaign_id, status, false AS rejected FROM sms_messages WHERE partition_date = $day AND app_id = $app
    UNION ALL
    SELECT campaign_id, status, false FROM whatsapp_messages WHERE partition_date = $day AND app_id = $app
    UNION ALL
    SELECT campaign_id, CASE lower(trim(try(json_extract_string(raw_record, '$.status'))))
               WHEN 'delivered' THEN 'Delivered' WHEN 'read' THEN 'Read' WHEN 'pending' THEN 'Pending'
               WHEN 'failed' THEN 'Failed' END, true
    FROM rejected_records
    WHERE partition_date = $day AND app_id = $app AND endpoint = 'detail' AND campaign_id IS NOT NULL
          AND reason <> 'id does not match historyID'  -- such a record belongs to another campaign
), counts AS (
    SELECT campaign_id,
           count(*) FILTER (WHERE NOT rejected) AS rows,
           count(*) FILTER (WHERE status = 'Delivered' AND NOT rejected) AS delivered_rows,
           count(*) FILTER (WHERE status = 'Read' AND NOT rejected) AS read_rows,
           count(*) FILTER (WHERE status = 'Pending' AND NOT rejected) AS pending_rows,
           count(*) FILTER (WHERE status = 'Failed' AND NOT rejected) AS failed_rows,
           count(*) AS all_rows,
           count(*) FILTER (WHERE status = 'Delivered') AS all_delivered_rows,
           count(*) FILTER (WHERE status = 'Read') AS all_read_rows,
           count(*) FILTER (WHERE status = 'Pending') AS all_pending_rows,
           count(*) FILTER (WHERE status = 'Failed') AS all_failed_rows
    FROM detail GROUP BY campaign_id
)
SELECT c.campaign_id, c.channel, c.total_recipients, c.delivered, c."read", c.pending, c.failed,
       coalesce(d.rows, 0), coalesce(d.delivered_rows, 0), coalesce(d.read_rows, 0),
       coalesce(d.pending_rows, 0), coalesce(d.failed_rows, 0),
       coalesce(d.all_rows, 0), coalesce(d.all_delivered_rows, 0), coalesce(d.all_read_rows, 0),
       coalesce(d.all_pending_rows, 0), coalesce(d.all_failed_rows, 0)
FROM campaigns c LEFT JOIN counts d USING (campaign_id)
WHERE c.partition_date = $day AND c.app_id = $app
ORDER BY c.campaign_id
"""
_DETAIL_KEYS = ("rows", "delivered_rows", "read_rows", "pending_rows", "failed_rows")


def _compare(summary: dict, detail: dict) -> tuple[list[str], str | None]:
    """Mismatching fields of one campaign, and which delivered convention held (WhatsApp)."""
    problems = []
    if summary["total_recipients"] is not None and summary["total_recipients"] != detail["rows"]:
        problems.append("total_recipients")
    convention = None
    if summary["channel"] == settings.CHANNEL_WHATSAPP:
        if summary["read"] is not None and summary["read"] != detail["read_rows"]:
            problems.append("read")
        if summary["delivered"] is not None:
            if summary["delivered"] == detail["delivered_rows"] + detail["read_rows"]:
                convention = "Delivered+Read"
            elif summary["delivered"] == detail["delivered_rows"]:
                convention = "Delivered"
            else:
                problems.append("delivered")
        for name in ("pending", "failed"):
            if summary[name] is not None and summary[name] != detail[f"{name}_rows"]:
                problems.append(name)
    elif summary["delivered"] is not None and summary["delivered"] != detail["delivered_rows"]:
        problems.append("delivered")
    return problems, convention


def check_reconciliation(
    con: duckdb.DuckDBPyConnection,
    window: PartitionWindow,
    app_id: str,
    refetch_summary: Callable[[], list] | None = None,
) -> CheckOutcome:
    """Compare each campaign's summary counts with its detail rows; re-fetch the summary once
    (statuses move) before calling a mismatch."""
    rows = con.execute(_DETAIL_COUNTS_SQL, {"day": window.day, "app": app_id}).fetchall()
    summaries, details, with_rejected = {}, {}, {}
    for r in rows:
        summaries[r[0]] = {"channel": r[1], "total_recipients": r[2], "delivered": r[3], "read": r[4],
                           "pending": r[5], "failed": r[6]}
        details[r[0]] = dict(zip(_DETAIL_KEYS, r[7:12], strict=True))
        with_rejected[r[0]] = dict(zip(_DETAIL_KEYS, r[12:17], strict=True))

    def compare(summary: dict, cid: str) -> tuple[list[str], str | None]:
        typed = _compare(summary, details[cid])
        return typed if not typed[0] or with_rejected[cid] == details[cid] else min(
            typed, _compare(summary, with_rejected[cid]), key=lambda result: len(result[0]))

    mismatches = {cid: compare(summaries[cid], cid) for cid in summaries}
    mismatched = {cid: p for cid, (p, _) in mismatches.items() if p}
    refetched = False
    if mismatched and refetch_summary is not None:
        refetched = True
        fresh = {}
        for record in refetch_summary():
            try:
                row = records.parse_campaign(record)
            except records.RecordRejected:
                continue
            fresh[row["campaign_id"]] = row
        for cid in list(mismatched):
            if cid in fresh:
                mismatches[cid] = compare(fresh[cid], cid)
                if not mismatches[cid][0]:
                    del mismatched[cid]
    conventions = [c for _, c in mismatches.values() if c]
    held = sorted(set(conventions))
    description = (
        f"{len(mismatched)} of {len(summaries)} campaigns do not reconcile"
        if mismatched else f"all {len(summaries)} campaigns reconcile"
    )
    if held:
        description += f"; WhatsApp delivered convention: {' / '.join(held)}"
    return CheckOutcome(
        RECONCILIATION, passed=not mismatched, description=description,
        metadata={
            "campaigns": len(summaries),
            "mismatching_campaign_ids": sorted(mismatched)[:MAX_IDS_IN_METADATA],
            "mismatching_fields": {cid: fields for cid, fields in sorted(mismatched.items())[:MAX_IDS_IN_METADATA]},
            "delivered_convention": held,
            "summary_refetched": refetched,
        },
    )


def check_schema_drift(stats: SplitStats) -> CheckOutcome:
    """Warn with the names of unknown API fields (kept in the raw landing, ignored by the tables)."""
    unknown = sorted(stats.unknown_fields)
    return CheckOutcome(
        SCHEMA_DRIFT, passed=not unknown, severity=WARN,
        description=f"unknown fields: {', '.join(unknown)}" if unknown else "no unknown fields",
        metadata={"unknown_fields": unknown},
    )


def check_rejected_ratio(
    con: duckdb.DuckDBPyConnection,
    window: PartitionWindow,
    app_id: str,
    threshold: float = DEFAULT_REJECTED_RATIO_THRESHOLD,
) -> CheckOutcome:
    """Warn when any record was rejected; fail when more than ``threshold`` of them were."""
    params = {"day": window.day, "app": app_id}
    rejected, loaded = con.execute(
        "SELECT (SELECT count(*) FROM rejected_records WHERE partition_date = $day AND app_id = $app), "
        "(SELECT count(*) FROM campaigns WHERE partition_date = $day AND app_id = $app) + "
        "(SELECT count(*) FROM sms_messages WHERE partition_date = $day AND app_id = $app) + "
        "(SELECT count(*) FROM whatsapp_messages WHERE partition_date = $day AND app_id = $app)",
        params,
    ).fetchone()
    total = rejected + loaded
    ratio = rejected / total if total else 0.0
    reasons = dict(con.execute(
        "SELECT reason, count(*) FROM rejected_records WHERE partition_date = $day AND app_id = $app "
        "GROUP BY reason ORDER BY reason",
        params,
    ).fetchall())
    failed = ratio > threshold
    return CheckOutcome(
        REJECTED_RATIO, passed=rejected == 0, severity=ERROR if failed else WARN,
        description=f"{rejected} of {total} records rejected ({ratio:.2%}; threshold {threshold:.2%})",
        metadata={"rejected": rejected, "records": total, "ratio": ratio, "threshold": threshold,
                  "reasons": reasons},
    )


def check_campaigns_placed(stats: SplitStats) -> CheckOutcome:
    """Fail when a campaign listed for the day could not be typed (its summary record was rejected)."""
    unplaced = dict(sorted(stats.unplaced_campaigns.items()))
    return CheckOutcome(
        CAMPAIGNS_PLACED, passed=not unplaced,
        description=(f"{len(unplaced)} campaign(s) could not be placed in the day: "
                     + ", ".join(f"{cid} ({reason})" for cid, reason in list(unplaced.items())[:5])
                     if unplaced else "every listed campaign was placed"),
        metadata={"unplaced_campaigns": dict(list(unplaced.items())[:MAX_IDS_IN_METADATA])},
    )


def published_counts(con: duckdb.DuckDBPyConnection, day, app_id: str) -> dict[str, int]:
    """Campaigns and messages of the (app, day) as the connection sees them."""
    params = {"day": day, "app": app_id}
    campaigns, messages = con.execute(
        "SELECT (SELECT count(*) FROM campaigns WHERE partition_date = $day AND app_id = $app), "
        "(SELECT count(*) FROM sms_messages WHERE partition_date = $day AND app_id = $app) + "
        "(SELECT count(*) FROM whatsapp_messages WHERE partition_date = $day AND app_id = $app)",
        params,
    ).fetchone()
    return {"campaigns": campaigns, "messages": messages}


def check_no_unexplained_shrink(previous: dict[str, int] | None, new: dict[str, int],
                                allow_shrink: bool = False) -> CheckOutcome:
    """Fail when the new version has fewer campaigns or messages than the published one, unless
    the run allows it (``--allow-shrink``)."""
    previous = previous or {"campaigns": 0, "messages": 0}
    shrunk = {name: (previous[name], new[name]) for name in ("campaigns", "messages") if new[name] < previous[name]}
    text = "; ".join(f"{name} {old} -> {now}" for name, (old, now) in shrunk.items())
    if not shrunk:
        description = "no fewer campaigns or messages than the published version"
    elif allow_shrink:
        description = f"shrink allowed by --allow-shrink: {text}"
    else:
        description = f"fewer than the published version: {text}; re-run with --allow-shrink if this is right"
    return CheckOutcome(
        NO_UNEXPLAINED_SHRINK, passed=not shrunk or allow_shrink, severity=ERROR,
        description=description,
        metadata={"published": previous, "new": new, "allow_shrink": allow_shrink},
    )


def evaluate_day(
    con: duckdb.DuckDBPyConnection,
    window: PartitionWindow,
    app_id: str,
    stats: SplitStats,
    refetch_summary: Callable[[], list] | None = None,
    rejected_threshold: float = DEFAULT_REJECTED_RATIO_THRESHOLD,
    previous: dict[str, int] | None = None,
    allow_shrink: bool = False,
) -> list[CheckOutcome]:
    """Every check of one app's partition, in :data:`ALL_CHECKS` order. ``previous`` holds the
    published version's counts (:func:`published_counts` before the day was replaced)."""
    outcomes = [check_unique_recipients(con, t.name, window, app_id) for t in schemas.MESSAGE_TABLES]
    outcomes += [check_status_vocabulary(con, t.name, window, app_id) for t in schemas.MESSAGE_TABLES]
    outcomes += [check_sent_at_in_window(con, t, window, app_id) for t in SENT_AT_IN_WINDOW]
    outcomes.append(check_reconciliation(con, window, app_id, refetch_summary))
    outcomes.append(check_schema_drift(stats))
    outcomes.append(check_rejected_ratio(con, window, app_id, rejected_threshold))
    outcomes.append(check_campaigns_placed(stats))
    outcomes.append(check_no_unexplained_shrink(previous, published_counts(con, window.day, app_id), allow_shrink))
    return outcomes
