"""Read-only reporting over the warehouse views: rate reports, formatting and the trend chart.

Pure functions over a DuckDB connection (the warehouse, or the analysts' database of
:mod:`campaign_pipeline.storage.analytics`, which has the same view names); no Dagster. The metric
definitions live once, in ``campaign_pipeline/storage/sql/02_message_metrics.sql`` (per-message flags and
the rate macros); the queries here only select from the views and re-aggregate their counts over a
date range with those macros. Identifiers come from the constants below, values are bound parameters.

The chart functions need matplotlib, which is the optional ``charts`` extra: it is imported inside
them only, and :func:`require_charts` says in one line how to install it when it is missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import duckdb

from campaign_pipeline import settings
from campaign_pipeline.errors import ConfigError
from campaign_pipeline.model import schemas
from campaign_pipeline.storage.warehouse import Warehouse

if TYPE_CHECKING:
    import pandas as pd

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

GROUPING_NOTES = {
    "country": "SMS only (WhatsApp messages carry no recipient country)",
    "template": "WhatsApp only (SMS campaigns have no template)",
}
"""The ``report --by`` groupings that cover one channel only, and why (the views'
``WHERE channel = ...``: ``delivery_rates_by_country`` and ``delivery_rates_by_template``).
``channel``, ``sender`` and ``campaign`` cover both channels."""

CHARTS_MISSING = "the chart needs matplotlib, which is not installed: run pip install -e '.[charts]'"
_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT"}


def loaded_range(con: duckdb.DuckDBPyConnection) -> tuple[date, date] | None:
    """The first and last partition day that hold messages, or None when nothing is loaded."""
    first, last = con.execute("SELECT min(partition_date), max(partition_date) FROM delivery_rates_daily").fetchone()
    return None if last is None else (first, last)


def partition_tz(con: duckdb.DuckDBPyConnection) -> str | None:
    """The partition time zone recorded in the data dir of ``con``'s database file
    (``<data_dir>/.campaign_partition_tz``, written by the first run), or None if unknown."""
    from campaign_pipeline.config import TZ_MARKER

    row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    if not row or not row[0]:
        return None
    try:
        return (Path(row[0]).parent / TZ_MARKER).read_text().strip() or None
    except OSError:
        return None


def report_note(by: str, start: date, end: date, loaded: tuple[date, date] | None = None,
                tz: str | None = None) -> str:
    """One line for stderr saying what a report covers: the partition days used, which days are
    loaded (when known), and whether the grouping covers one channel only (:data:`GROUPING_NOTES`).

    e.g. ``report: partition days 2024-05-13..2024-05-19 (UTC), loaded 2024-05-01..2024-05-19;
    --by country: SMS only (WhatsApp messages carry no recipient country)``
    """
    text = f"report: partition days {start}..{end}"
    if tz:
        text += f" ({tz})"
    if loaded is None:
        text += ", nothing loaded yet"
    else:
        text += f", loaded {loaded[0]}..{loaded[1]}"
        if end < loaded[0] or start > loaded[1]:
            text += " (the range holds no loaded day)"
    if by in GROUPING_NOTES:
        text += f"; --by {by}: {GROUPING_NOTES[by]}"
    return text


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> pd.DataFrame:
    """Run a query and return a pandas DataFrame whose integer columns stay integers.

    DuckDB's ``sum()`` of a BIGINT is a HUGEINT, which pandas receives as float (``263.000000``),
    and an integer column with NULLs would become float too: every integer-typed result column
    becomes pandas' nullable ``Int64`` instead (NULL shown as ``<NA>``). DATE columns hold
    ``datetime.date`` values (shown ``2024-05-19``, not as a midnight timestamp).
    """
    cursor = con.execute(sql, params or [])
    types = {d[0]: str(d[1]) for d in cursor.description}
    result = cursor.df()
    for name, type_name in types.items():
        if type_name in _INTEGER_TYPES and result[name].dtype.kind != "i":
            result[name] = result[name].astype("Int64")
        elif type_name == "DATE" and result[name].dtype.kind == "M":
            result[name] = result[name].dt.date  # a day, not a midnight timestamp
    return result


def rate_report(con: duckdb.DuckDBPyConnection, by: str, start: date, end: date) -> tuple[list[str], list[tuple]]:
    """Counts and rates for ``start..end`` inclusive, grouped by ``by`` (one of :data:`REPORT_BY`).

    ``channel``: one row per day and channel; ``campaign``: one row per campaign sent in the range;
    ``country``/``sender``/``template``: one row per key, counts summed over the range and rates
    recomputed from the sums (never averaged). ``country`` is SMS only and ``template`` WhatsApp
    only (:data:`GROUPING_NOTES`).
    """
    cursor = con.execute(*_report_query(by, start, end))
    return [d[0] for d in cursor.description], cursor.fetchall()


def report_frame(con: duckdb.DuckDBPyConnection, by: str, start: date, end: date) -> pd.DataFrame:
    """:func:`rate_report` as a pandas DataFrame (counts as integers, rates as fractions)."""
    return frame(con, *_report_query(by, start, end))


def _report_query(by: str, start: date, end: date) -> tuple[str, list]:
    if by == "channel":
        return _select("delivery_rates_daily", DAILY_COLUMNS, start, end, ("partition_date", "channel"))
    if by == "campaign":
        return _select("campaign_delivery", CAMPAIGN_COLUMNS, start, end, ("sent_at", "campaign_id"))
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
    sql = (f"SELECT {keys}, {sums}, {', '.join(rates)} FROM {grouping.view} "
           f"WHERE partition_date BETWEEN ? AND ? GROUP BY {keys} ORDER BY {keys} NULLS LAST")
    return sql, [start, end]


def _select(view: str, columns: tuple[str, ...], start: date, end: date, order: tuple[str, ...]) -> tuple[str, list]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    sql = f"SELECT {quoted} FROM {view} WHERE partition_date BETWEEN ? AND ? ORDER BY {', '.join(order)}"
    return sql, [start, end]


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


class TrendPoint(NamedTuple):
    """One day of one channel in :func:`delivery_rate_series`."""

    day: date
    delivery_rate: float | None
    messages: int


def delivery_rate_series(con: duckdb.DuckDBPyConnection, start: date, end: date) -> dict[str, list[TrendPoint]]:
    """``{channel: [TrendPoint(day, delivery_rate, messages), ...]}`` for the days of ``start..end``
    that have messages."""
    series: dict[str, list[TrendPoint]] = {}
    for day, channel, rate, messages in con.execute(
        "SELECT partition_date, channel, delivery_rate, messages FROM delivery_rates_daily "
        "WHERE partition_date BETWEEN ? AND ? ORDER BY channel, partition_date",
        [start, end],
    ).fetchall():
        series.setdefault(channel, []).append(TrendPoint(day, rate, int(messages)))
    return series


def require_charts() -> None:
    """Raise :class:`ConfigError` (one line: how to install the ``charts`` extra) without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(CHARTS_MISSING) from None


def day_axis_label(tz: str | None) -> str:
    """The trend chart's x-axis label: partition days are calendar days in the partition time zone."""
    return f"partition day ({tz})" if tz else "partition day (UTC, or CAMPAIGN_PARTITION_TZ)"


RATE_AXIS_LABEL = "delivery rate (lines; in-flight excluded)"
VOLUME_AXIS_LABEL = "messages per day (bars)"


def plot_delivery_trend(ax, series: dict[str, list[TrendPoint]], tz: str | None = None) -> None:
    """Draw the delivery-rate trend (percent, lines) per channel onto a matplotlib ``Axes``, with the
    day's message volume per channel as bars on a secondary y axis (``ax.twinx()``, on the right).

    The x axis shows ISO days (``2024-05-19``), labelled as partition days in ``tz`` (see
    :func:`partition_tz`); the left axis is the delivery rate, the right one the messages per day.
    """
    require_charts()
    from matplotlib.dates import AutoDateLocator, DateFormatter, DayLocator
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    channels = sorted(series)
    volume = ax.twinx()
    # The rate lines are drawn above the volume bars: the main axes on top, with a see-through patch.
    ax.set_zorder(volume.get_zorder() + 1)
    ax.patch.set_visible(False)
    colors = {channel: f"C{i}" for i, channel in enumerate(channels)}
    width = 0.8 / max(len(channels), 1)
    percents: list[float] = []
    handles = []
    for i, channel in enumerate(channels):
        points = series[channel]
        days = [datetime.combine(p.day, datetime.min.time()) for p in points]
        rates = [float("nan") if p.delivery_rate is None else p.delivery_rate * 100 for p in points]
        percents += [r for r in rates if not math.isnan(r)]
        (line,) = ax.plot(days, rates, marker="o" if len(points) <= 60 else None, linewidth=2,
                          color=colors[channel], label=f"{channel} delivery rate")
        # The channels' bars side by side within the day.
        offset = timedelta(days=(i - (len(channels) - 1) / 2) * width)
        bars = volume.bar([d + offset for d in days], [p.messages for p in points], width=width,
                          color=colors[channel], alpha=0.25, label=f"{channel} messages")
        handles += [line, bars]
    all_days = [p.day for points in series.values() for p in points]
    span = (max(all_days) - min(all_days)).days if all_days else 0
    # Whole days only: never hour ticks on a short range; ISO dates, slanted so they never collide.
    locator = DayLocator(interval=span // 10 + 1) if span <= 60 else AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    ax.tick_params(axis="x", labelrotation=30, labelrotation_mode="xtick")
    if all_days:
        half = timedelta(days=0.6)
        ax.set_xlim(datetime.combine(min(all_days), datetime.min.time()) - half,
                    datetime.combine(max(all_days), datetime.min.time()) + half)
    ax.set_xlabel(day_axis_label(tz))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    # Zoom onto the data (rates usually sit in the 80s and 90s) but keep whole tens on the axis.
    lowest = min(percents, default=0.0)
    ax.set_ylim(max(0.0, (lowest - 5) // 10 * 10), 102)
    ax.set_ylabel(RATE_AXIS_LABEL)
    # The bars fill the lower third at most, under the lines.
    peak = max((p.messages for points in series.values() for p in points), default=0)
    volume.set_ylim(0, max(peak, 1) * 3)
    volume.yaxis.set_major_locator(MaxNLocator(integer=True))
    volume.set_ylabel(VOLUME_AXIS_LABEL)
    ax.set_title("Delivery rate and volume per channel and day")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=max(len(handles), 1),
                  frameon=False)
    else:
        ax.set_xticks([])
        volume.set_yticks([])
        ax.text(0.5, 0.5, "no messages in range", ha="center", va="center", transform=ax.transAxes)


def write_trend_chart(series: dict[str, list[TrendPoint]], path: str | Path, tz: str | None = None) -> Path:
    """Render :func:`plot_delivery_trend` to a PNG at ``path`` with the Agg backend (no display needed).

    Raises :class:`ConfigError` (one line) when matplotlib (the ``charts`` extra) is not installed.
    """
    require_charts()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    plot_delivery_trend(figure.add_subplot(), series, tz)
    path = Path(path)
    figure.savefig(path, format="png")
    return path
