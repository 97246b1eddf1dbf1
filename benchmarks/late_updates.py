"""How much a day's numbers move after it ends, measured through the pipeline on the simulator.

For a few days, the pipeline lands and splits the same day at clock = day end + 0, 1, 2 and 3
days (the simulator's statuses evolve with its clock) and compares each snapshot with the
3-day one. Writes benchmarks/LATE_UPDATES.md.

    .venv/bin/python benchmarks/late_updates.py
"""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

from campaign_pipeline import engine
from campaign_pipeline.cinnox.client import CinnoxClient
from campaign_pipeline.config import AppConfig
from campaign_pipeline.model.transform import DaySplitter
from campaign_pipeline.model.windows import PartitionWindow
from campaign_pipeline.simulator import SimulatorConfig, SimulatorServer
from campaign_pipeline.storage.lake import Lake

DAYS = [date(2024, 5, 1) + timedelta(days=i) for i in range(7)]
LAGS = (0, 1, 2, 3)
OUT = Path(__file__).with_name("LATE_UPDATES.md")


def snapshot(day: date, lag_days: int, work: Path) -> dict[tuple[str, str, str], str]:
    """(channel, campaign_id, recipient) -> status of ``day`` as seen ``lag_days`` after it ended."""
    window = PartitionWindow.for_day(day, "UTC")
    clock = window.end_utc + timedelta(days=lag_days, minutes=5)
    config = SimulatorConfig(seed=7, campaigns_per_day=20, recipients_per_campaign=300, now=clock)
    with SimulatorServer(config) as server, CinnoxClient(server.base_url, server.app_id, server.token,
                                                         rate_limit_per_min=None) as client:
        lake = Lake(str(work / f"lag{lag_days}"))
        app = AppConfig("default", server.app_id, server.base_url, server.token, sim_seed=7)
        splitter = DaySplitter(window, app.app_id)
        engine.land_day(client, lake, app, window, splitter, workers=2)
        tables = splitter.finish().tables
    statuses = {}
    for name, channel in (("sms_messages", "SMS"), ("whatsapp_messages", "WhatsApp")):
        table = tables[name]
        for cid, recipient, status in zip(table["campaign_id"].to_pylist(), table["recipient"].to_pylist(),
                                          table["status"].to_pylist(), strict=True):
            statuses[(channel, cid, recipient)] = status
    return statuses


def rates(statuses: dict) -> dict[str, float]:
    """Delivery rate per channel (the warehouse definition: in-flight excluded)."""
    result = {}
    for channel in ("SMS", "WhatsApp"):
        counts = Counter(s for (c, _, _), s in statuses.items() if c == channel)
        in_flight = counts["Pending"] + (counts["Submitted"] if channel == "SMS" else 0)
        delivered = counts["Delivered"] + (counts["Read"] if channel == "WhatsApp" else 0)
        settled = sum(counts.values()) - in_flight
        result[channel] = delivered / settled if settled else float("nan")
        result[f"{channel} in flight"] = in_flight / sum(counts.values())
        if channel == "WhatsApp":
            result["WhatsApp read"] = counts["Read"] / delivered if delivered else float("nan")
    return result


def main() -> None:
    """Measure and write the table."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lag in LAGS:
            changed = total = 0
            agg: dict[str, list[float]] = {}
            for day in DAYS:
                snap = snapshot(day, lag, Path(tmp) / day.isoformat())
                final = snapshot(day, 3, Path(tmp) / f"{day.isoformat()}-final") if lag != 3 else snap
                changed += sum(1 for k, v in snap.items() if final.get(k) != v)
                total += len(snap)
                for key, value in rates(snap).items():
                    agg.setdefault(key, []).append(value)
            mean = {k: sum(v) / len(v) for k, v in agg.items()}
            rows.append((lag, changed / total, mean))
            print(f"lag {lag}d: {changed / total:.1%} of rows differ from the 3-day state", flush=True)
    lines = [
        "# How much a day moves after it ends (simulator, seed 7, 7 days x 20 campaigns x ~300 recipients)",
        "",
        "Measured by `benchmarks/late_updates.py` through `land_day` + `split_day`: each day is loaded at",
        "day end + N days (+5 min) and compared with its state 3 days after the day ended.",
        "",
        ("| loaded after day end | rows whose status still changes | SMS delivery rate | SMS in flight |"
         " WhatsApp delivery rate | WhatsApp in flight | WhatsApp read rate |"),
        "|---|---|---|---|---|---|---|",
    ]
    for lag, share, mean in rows:
        lines.append(
            f"| {lag} d | {share:.1%} | {mean['SMS']:.1%} | {mean['SMS in flight']:.1%} | {mean['WhatsApp']:.1%} | "
            f"{mean['WhatsApp in flight']:.1%} | {mean['WhatsApp read']:.1%} |"
        )
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
