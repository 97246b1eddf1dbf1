"""The CPU that b's required stages cost on their own, to tell how far target 2 can go on this machine.

Target 2 asks b (``campaign-pipeline backfill``) to finish the largest workload no later than a, the
bare fetch. b is CPU-bound there (both cores busy nearly all the run), so its wall time cannot fall
below (b's CPU + the simulator's CPU) / cores. This script measures, one stage at a time, the CPU of
the stages b cannot skip, each with the pipeline's own code and none of the glue between them:

* ``fetch_decode``: every in-window campaign's detail pages through :class:`CinnoxClient` with
  :func:`columnar.decode_detail_body` (Arrow's JSON reader), in ``--workers`` threads, as b fetches
  them; no landing, typing or staging;
* ``parquet_write``: :meth:`Lake.write_parquet` of the week's message tables (read from the Parquet
  files a b run wrote to ``--lake``, untimed) into a scratch lake;
* ``duckdb_load``: :meth:`Warehouse.replace_partition` of the same tables, day by day, into a fresh
  warehouse, then closing it (its checkpoint);
* ``imports``: a fresh interpreter importing the CLI and the pipeline's modules (the start-up b
  pays before its first request).

Raw landing, typing, de-duplication, staging and the checks are left out, so the sum is below what
b, as built, spends: what its stages would cost with perfect overlap and free glue. Prints one JSON
object: per stage ``cpu_s`` and ``wall_s``, ``rows`` (fetched), ``loaded_rows`` and ``workers``.

    python benchmarks/stage_floor.py --base-url http://127.0.0.1:8765 --app-id sim-app --token sim-token \\
        --start 2024-05-13 --end 2024-05-19 --lake benchmarks/.work/size-10x/b-rep2/lake
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Self

import pyarrow.parquet as pq

from campaign_pipeline import columnar, schemas
from campaign_pipeline.client import CinnoxClient
from campaign_pipeline.lake import Lake
from campaign_pipeline.pipeline import campaigns_in_window
from campaign_pipeline.warehouse import Warehouse
from campaign_pipeline.windows import PartitionWindow

APP_ID = "sim-app"


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class _Timer:
    """CPU (this process, all threads) and wall time of a ``with`` block."""

    def __enter__(self) -> Self:
        self.cpu_s, self.wall_s = _cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cpu_s, self.wall_s = _cpu_s() - self.cpu_s, time.perf_counter() - self.wall_s

    def as_dict(self) -> dict[str, float]:
        """``{"cpu_s", "wall_s"}`` rounded to 10 ms."""
        return {"cpu_s": round(self.cpu_s, 2), "wall_s": round(self.wall_s, 2)}


def fetch_decode(client: CinnoxClient, days: list[date], workers: int) -> tuple[int, _Timer]:
    """Rows fetched and the time of fetching and Arrow-decoding every in-window campaign's details.
    The summary listings are fetched first, untimed."""
    campaign_ids: list[str] = []
    for day in days:
        window = PartitionWindow.for_day(day)
        summary = [record for page in client.iter_summary_pages(window.start_utc, window.end_utc)
                   for record in page.records]
        campaign_ids += campaigns_in_window(summary, window)

    def one_campaign(history_id: str) -> int:
        return sum(page.row_count for page in client.iter_detail_pages(history_id, decode=columnar.decode_detail_body))

    with _Timer() as timer, ThreadPoolExecutor(workers) as pool:
        rows = sum(pool.map(one_campaign, campaign_ids))
    return rows, timer


def main(argv: list[str] | None = None) -> int:
    """Measure the stages over the day range given on the command line; print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first UTC day")
    parser.add_argument("--end", type=date.fromisoformat, required=True, help="last UTC day (inclusive)")
    parser.add_argument("--lake", type=Path, required=True, help="the lake of a finished b run over those days")
    parser.add_argument("--workers", type=int, default=2, help="fetch threads (b's default: one per core)")
    args = parser.parse_args(argv)
    days = [args.start + timedelta(days=i) for i in range((args.end - args.start).days + 1)]

    message_tables = {}
    source = Lake(str(args.lake))
    for day in days:
        for spec in schemas.MESSAGE_TABLES:
            path = source.parquet_path(spec.name, day)
            if not Path(path).exists():
                parser.error(f"--lake {args.lake} has no {spec.name} for {day}: point it at a finished b run")
            message_tables[(day, spec.name)] = pq.read_table(path)

    stages: dict[str, dict[str, float]] = {}
    with CinnoxClient(args.base_url, args.app_id, args.token, rate_limit_per_min=None) as client:
        rows, timer = fetch_decode(client, days, args.workers)
    stages["fetch_decode"] = timer.as_dict()

    with tempfile.TemporaryDirectory(prefix="stage-floor-") as scratch:
        lake = Lake(str(Path(scratch) / "lake"))
        with _Timer() as timer:
            for (day, name), table in message_tables.items():
                lake.write_parquet(name, day, table)
        stages["parquet_write"] = timer.as_dict()

        warehouse = Warehouse(Path(scratch) / "warehouse.duckdb")
        with _Timer() as timer, warehouse.writer_session() as session:
            for day in days:
                tables = {spec.name: message_tables[(day, spec.name)] for spec in schemas.MESSAGE_TABLES}
                warehouse.replace_partition(day, tables, APP_ID, session=session)
        stages["duckdb_load"] = timer.as_dict()

    imports = "import campaign_pipeline.cli, campaign_pipeline.runner, campaign_pipeline.pipeline"
    children_before = _cpu_s(resource.RUSAGE_CHILDREN)
    with _Timer() as timer:
        subprocess.run([sys.executable, "-c", imports], check=True)
    stages["imports"] = {"cpu_s": round(_cpu_s(resource.RUSAGE_CHILDREN) - children_before, 2), "wall_s": round(timer.wall_s, 2)}

    print(json.dumps({"rows": rows, "loaded_rows": sum(t.num_rows for t in message_tables.values()),
                      "workers": args.workers, "stages": stages}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
