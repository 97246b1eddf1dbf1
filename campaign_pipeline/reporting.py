"""Read-only reporting over the warehouse views (used by ``demo`` and ``report``)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from campaign_pipeline.warehouse import Warehouse

DAILY_COLUMNS = ("partition_date", "channel", "messages", "delivered", "failed", "in_flight", "delivery_rate")


def daily_delivery_report(warehouse_path: str | Path, start: date, end: date) -> tuple[list[str], list[tuple]]:
    """Messages and delivery rate per day and channel between ``start`` and ``end`` inclusive."""
    columns = ", ".join(DAILY_COLUMNS)
    with Warehouse(warehouse_path).reader() as con:
        rows = con.execute(
            f"SELECT {columns} FROM delivery_rates_daily "
            "WHERE partition_date BETWEEN ? AND ? ORDER BY partition_date, channel",
            [start, end],
        ).fetchall()
    return list(DAILY_COLUMNS), rows


def format_table(header: list[str], rows: list[tuple]) -> str:
    """Aligned plain-text table; rates as percentages, NULL as ``-``."""

    def cell(name: str, value) -> str:
        if value is None:
            return "-"
        if name.endswith("_rate"):
            return f"{value * 100:.1f}%"
        return str(value)

    cells = [[cell(h, v) for h, v in zip(header, row, strict=True)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [all(r[i].replace(".", "").replace("%", "").replace("-", "").isdigit() for r in cells) and cells
               for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) if n else h.ljust(w) for h, w, n in zip(header, widths, numeric, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(row, widths, numeric, strict=True)))
    return "\n".join(lines)
