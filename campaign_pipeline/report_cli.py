"""``campaign-pipeline report``: delivery counts and rates from the warehouse, read-only.

Usage::

    campaign-pipeline report [--start YYYY-MM-DD] [--end YYYY-MM-DD]
                             [--by channel|country|sender|template|campaign]
                             [--format table|csv|json] [--chart PATH.png]

``--start``/``--end`` are inclusive partition days; without them the report covers the latest 7
loaded days. It reads the analysts' database (:mod:`campaign_pipeline.storage.analytics`: views over the
published lake, never locked by a writer), so it works while a backfill runs, needs no API
credentials, and finds the data with ``--data-dir``, ``CAMPAIGN_DATA_DIR``, the last run's data dir
or the demo's (said on stderr). Exit codes, as for every command (:mod:`campaign_pipeline.cli`):
0 success, 1 no data yet or the database is out of date, 2 bad input or configuration, 3 the data
is unreadable (not DuckDB, corrupt), 4 storage unreadable.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb

from campaign_pipeline import reporting

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_DAYS = 7
EXIT_CODES_EPILOG = ("Exit codes: 0 success, 1 no data yet or the database is out of date, 2 bad input or "
                     "configuration, 3 the data is unreadable (not DuckDB, corrupt), 4 storage unreadable.")


def register(subparsers) -> None:
    """Add the ``report`` subcommand to the project CLI's argparse subparsers."""
    report = subparsers.add_parser(
        "report",
        help="delivery counts and rates from the warehouse (read-only)",
        description="Delivery counts and rates from the analysts' database (works while a backfill runs; "
                    "no API credentials needed).",
        epilog=EXIT_CODES_EPILOG,
    )
    report.add_argument("--start", metavar="YYYY-MM-DD", help="first partition day (default: 6 days before --end)")
    report.add_argument("--end", metavar="YYYY-MM-DD",
                        help="last partition day, inclusive (default: the latest loaded day)")
    report.add_argument("--by", choices=reporting.REPORT_BY, default="channel",
                        help="grouping; channel = one row per day and channel (default)")
    report.add_argument("--format", choices=reporting.FORMATS, default="table", dest="output_format",
                        help="table (aligned, rates as percentages), csv or json (rates as fractions)")
    report.add_argument("--chart", metavar="PATH.png", help="also write the daily delivery-rate trend per channel")
    report.add_argument("--data-dir", metavar="DIR",
                        help="the data dir to read (default: CAMPAIGN_DATA_DIR, else the last run's, else the demo's)")
    report.set_defaults(func=cmd_report)


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date; use YYYY-MM-DD") from None


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report for the range; optionally write the trend chart. Returns the exit code."""
    from campaign_pipeline.cli import exit_code_for
    from campaign_pipeline.errors import ConfigError, WarehouseError, WarehouseUnusableError

    try:
        start, end = _day(args.start, "--start"), _day(args.end, "--end")
    except ValueError as error:
        return _error(str(error), EXIT_BAD_INPUT)
    if start is not None and end is not None and start > end:
        return _error(f"--start {start} is after --end {end}; swap them", EXIT_BAD_INPUT)
    chart = Path(args.chart) if args.chart else None
    if chart is not None:
        if chart.suffix.lower() != ".png":
            return _error(f"--chart {args.chart!r} must be a .png path", EXIT_BAD_INPUT)
        if not chart.parent.is_dir():
            return _error(f"--chart {args.chart!r}: directory {str(chart.parent)!r} does not exist", EXIT_BAD_INPUT)
        try:
            reporting.require_charts()
        except ConfigError as error:
            return _error(str(error), EXIT_BAD_INPUT)
    from campaign_pipeline.storage import analytics

    try:
        con = analytics.connect(args.data_dir, why="--data-dir")
    except ConfigError as error:
        return _error(str(error), EXIT_BAD_INPUT)
    except WarehouseError as error:
        return _error(str(error), exit_code_for(error))
    try:
        loaded = reporting.loaded_range(con)
        tz = reporting.partition_tz(con)
        if end is None:
            end = (loaded[1] if loaded else None) or start or date.today()
            if start is not None and start > end:
                end = start
        if start is None:
            start = end - timedelta(days=DEFAULT_DAYS - 1)
        header, rows = reporting.rate_report(con, args.by, start, end)
        series = reporting.delivery_rate_series(con, start, end) if chart is not None else None
    except (duckdb.CatalogException, duckdb.BinderException) as error:
        return _error(f"the analysts' database is out of date ({str(error).splitlines()[0]}); "
                      "run any backfill to rebuild it", EXIT_FAILED)
    except duckdb.Error as error:  # a lake file that cannot be read, met while querying
        unusable = WarehouseUnusableError(f"DuckDB cannot read the data: {' '.join(str(error).split())}")
        return _error(str(unusable), exit_code_for(unusable))
    finally:
        con.close()

    print(reporting.report_note(args.by, start, end, loaded, tz), file=sys.stderr)
    print(reporting.format_report(header, rows, args.output_format))
    if not rows:
        print(f"no messages loaded between {start} and {end}", file=sys.stderr)
    if chart is not None:
        reporting.write_trend_chart(series, chart, tz=tz)
        print(f"chart: {chart}", file=sys.stderr)
    return EXIT_OK
