"""Command line: ``python -m campaign_pipeline.simulator --port N [...]`` serves the simulated API.

Prints one line ``CINNOX simulator listening on http://127.0.0.1:PORT app_id=... token=...`` and serves
until SIGINT/SIGTERM. :func:`main` is also what ``campaign-pipeline simulator`` calls. The
"misbehaving server" options (``--summary-page-cap`` ... ``--odd-channel``, ``--drip-bytes-per-s``,
``--oversized-mb``) are all off by default.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date

from .data import ALL_FAULT_KINDS, SimulatorConfig, parse_rfc3339
from .server import serve_forever

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser(prog: str = "python -m campaign_pipeline.simulator") -> argparse.ArgumentParser:
    """Return the argument parser of the simulator command."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve a deterministic simulation of the CINNOX sent-campaigns Open API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default 8765)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="data seed")
    parser.add_argument("--app-id", default=defaults.app_id, help="App ID accepted in the path")
    parser.add_argument("--token", default=defaults.token, help="App Token accepted as 'Bearer <token>'")
    parser.add_argument("--campaigns-per-day", type=int, default=defaults.campaigns_per_day)
    parser.add_argument(
        "--recipients-per-campaign",
        type=int,
        default=defaults.recipients_per_campaign,
        help="mean campaign size (actual sizes vary 0.3x..1.7x)",
    )
    parser.add_argument(
        "--recipients-min",
        type=int,
        default=None,
        help="with --recipients-max: campaign sizes uniform in [min, max] instead of around the mean",
    )
    parser.add_argument(
        "--recipients-max",
        type=int,
        default=None,
        help="with --recipients-min: largest campaign size (min == max fixes every campaign's size)",
    )
    parser.add_argument("--sms-share", type=float, default=defaults.sms_share)
    parser.add_argument(
        "--now",
        default=None,
        help="freeze the simulated clock at this RFC3339 instant (default: the wall clock)",
    )
    parser.add_argument(
        "--whatsapp-delivered-excludes-read",
        action="store_true",
        help="WhatsApp summary 'delivered' counts Delivered rows only (default: Delivered + Read)",
    )
    parser.add_argument(
        "--odd-records", action="store_true", help="mix odd encodings and bad rows into details"
    )
    parser.add_argument(
        "--fault-rate", type=float, default=defaults.fault_rate, help="probability per request"
    )
    parser.add_argument(
        "--fault-kinds",
        default=",".join(ALL_FAULT_KINDS),
        help="comma-separated subset of: " + ", ".join(ALL_FAULT_KINDS),
    )
    parser.add_argument("--fault-seed", type=int, default=defaults.fault_seed)
    parser.add_argument("--slow-seconds", type=float, default=defaults.slow_seconds)
    parser.add_argument("--down", action="store_true", help="answer every request with HTTP 503")
    parser.add_argument(
        "--rate-limit-per-min", type=int, default=None, help="429 above this many requests per 60 s per token"
    )
    parser.add_argument(
        "--stats-path",
        default=None,
        metavar="PATH",
        help="serve the request counters as JSON at this path, e.g. /_stats (uncounted, no auth)",
    )
    hostile = parser.add_argument_group("misbehaving server (all off by default)")
    hostile.add_argument(
        "--summary-page-cap", type=int, default=None, metavar="N",
        help="serve at most N summary rows per page, whatever 'limit' asks",
    )  # fmt: skip
    hostile.add_argument(
        "--detail-page-cap", type=int, default=None, metavar="N",
        help="serve at most N detail rows per page, whatever 'limit' asks",
    )  # fmt: skip
    hostile.add_argument(
        "--empty-summary", action="store_true",
        help="the summary endpoint lists no campaign at all (a bad night)",
    )  # fmt: skip
    hostile.add_argument(
        "--truncate-details", action="store_true",
        help="one campaign a day lists only the first half of its detail rows (fewer than totalRecipients)",
    )  # fmt: skip
    hostile.add_argument(
        "--bom-bodies", action="store_true", help="every response body starts with a UTF-8 byte order mark"
    )
    hostile.add_argument(
        "--poison-values", action="store_true",
        help="per day: a detail row with numSMS 3000000000, one with a lone surrogate escape \\ud83d in its "
        "content, a summary count of 10**20",
    )  # fmt: skip
    hostile.add_argument(
        "--duplicate-summary", action="store_true",
        help="one campaign a day is listed twice: a stale copy (campaignName STALE, totalRecipients 1) first",
    )  # fmt: skip
    hostile.add_argument(
        "--naive-dates", action="store_true",
        help="one campaign a day has a summary date without a UTC offset",
    )  # fmt: skip
    hostile.add_argument(
        "--odd-channel", action="store_true",
        help="one campaign a day has the summary channel 'WhatsApp Business'",
    )  # fmt: skip
    hostile.add_argument(
        "--drip-bytes-per-s", type=float, default=None, metavar="N",
        help="send every detail body at about N bytes per second (headers at once): a per-read timeout "
        "never fires, only a total deadline does",
    )  # fmt: skip
    hostile.add_argument(
        "--oversized-mb", type=float, default=None, metavar="MB",
        help="pad every detail answer to MB megabytes (2**20 bytes) with a long unknown 'padding' field "
        "(well-formed JSON, no Content-Length)",
    )  # fmt: skip
    parser.add_argument("--prerender-start", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD")
    parser.add_argument("--prerender-end", type=date.fromisoformat, default=None, metavar="YYYY-MM-DD")
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build a :class:`SimulatorConfig` from parsed arguments (raises ValueError on bad values)."""
    return SimulatorConfig(
        seed=args.seed,
        app_id=args.app_id,
        token=args.token,
        campaigns_per_day=args.campaigns_per_day,
        recipients_per_campaign=args.recipients_per_campaign,
        recipients_min=args.recipients_min,
        recipients_max=args.recipients_max,
        sms_share=args.sms_share,
        now=parse_rfc3339(args.now) if args.now else None,
        whatsapp_delivered_includes_read=not args.whatsapp_delivered_excludes_read,
        odd_records=args.odd_records,
        fault_rate=args.fault_rate,
        fault_kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()),
        fault_seed=args.fault_seed,
        slow_seconds=args.slow_seconds,
        down=args.down,
        rate_limit_per_min=args.rate_limit_per_min,
        stats_path=args.stats_path,
        summary_page_cap=args.summary_page_cap,
        detail_page_cap=args.detail_page_cap,
        empty_summary=args.empty_summary,
        truncate_details=args.truncate_details,
        bom_bodies=args.bom_bodies,
        poison_values=args.poison_values,
        duplicate_summary=args.duplicate_summary,
        naive_dates=args.naive_dates,
        odd_channel=args.odd_channel,
        drip_bytes_per_s=args.drip_bytes_per_s,
        oversized_mb=args.oversized_mb,
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), serve until SIGINT/SIGTERM and return the exit code."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if (args.prerender_start is None) != (args.prerender_end is None):
        parser.error("--prerender-start and --prerender-end go together")
    prerender = None
    if args.prerender_start is not None:
        if args.prerender_end < args.prerender_start:
            parser.error("--prerender-end is before --prerender-start")
        prerender = (args.prerender_start, args.prerender_end)
    serve_forever(config, args.port, args.host, prerender=prerender)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
