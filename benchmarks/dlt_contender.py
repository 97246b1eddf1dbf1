"""Contender (c): a dlt ``rest_api`` pipeline from the CINNOX endpoints into DuckDB.

Two resources, configured declaratively with dlt's defaults everywhere else:

* ``campaigns_summary``: ``GET sent-campaigns-summary`` over the whole range (``startAt`` = first
  day 00:00:00.000Z, ``endAt`` = last day 23:59:59.999Z, since ``endAt`` may be inclusive);
* ``campaign_details``: ``GET sent-campaigns-detail``, a dependent resource whose ``historyID``
  query parameter is resolved from each summary row's ``id``.

Both use bearer auth, ``data_selector: "result"`` and the offset paginator with ``limit: 500``.
The API returns no total, so ``total_path`` is ``None`` and dlt's default stop rule applies
(stop after an empty page). ``--parallelized`` sets ``parallelized: True`` on both resources (an
optional variant; ``run.py`` does not run it). The only runtime setting changed is dlt's telemetry
(off: no calls to the internet from a benchmark).

Prints one JSON object on stdout: ``load_packages`` and ``pipeline`` (row counts are read by
``run.py`` from the DuckDB file afterwards, outside the timed run).

    python benchmarks/dlt_contender.py --base-url http://127.0.0.1:8765 --app-id sim-app \\
        --token sim-token --start 2024-05-13 --end 2024-05-19 --work-dir /tmp/dlt [--parallelized]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

PIPELINE_NAME = "cinnox_bench"
DATASET_NAME = "cinnox"
DETAIL_TABLE = "campaign_details"
SUMMARY_TABLE = "campaigns_summary"
DATABASE_FILENAME = "dlt.duckdb"


def build_config(base_url: str, app_id: str, token: str, start: date, end: date, parallelized: bool) -> dict:
    """Return the ``rest_api`` source configuration (a plain dict, as in dlt's documentation)."""
    paginator = {"type": "offset", "limit": 500, "total_path": None}
    return {
        "client": {
            "base_url": f"{base_url.rstrip('/')}/v1/api/apps/{app_id}/data/",
            "auth": {"type": "bearer", "token": token},
            "paginator": paginator,
        },
        "resources": [
            {
                "name": SUMMARY_TABLE,
                "parallelized": parallelized,
                "endpoint": {
                    "path": "sent-campaigns-summary",
                    "params": {
                        "startAt": f"{start.isoformat()}T00:00:00.000Z",
                        "endAt": f"{end.isoformat()}T23:59:59.999Z",
                    },
                    "data_selector": "result",
                    "paginator": paginator,
                },
            },
            {
                "name": DETAIL_TABLE,
                "parallelized": parallelized,
                "endpoint": {
                    "path": "sent-campaigns-detail",
                    "params": {"historyID": f"{{resources.{SUMMARY_TABLE}.id}}"},
                    "data_selector": "result",
                    "paginator": paginator,
                },
            },
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline once into ``<work-dir>/dlt.duckdb`` and print what was loaded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first UTC day")
    parser.add_argument("--end", type=date.fromisoformat, required=True, help="last UTC day (inclusive)")
    parser.add_argument("--work-dir", type=Path, required=True, help="pipelines dir and DuckDB file go here")
    parser.add_argument("--parallelized", action="store_true", help="parallelized: True on both resources")
    args = parser.parse_args(argv)

    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.sources.rest_api import rest_api_source

    args.work_dir.mkdir(parents=True, exist_ok=True)
    source = rest_api_source(
        build_config(args.base_url, args.app_id, args.token, args.start, args.end, args.parallelized)
    )
    pipeline = dlt.pipeline(
        pipeline_name=PIPELINE_NAME,
        destination=dlt.destinations.duckdb(str(args.work_dir / DATABASE_FILENAME)),
        dataset_name=DATASET_NAME,
        pipelines_dir=str(args.work_dir / "pipelines"),
    )
    info = pipeline.run(source)
    json.dump({"pipeline": PIPELINE_NAME, "load_packages": len(info.load_packages)}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
