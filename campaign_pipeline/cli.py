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

from campaign_pipeline.errors import CampaignPipelineError, ConfigError, error_kind, one_line

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
    from campaign_pipeline.model.windows import latest_complete_day

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
        from campaign_pipeline.defs.backfill import run_backfill

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


DEMO_DATA_DIR = "data/demo"
DEMO_ENV_FILENAME = "demo.env"
DEMO_DAGSTER_DIRNAME = "dagster"
#: Settings the demo takes from the environment; every other one is left out (see :func:`cmd_demo`).
DEMO_KEEPS = frozenset({"CAMPAIGN_PARTITION_TZ", "CAMPAIGN_PARTITION_START", "CAMPAIGN_LAST_RUN_FILE",
                        "CAMPAIGN_FETCH_WORKERS", "CAMPAIGN_SIM_SEED", "CAMPAIGN_SIM_CAMPAIGNS_PER_DAY",
                        "CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN"})


def _app_keys_in_env() -> tuple[str, ...]:
    from campaign_pipeline.config import app_keys

    try:
        return app_keys(os.environ.get("CAMPAIGN_APPS"))
    except ConfigError:
        return ()


def cmd_demo(args: argparse.Namespace) -> int:
    """Backfill the last ``--days`` complete days from the built-in simulator into the demo data
    dir, recorded in a Dagster instance there (so ``make dev`` shows it), print the report and the
    next commands."""
    from campaign_pipeline.config import environment_variable_names
    from campaign_pipeline.model.windows import latest_complete_day
    from campaign_pipeline.storage import locations

    # The demo writes only to its own data dir: whatever the shell points at (a real app, a
    # DuckLake, an S3 lake, a PII salt, another data dir) is left out of its environment.
    ignored = sorted(name for name in environment_variable_names(_app_keys_in_env())
                     if name not in DEMO_KEEPS and os.environ.get(name, "").strip())
    for name in ignored:
        del os.environ[name]
    if ignored:
        print(f"demo: ignoring {', '.join(ignored)} (it uses the built-in simulator and its own data dir)",
              file=sys.stderr)
    data_dir = locations.resolve(args.data_dir or DEMO_DATA_DIR)
    tz = os.environ.get("CAMPAIGN_PARTITION_TZ", "").strip() or "UTC"
    end = latest_complete_day(datetime.now(UTC), tz)
    start = end - timedelta(days=args.days - 1)
    first = os.environ.get("CAMPAIGN_PARTITION_START", "").strip()
    if first and first > start.isoformat():
        raise ConfigError(f"demo --days {args.days} starts on {start}, before CAMPAIGN_PARTITION_START={first}; "
                          "use fewer --days or unset CAMPAIGN_PARTITION_START")
    home = data_dir / DEMO_DAGSTER_DIRNAME
    demo_env = {
        "CAMPAIGN_SOURCE": "simulator",
        "CAMPAIGN_DATA_DIR": str(data_dir),
        "CAMPAIGN_PARTITION_TZ": tz,
        "CAMPAIGN_PARTITION_START": first or start.isoformat(),
        "DAGSTER_HOME": str(home),
    }
    os.environ.update(demo_env)
    home.mkdir(parents=True, exist_ok=True)
    _write_instance_config(home)
    (data_dir / DEMO_ENV_FILENAME).write_text("".join(f"{k}={v}\n" for k, v in demo_env.items()))
    args.start, args.end, args.resplit, args.dagster, args.allow_shrink = start, end, False, False, False
    code = cmd_backfill(args)
    if code != EXIT_OK:
        return code
    from campaign_pipeline.reporting import format_table, rate_report
    from campaign_pipeline.storage import analytics

    con = analytics.connect(data_dir, announce=False)
    try:
        header, rows = rate_report(con, "channel", start, end)
    finally:
        con.close()
    print(format_table(header, rows))
    print(f"\ndata: {data_dir} (analysts' database: {data_dir / locations.ANALYTICS_FILENAME})")
    print("next:\n"
          "  .venv/bin/campaign-pipeline report --by campaign   # per-campaign counts and rates\n"
          "  make notebook                                      # JupyterLab on notebooks/delivery_rates.ipynb\n"
          "  make dev                                           # the Dagster UI on http://127.0.0.1:3000\n"
          "  make sql                                           # a read-only DuckDB SQL shell")
    return EXIT_OK


def _write_instance_config(home: Path) -> None:
    """A local Dagster instance config in ``home`` (the shipped one when this is a checkout)."""
    from campaign_pipeline.storage import locations

    target = home / "dagster.yaml"
    if target.exists():
        return
    shipped = locations.project_root() / "deploy" / "dagster.local.yaml"
    target.write_text(shipped.read_text() if shipped.is_file() else
                      "telemetry:\n  enabled: false\npython_logs:\n  managed_python_loggers:\n"
                      "    - campaign_pipeline\n  python_log_level: INFO\n")


def cmd_simulator(args: argparse.Namespace) -> int:
    """Serve the CINNOX simulator standalone (its own options: ``campaign-pipeline simulator --help``)."""
    from campaign_pipeline.simulator.__main__ import main as simulator_main

    return simulator_main(args.simulator_args, prog="campaign-pipeline simulator") or EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    """Open the DuckDB CLI read-only on the analysts' database (or print its path)."""
    import shutil

    from campaign_pipeline.errors import WarehouseError
    from campaign_pipeline.storage import locations

    if os.environ.get("CAMPAIGN_WAREHOUSE_URI", "").strip():
        raise ConfigError("the warehouse is a DuckLake (CAMPAIGN_WAREHOUSE_URI): attach it read-only in your SQL "
                          "tool as docs/deployment.md shows; `make sql` opens the DuckDB-file deployments' database")
    data_dir = locations.announce_data_dir()
    path = data_dir / locations.ANALYTICS_FILENAME
    if not path.is_file():
        raise WarehouseError(f"no analysts' database at {path}; run `make demo` or a backfill first")
    if args.print_path:
        print(path)
        return EXIT_OK
    duckdb_cli = shutil.which("duckdb", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if duckdb_cli is None:
        raise ConfigError("the DuckDB CLI is not installed; run `make sql` (it installs the sql extra) "
                          f"or open {path} read-only in your own SQL tool")
    os.execv(duckdb_cli, [duckdb_cli, "-readonly", str(path), *args.duckdb_args])


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the Dagster UI (``dagster dev``) on the data the user has (:func:`ui_environment`)."""
    from campaign_pipeline.storage import locations

    root = locations.project_root()
    env, workdir, message = ui_environment(dict(os.environ), root)
    print(message, file=sys.stderr)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    _write_instance_config(home)
    workdir.mkdir(parents=True, exist_ok=True)
    dagster = str(Path(sys.executable).parent / "dagster")
    command = [dagster, "dev", "-w", str(root / "dagster_workspace.yaml"), "-p", str(args.port)]
    os.chdir(workdir)
    os.execve(dagster, command, env)


def ui_environment(env: dict[str, str], root: Path) -> tuple[dict[str, str], Path, str]:
    """The UI's environment, working directory and a one-line description.

    A real CINNOX app is configured when ``CINNOX_APP_TOKEN`` is set (in the environment or the
    root's ``.env``) to something else than ``.env.example``'s placeholder: the UI runs from the
    root, where Dagster loads ``.env``. Otherwise it runs on the simulator, on the demo's data
    dir and Dagster instance when the data the user has is the demo's, and outside the root, so
    an unfilled copy of ``.env.example`` (which Dagster would load over the environment) cannot
    turn it into a configuration error.
    """
    env = dict(env)
    dotenv = _dotenv_values(root / ".env")
    placeholder = _dotenv_values(root / ".env.example").get("CINNOX_APP_TOKEN", "")
    tokens = (env.get("CINNOX_APP_TOKEN", "").strip(), dotenv.get("CINNOX_APP_TOKEN", "").strip())
    workdir = root
    if any(token and token != placeholder for token in tokens):
        message = "Dagster UI on the configured CINNOX app"
    else:
        env["CAMPAIGN_SOURCE"] = "simulator"
        demo = _demo_settings(env, root)
        if demo:
            env.update({k: v for k, v in demo.items() if k == "DAGSTER_HOME" or not env.get(k, "").strip()})
            message = f"Dagster UI on the demo's data in {demo['CAMPAIGN_DATA_DIR']}"
        else:
            message = "Dagster UI on the built-in simulator (no CINNOX_APP_TOKEN configured)"
        workdir = Path(env.get("DAGSTER_HOME") or root / ".dagster_home")
    env["DAGSTER_HOME"] = str(Path(env.get("DAGSTER_HOME") or root / ".dagster_home").absolute())
    return env, workdir, message


def _dotenv_values(path: Path) -> dict[str, str]:
    """The ``NAME=value`` settings of a .env file, as Dagster reads it (python-dotenv); {} without one."""
    from dotenv import dotenv_values

    if not path.is_file():
        return {}
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def _demo_settings(env: dict[str, str], root: Path) -> dict[str, str] | None:
    """The demo's recorded settings when the data the user has is the demo's, else None."""
    from campaign_pipeline.errors import WarehouseError
    from campaign_pipeline.storage import locations

    try:
        data_dir, _why = locations.locate_data_dir(env, root)
    except (ConfigError, WarehouseError):
        return None
    values = _dotenv_values(data_dir / DEMO_ENV_FILENAME)
    return values if values.get("DAGSTER_HOME") else None


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 3660:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days between 1 and 3660")
    return value


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

    demo = sub.add_parser("demo", help="backfill the last 7 complete days from the built-in simulator into "
                                       "data/demo, recorded in a Dagster instance there")
    demo.add_argument("--days", type=_days, default=7, help="complete days up to yesterday (default 7)")
    demo.add_argument("--data-dir", default=None,
                      help=f"where to write (default {DEMO_DATA_DIR}, whatever CAMPAIGN_DATA_DIR says); "
                           "relative to the repository root")
    demo.set_defaults(func=cmd_demo)

    sql = sub.add_parser("sql", help="the DuckDB CLI read-only on the analysts' database (never locked); "
                                     "--print-path prints its path, other arguments go to duckdb",
                         add_help=False)
    sql.set_defaults(func=cmd_sql)

    ui = sub.add_parser("ui", help="the Dagster UI on the data you have (the demo's after make demo)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    from campaign_pipeline import report_cli

    report_cli.register(sub)

    simulator = sub.add_parser("simulator", help="serve the CINNOX simulator: campaign-pipeline simulator --help",
                               add_help=False)  # main() hands everything after "simulator" to its own parser
    simulator.set_defaults(func=cmd_simulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    _install_sigterm_handler()
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        command = next((arg for arg in argv if not arg.startswith("-")), None)
        if command in ("simulator", "sql"):  # their arguments belong to another program's parser
            index = argv.index(command)
            args = parser.parse_args(argv[:index] + [command])
            rest = argv[index + 1:]
            if command == "simulator":
                args.simulator_args = rest
            else:
                args.print_path = "--print-path" in rest
                args.duckdb_args = [arg for arg in rest if arg != "--print-path"]
        else:
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
        print(f"error: {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return exit_code_for(error)  # 4 for a full disk or read-only location, else 1


def run() -> None:
    """Console-script entry point (``campaign-pipeline``): exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
