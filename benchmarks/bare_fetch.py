"""Contender (a), the bare-fetch floor: fetch and JSON-decode every page, nothing else.

One ``requests.Session``, strictly sequential, independent of ``campaign_pipeline``'s client:
for each UTC day, the summary pages (``offset``/``limit=500``) of ``[day 00:00Z, next day
00:00Z]``, then the detail pages of every listed campaign sent that day. A listing stops after a
short page (fewer than ``limit`` rows), the fewest requests an API without totals allows. A
campaign sent exactly at the next midnight (``endAt`` may be inclusive) is left to the next day,
as the pipeline does, and none is fetched twice. No retries, no typing, no storage.

Prints one JSON object on stdout: ``requests``, ``summary_requests``, ``detail_requests``,
``campaigns``, ``records`` (detail rows), ``bytes`` and ``campaign_sizes`` (rows per campaign,
used by ``run.py`` to check the shape of a workload).

    python benchmarks/bare_fetch.py --base-url http://127.0.0.1:8765 --app-id sim-app \\
        --token sim-token --start 2024-05-13 --end 2024-05-19
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import date, timedelta

import requests

PAGE_LIMIT = 500


def iter_pages(
    session: requests.Session, url: str, params: dict, counters: dict, kind: str
) -> Iterator[list]:
    """Yield the decoded ``result`` rows of each page of one offset/limit listing.

    Counts requests and response bytes in ``counters``; stops after a short page.
    """
    offset = 0
    while True:
        response = session.get(url, params={**params, "offset": offset, "limit": PAGE_LIMIT}, timeout=60)
        response.raise_for_status()
        counters["requests"] += 1
        counters[f"{kind}_requests"] += 1
        counters["bytes"] += len(response.content)
        body = response.json()
        if body.get("code") != 0:
            raise RuntimeError(f"API error code {body.get('code')} on {kind} page at offset {offset}")
        page = body["result"]
        yield page
        if len(page) < PAGE_LIMIT:
            return
        offset += len(page)


def main(argv: list[str] | None = None) -> int:
    """Fetch the day range given on the command line and print the counts as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first UTC day")
    parser.add_argument("--end", type=date.fromisoformat, required=True, help="last UTC day (inclusive)")
    args = parser.parse_args(argv)

    base = f"{args.base_url.rstrip('/')}/v1/api/apps/{args.app_id}/data"
    session = requests.Session()
    session.headers.update(
        {
            "Authorization": f"Bearer {args.token}",
            "Content-Type": "application/json",
            "accept": "application/json",
        }
    )
    counters = {"requests": 0, "summary_requests": 0, "detail_requests": 0, "bytes": 0}
    sizes: dict[str, int] = {}
    day = args.start
    while day <= args.end:
        window = {
            "startAt": f"{day.isoformat()}T00:00:00.000Z",
            "endAt": f"{(day + timedelta(days=1)).isoformat()}T00:00:00.000Z",
        }
        campaigns = [
            row
            for page in iter_pages(session, f"{base}/sent-campaigns-summary", window, counters, "summary")
            for row in page
        ]
        for campaign in campaigns:
            history_id = campaign["id"]
            if history_id in sizes or not str(campaign.get("date", "")).startswith(day.isoformat()):
                continue  # fetched already, or sent exactly at the next midnight (endAt may be inclusive)
            pages = iter_pages(
                session, f"{base}/sent-campaigns-detail", {"historyID": history_id}, counters, "detail"
            )
            sizes[history_id] = sum(len(page) for page in pages)
        day += timedelta(days=1)
    json.dump(
        {**counters, "campaigns": len(sizes), "records": sum(sizes.values()), "campaign_sizes": sizes},
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
