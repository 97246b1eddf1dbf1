"""Read-only reporting over the warehouse views: rate reports, formatting and the trend chart.

Pure functions over a DuckDB connection (or a warehouse path); no Dagster. The metric definitions
live once, in ``campaign_pipeline/sql/02_message_metrics.sql`` (per-message flags and the rate
macros); the queries here only select from the views and re-aggregate their counts over a date
range with those macros. Identifiers come from the constants below, values are bound parameters.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb

from campaign_pipeline import schemas, settings
from campaign_pipeline.warehouse import Warehouse

DAILY_COLUMNS = (
    "partition_date", "channel", "messages", "delivered", "read", "failed", "undelivered", "in_flight",
    "delivery_rate", "failure_rate", "read_rate",
)
RATE_NAMES = ("delivery_rate", "read_rate", "failure_rate")
CHANNEL_TABLES = {settings.CHANNEL_SMS: schemas.SMS_MESSAGES.name,
                  settings.CHANNEL_WHATSAPP: schemas.WHATSAPP_MESSAGES.name}
FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class _Grouping:
    """A rate view re-aggregated over a date range: its key columns and its count columns."""

    view: str
    keys: tuple[str, ...]
    counts: tuple[str, ...]


_GROUPINGS = {
    "country": _Grouping("delivery_rates_by_country", ("recipient_country",),
                         ("messages", "delivered", "failed", "undelivered", "in_flight")),
    "sender": _Grouping("delivery_rates_by_sender", ("channel", "sender_phone", "sender_eid", "sender_channel_name"),
                        ("messages", "delivered", "read", "failed", "undelivered", "in_flight")),
    "template": _Grouping("delivery_rates_by_template", ("subject", "sender_source_name"),
                          ("messages", "delivered", "read", "failed", "in_flight")),
}
CAMPAIGN_COLUMNS = (
    "partition_date", "campaign_id", "channel", "campaign_name", "total_recipients", "messages",
    "summary_delivered", "delivered", "read", "failed", "undelivered", "in_flight",
    "delivery_rate", "failure_rate", "read_rate",
)
REPORT_BY = ("channel", "country", "sender", "template", "campaign")
"""Values of ``report --by``: ``channel`` is one row per day and channel."""


def rate_report(con: duckdb.DuckDBPyConnection, by: str, start: date, end: date) -> tuple[list[str], list[tuple]]:
    """Counts and rates for ``start..end`` inclusive, grouped by ``by`` (one of :data:`REPORT_BY`).

    ``channel``: one row per day and channel; ``campaign``: one row per campaign sent in the range;
    ``country``/``sender``/``template``: one row per key, counts summed over the range and rates
    recomputed from the sums (never averaged).
    """
    if by == "channel":
        return _select(con, "delivery_rates_daily", DAILY_COLUMNS, start, end, ("partition_date", "channel"))
    if by == "campaign":
        return _select(con, "campaign_delivery", CAMPAIGN_COLUMNS, start, end, ("sent_at", "campaign_id"))
    if by not in _GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}; use one of {', '.join(REPORT_BY)}")
    grouping = _GROUPINGS[by]
    keys = ", ".join(grouping.keys)
    sums = ", ".join(f'sum("{c}")::BIGINT AS "{c}"' for c in grouping.counts)
    undelivered = 'sum("undelivered")' if "undelivered" in grouping.counts else "0"
    rates = ['delivery_rate(sum("delivered"), sum("messages"), sum("in_flight")) AS delivery_rate',
             f'failure_rate(sum("failed"), {undelivered}, sum("messages"), sum("in_flight")) AS failure_rate']
    if "read" in grouping.counts:
        rates.append('read_rate(sum("read"), sum("delivered")) AS read_rate')
    cursor = con.execute(
        f"SELECT {keys}, {sums}, {', '.join(rates)} FROM {grouping.view} "
        f"WHERE partition_date BETWEEN ? AND ? GROUP BY {keys} ORDER BY {keys} NULLS LAST",
        [start, end],
    )
    return [d[0] for d in cursor.description], cursor.fetchall()


def _select(con, view: str, columns: tuple[str, ...], start: date, end: date,
            order: tuple[str, ...]) -> tuple[list[str], list[tuple]]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    rows = con.execute(
        f"SELECT {quoted} FROM {view} "
        f"WHERE partition_date BETWEEN ? AND ? ORDER BY {', '.join(order)}",
        [start, end],
    ).fetchall()
    return list(columns), rows


def daily_delivery_report(warehouse_path: str | Path, start: date, end: date) -> tuple[list[str], list[tuple]]:
    """Counts and rates per day and channel between ``start`` and ``end`` inclusive (read-only)."""
    with Warehouse(warehouse_path).reader() as con:
        return rate_report(con, "channel", start, end)


def partition_rates(
    con: duckdb.DuckDBPyConnection, day: date, app_id: str | None = None
) -> dict[str, dict[str, float | None]]:
    """The day's rates per message table, e.g. ``{"sms_messages": {"delivery_rate": 0.93, ...}}``,
    for one app or (``app_id=None``) all of them.

    Every table is present; a rate is None where it is undefined (no settled messages that day, or
    ``read_rate`` for SMS).
    """
    result: dict[str, dict[str, float | None]] = {t: dict.fromkeys(RATE_NAMES) for t in CHANNEL_TABLES.values()}
    rows = con.execute(
        """
        SELECT channel,
               delivery_rate(sum(is_delivered), count(*), sum(is_in_flight)) AS delivery_rate,
               failure_rate(sum(is_failed), sum(is_undelivered), count(*), sum(is_in_flight)) AS failure_rate,
               read_rate(sum(is_read), sum(is_delivered)) AS read_rate
        FROM message_metrics
        WHERE partition_date = $day AND ($app IS NULL OR app_id = $app)
        GROUP BY channel
        """,
        {"day": day, "app": app_id},
    ).fetchall()
    for channel, delivery, failure, read in rows:
        result[CHANNEL_TABLES[channel]] = {"delivery_rate": delivery, "failure_rate": failure, "read_rate": read}
    return result


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_rate"):
        return f"{value * 100:.1f}%"
    return str(value)


def format_table(header: list[str], rows: list[tuple]) -> str:
    """Aligned plain-text table; rates as percentages, NULL as ``-``; numeric columns right-aligned."""
    cells = [[_cell(h, v) for h, v in zip(header, row, strict=True)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [bool(rows) and all(isinstance(row[i], int | float) or row[i] is None for row in rows)
               and any(row[i] is not None for row in rows) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(header, widths, numeric, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(row, widths, numeric, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


def format_csv(header: list[str], rows: list[tuple]) -> str:
    """CSV with a header row; rates as fractions (0..1), NULL as an empty field, dates ISO."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_plain(v) for v in row] for row in rows)
    return buffer.getvalue()


def format_json(header: list[str], rows: list[tuple]) -> str:
    """A JSON array of objects; rates as fractions (0..1), NULL as null, dates ISO."""
    return json.dumps([{h: _plain(v) for h, v in zip(header, row, strict=True)} for row in rows], indent=2)


def format_report(header: list[str], rows: list[tuple], fmt: str) -> str:
    """Render a report as ``table``, ``csv`` or ``json``."""
    if fmt == "table":
        return format_table(header, rows)
    if fmt == "csv":
        return format_csv(header, rows).rstrip("\n")
    if fmt == "json":
        return format_json(header, rows)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def delivery_rate_series(con: duckdb.DuckDBPyConnection, start: date, end: date) -> dict[str, list[tuple[date, float | None]]]:
    """``{channel: [(day, delivery_rate), ...]}`` for the days of ``start..end`` that have messages."""
    series: dict[str, list[tuple[date, float | None]]] = {}
    for day, channel, rate in con.execute(
        "SELECT partition_date, channel, delivery_rate FROM delivery_rates_daily "
        "WHERE partition_date BETWEEN ? AND ? ORDER BY channel, partition_date",
        [start, end],
    ).fetchall():
        series.setdefault(channel, []).append((day, rate))
    return series


def plot_delivery_trend(ax, series: dict[str, list[tuple[date, float | None]]]) -> None:
    """Draw the delivery-rate trend (percent) per channel onto a matplotlib ``Axes``."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DayLocator
    from matplotlib.ticker import PercentFormatter

    percents = []
    for channel, points in sorted(series.items()):
        days = [d for d, _ in points]
        rates = [float("nan") if r is None else r * 100 for _, r in points]
        percents += [r for r in rates if not math.isnan(r)]
        ax.plot(days, rates, marker="o", linewidth=2, label=channel)
    all_days = [d for points in series.values() for d, _ in points]
    span = (max(all_days) - min(all_days)).days if all_days else 0
    # Whole days only: never hour ticks on a short range.
    locator = DayLocator(interval=span // 10 + 1) if span <= 60 else AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(PercentFormatter())
    # Zoom onto the data (rates usually sit in the 80s and 90s) but keep whole tens on the axis.
    lowest = min(percents, default=0.0)
    ax.set_ylim(max(0.0, (lowest - 5) // 10 * 10), 102)
    ax.set_ylabel("delivery rate (in-flight excluded)")
    ax.set_title("Delivery rate per channel and day")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "no messages in range", ha="center", va="center", transform=ax.transAxes)


def write_trend_chart(series: dict[str, list[tuple[date, float | None]]], path: str | Path) -> Path:
    """Render :func:`plot_delivery_trend` to a PNG at ``path`` with the Agg backend (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    plot_delivery_trend(figure.add_subplot(), series)
    path = Path(path)
    figure.savefig(path, format="png")
    return path
