"""``campaign-pipeline``: backfill a date range, run the demo, report, serve the simulator.

Exit codes: 0 success, 1 the run failed (reason printed), 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, date, datetime, timedelta

from campaign_pipeline.errors import CampaignPipelineError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def validate_range(start: date, end: date, partition_start: date, tz_name: str, now: datetime) -> None:
    """Fail fast on a range the partitions cannot hold; one line saying how to fix it."""
    from campaign_pipeline.windows import latest_complete_day

    latest = latest_complete_day(now, tz_name)
    if start > end:
        raise ConfigError(f"--start {start} is after --end {end}; swap them")
    if start < partition_start:
        raise ConfigError(
            f"--start {start} is before the first partition {partition_start}; "
            "use a later date or set CAMPAIGN_PARTITION_START"
        )
    if end > latest:
        raise ConfigError(f"--end {end} is not a complete day yet in {tz_name}; the latest complete day is {latest}")


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("campaign_pipeline")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def cmd_backfill(args: argparse.Namespace) -> int:
    """Validate config and range, then load the range with the engine, printing a line per day:
    as one Dagster run recorded in ``DAGSTER_HOME`` when it is set (or with ``--dagster``), else
    directly."""
    from campaign_pipeline.config import PipelineConfig, prepare_data_dir

    config = PipelineConfig.from_env()
    validate_range(args.start, args.end, config.partition_start, config.partition_tz, datetime.now(UTC))
    prepare_data_dir(config)
    days = (args.end - args.start).days + 1
    in_dagster = args.dagster or bool(os.environ.get("DAGSTER_HOME", "").strip())
    print(f"backfill {args.start}..{args.end} ({days} day{'s' * (days != 1)}) "
          f"source={config.source} data_dir={config.data_dir}", file=sys.stderr)
    if in_dagster:
        from campaign_pipeline.orchestration.backfill import run_backfill

        outcome = run_backfill(args.start, args.end, resplit_only=args.resplit, allow_shrink=args.allow_shrink,
                               dagster_log_level="DEBUG" if args.verbose else "INFO")
        failure, failed, warned = outcome.failure, outcome.failed_checks, outcome.warned_checks
        done = f"{outcome.materializations} materializations, run {outcome.run_id}"
        success = outcome.success
    else:
        from campaign_pipeline import engine

        options = engine.RunOptions(resplit=args.resplit, allow_shrink=args.allow_shrink)
        results = list(engine.run_range(config, args.start, args.end, options))
        failed_days = [r for r in results if not r.published]
        success = not failed_days
        failure = "; ".join(f"{r.window.key}: {r.failure}" for r in failed_days) or None
        failed = [name for r in results for name in r.check_names(r.failed_checks)]
        warned = sorted({name for r in results for name in r.check_names(r.warned_checks)})
        published = sum(r.published for r in results)
        done = f"{published} day partition(s) published (not recorded in Dagster: DAGSTER_HOME is unset)"
    if not success:
        reason = failure or "see the Dagster event log"
        if failed and "blocking check failed" not in reason:
            reason += f" (failed checks: {', '.join(failed)})"
        print(f"backfill failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print(f"backfill done: {days} day(s), {done}", file=sys.stderr)
    if warned:
        print(f"check warnings: {', '.join(warned)}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Backfill the last 7 complete days from the built-in simulator into data/demo and report."""
    os.environ["CAMPAIGN_SOURCE"] = "simulator"
    os.environ.setdefault("CAMPAIGN_DATA_DIR", args.data_dir)
    os.environ.setdefault("CAMPAIGN_PARTITION_TZ", "UTC")
    today = datetime.now(UTC).date()
    end = today - timedelta(days=1)
    start = end - timedelta(days=args.days - 1)
    os.environ.setdefault("CAMPAIGN_PARTITION_START", start.isoformat())
    args.start, args.end, args.resplit, args.dagster, args.allow_shrink = start, end, False, False, False
    code = cmd_backfill(args)
    if code != EXIT_OK:
        return code
    from campaign_pipeline.config import PipelineConfig
    from campaign_pipeline.reporting import daily_delivery_report, format_table

    config = PipelineConfig.from_env()
    header, rows = daily_delivery_report(config.warehouse_path, start, end)
    print(format_table(header, rows))
    print(f"\nwarehouse: {config.warehouse_path}   lake: {config.lake_root}")
    return EXIT_OK


def cmd_simulator(args: argparse.Namespace) -> int:
    """Serve the CINNOX simulator standalone."""
    from campaign_pipeline.simulator.__main__ import main as simulator_main

    return simulator_main(args.simulator_args) or EXIT_OK


class _OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments exit 2 with one line (no usage block), like every other input error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``campaign-pipeline``."""
    parser = _OneLineErrorParser(prog="campaign-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    backfill = sub.add_parser("backfill", help="load a date range (both ends inclusive); one Dagster run "
                                               "recorded in DAGSTER_HOME when it is set")
    backfill.add_argument("--start", type=_parse_day, required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", type=_parse_day, required=True, help="last day, YYYY-MM-DD (inclusive)")
    backfill.add_argument("--resplit", action="store_true",
                          help="rebuild tables from the verified landed raw files: no API calls, except a summary "
                               "re-fetch when the reconciliation check finds a mismatch")
    backfill.add_argument("--allow-shrink", action="store_true",
                          help="let a re-load publish fewer campaigns or messages than a day's published version "
                               "(otherwise that day fails its no_unexplained_shrink check and keeps its version)")
    backfill.add_argument("--dagster", action="store_true",
                          help="run as a Dagster job even when DAGSTER_HOME is unset (in a throwaway instance)")
    backfill.set_defaults(func=cmd_backfill)

    demo = sub.add_parser("demo", help="backfill the last 7 complete days from the built-in simulator")
    demo.add_argument("--days", type=int, default=7)
    demo.add_argument("--data-dir", default="data/demo")
    demo.set_defaults(func=cmd_demo)

    from campaign_pipeline import report_cli

    report_cli.register(sub)

    simulator = sub.add_parser("simulator", help="serve the CINNOX simulator (see --help of the simulator)",
                               add_help=False)
    simulator.add_argument("simulator_args", nargs=argparse.REMAINDER)
    simulator.set_defaults(func=cmd_simulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CampaignPipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point (``campaign-pipeline``): exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
