"""``campaign-pipeline``: backfill a date range, run the demo, report, serve the simulator.

Every failure ends in one line on stderr (``error: ...`` or ``backfill failed: ...``), never a
traceback (``-v`` logs it), and an exit code that says what kind of failure it was:

===  ==========================================================================================
  0  success
  1  the run failed: an API error, a blocking check, a corrupt landing file (reason printed)
  2  bad input or configuration: arguments, environment, date range, DAGSTER_HOME
  3  the warehouse is unusable: not a DuckDB file, or DuckDB cannot open it (corrupt, truncated)
  4  storage full or read-only: no space left (or a file size limit), a read-only data dir
 75  the warehouse is locked: another process held it longer than ``--lock-wait`` (EX_TEMPFAIL:
     retry later)
130  interrupted (SIGINT, Ctrl-C)
143  terminated (SIGTERM)
===  ==========================================================================================

On 1, 3, 4, 75, 130 and 143 the published days are as they were before the failing day: a day
is committed only after its checks pass, and an interrupt stops the run within a second or two
(in-flight API requests are abandoned, not waited for).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from campaign_pipeline.errors import CampaignPipelineError, ConfigError, error_kind

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_WAREHOUSE_UNUSABLE, EXIT_STORAGE = 3, 4
EXIT_LOCKED = 75  # sysexits.h EX_TEMPFAIL: try again later
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM
#: :func:`campaign_pipeline.errors.error_kind` -> exit code.
KIND_EXIT_CODES = {
    "failed": EXIT_FAILED,
    "config": EXIT_BAD_INPUT,
    "warehouse_unusable": EXIT_WAREHOUSE_UNUSABLE,
    "storage_full": EXIT_STORAGE,
    "storage_read_only": EXIT_STORAGE,
    "lock_held": EXIT_LOCKED,
}

log = logging.getLogger("campaign_pipeline.cli")  # also when run as __main__


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the SIGTERM handler, so a termination unwinds like Ctrl-C."""


def exit_code_for(error: BaseException | None) -> int:
    """The exit code of a failure (see the module docstring)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_TERMINATED if isinstance(error, Terminated) else EXIT_INTERRUPTED
    return EXIT_FAILED if error is None else KIND_EXIT_CODES[error_kind(error)]


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _install_sigterm_handler() -> None:
    """Make SIGTERM unwind the main thread like Ctrl-C (only the main thread may set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def resolve_dagster_home() -> None:
    """Make a relative ``DAGSTER_HOME`` absolute (against the working directory), as Dagster
    requires; a value that is not a directory fails with one line."""
    value = os.environ.get("DAGSTER_HOME", "").strip()
    if not value:
        return
    home = Path(value).expanduser().absolute()
    if not home.is_dir():
        raise ConfigError(f"DAGSTER_HOME={value!r} is not a directory; create it or unset DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)


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
    resolve_dagster_home()
    prepare_data_dir(config)
    days = (args.end - args.start).days + 1
    in_dagster = args.dagster or bool(os.environ.get("DAGSTER_HOME", "").strip())
    lock_wait = getattr(args, "lock_wait", None)
    print(f"backfill {args.start}..{args.end} ({days} day{'s' * (days != 1)}) "
          f"source={config.source} data_dir={config.data_dir}", file=sys.stderr)
    if in_dagster:
        from campaign_pipeline.orchestration.backfill import run_backfill

        outcome = run_backfill(args.start, args.end, resplit_only=args.resplit, allow_shrink=args.allow_shrink,
                               dagster_log_level="DEBUG" if args.verbose else "CRITICAL", lock_wait_s=lock_wait)
        _install_sigterm_handler()  # Dagster's interrupt handling replaced it
        if outcome.interrupted_by is not None:
            raise Terminated() if outcome.interrupted_by == signal.SIGTERM else KeyboardInterrupt()
        failure, failed, warned = outcome.failure, outcome.failed_checks, outcome.warned_checks
        done = f"{outcome.materializations} materializations, run {outcome.run_id}"
        success = outcome.success
        code = KIND_EXIT_CODES.get(outcome.failure_kind or "failed", EXIT_FAILED)
    else:
        from campaign_pipeline import engine

        options = engine.RunOptions(resplit=args.resplit, allow_shrink=args.allow_shrink, lock_wait_s=lock_wait)
        results = list(engine.run_range(config, args.start, args.end, options))
        failed_days = [r for r in results if not r.published]
        success = not failed_days
        failure = "; ".join(f"{r.window.key}: {r.failure}" for r in failed_days) or None
        code = exit_code_for(failed_days[0].error) if failed_days else EXIT_FAILED
        failed = [name for r in results for name in r.check_names(r.failed_checks)]
        warned = sorted({name for r in results for name in r.check_names(r.warned_checks)})
        published = sum(r.published for r in results)
        done = f"{published} day partition(s) published (not recorded in Dagster: DAGSTER_HOME is unset)"
    if not success:
        reason = failure or "see the Dagster event log"
        if failed and "blocking check failed" not in reason:
            reason += f" (failed checks: {', '.join(failed)})"
        print(f"backfill failed: {reason}", file=sys.stderr)
        return code
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


def add_lock_wait_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--lock-wait SECONDS``: how long to wait for a warehouse another process holds (then exit 75)."""
    parser.add_argument("--lock-wait", type=_seconds, metavar="SECONDS",
                        help=f"how long to wait while another process holds the warehouse, then exit "
                             f"{EXIT_LOCKED} (default: {default})")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 86400")
    return value


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
    add_lock_wait_argument(backfill, "1800 for another backfill's writer lock, 120 for any other process")
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
    _install_sigterm_handler()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _configure_logging(args.verbose)
        return args.func(args)
    except KeyboardInterrupt as interrupt:
        what = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"{what}: stopped; the published days are as they were", file=sys.stderr)
        return exit_code_for(interrupt)
    except CampaignPipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code_for(error)
    except Exception as error:  # one line, never a traceback (-v logs it)
        log.debug("unexpected error", exc_info=True)
        print(f"error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return exit_code_for(error)  # 4 for a full disk or read-only location, else 1


def run() -> None:
    """Console-script entry point (``campaign-pipeline``): exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
