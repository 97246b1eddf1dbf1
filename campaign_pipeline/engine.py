"""The engine: a run's days, one after another, for both front ends (the CLI and Dagster).

For each (app, day), in order::

    list the day's campaigns (summary pages)
    fetch their detail pages in parallel (bounded by the client's shared rate limiter)
    land the raw pages (staged) and type them (records.py, the one typing path)
    write the day's Parquet files (staged) and load them into DuckDB in one transaction
    audit: run the day's checks inside that transaction
    publish: commit, then move the staged files into place -- or, if a blocking check failed,
             roll back and drop the staged files, so readers keep the previous version

A re-split (``resplit=True``) reads the landed file instead of the API. Each day yields a
:class:`DayResult` as soon as it is done, so a front end reports it at once. An app's run stops
at its first failed day; the other apps still run. Nothing here imports Dagster.

An interrupt (``KeyboardInterrupt``, or the CLI's SIGTERM handler raising one) stops a run at
once: the detail fetchers are daemon threads that stop between pages and are never waited for,
the day's staged files are discarded (or, if the process dies first, reclaimed by the lake's
orphan-temp cleanup), and the day is never committed, so the published days stay as they were.

Logs carry counts, partition keys and campaign ids only: never phone numbers, bodies or tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from campaign_pipeline import quality, reporting
from campaign_pipeline.cinnox.client import CinnoxClient
from campaign_pipeline.config import (
    SOURCE_SIMULATOR,
    AppConfig,
    PipelineConfig,
    prepare_data_dir,
    recipient_hasher,
)
from campaign_pipeline.errors import CampaignPipelineError, LandingMissingError, one_line, storage_error
from campaign_pipeline.model.pii import RecipientHasher
from campaign_pipeline.model.transform import DaySplitter, DayTables, SplitStats
from campaign_pipeline.model.windows import PartitionWindow
from campaign_pipeline.storage import analytics
from campaign_pipeline.storage.lake import Lake, StagedFile
from campaign_pipeline.storage.warehouse import (
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_OPEN_TIMEOUT_S,
    Warehouse,
    open_warehouse,
)

progress_log = logging.getLogger("campaign_pipeline.progress")


@dataclass
class LandingStats:
    """What one day's fetch made: counts only, safe for logs and metadata."""

    campaigns_listed: int = 0
    campaigns_in_window: int = 0
    pages: int = 0
    records: int = 0
    requests: dict = field(default_factory=dict)

    def as_metadata(self) -> dict:
        """Plain values for metadata (request counters keep their own names: ``requests``, ``retries``...)."""
        return {"campaigns_listed": self.campaigns_listed, "campaigns_in_window": self.campaigns_in_window,
                "pages": self.pages, "records": self.records, **self.requests}


@dataclass
class DayResult:
    """One (app, day) of a run: what was fetched (``None`` on a re-split), typed, loaded and
    checked, and why it failed (``failure``, one line; ``None`` when the day was published)."""

    app: AppConfig
    window: PartitionWindow
    landed: LandingStats | None = None
    stats: SplitStats | None = None
    inserted: dict[str, int] = field(default_factory=dict)
    table_rows: dict[str, int] = field(default_factory=dict)  # the app's rows per table once the day is in
    rates: dict[str, dict[str, float | None]] = field(default_factory=dict)
    checks: list[quality.CheckOutcome] = field(default_factory=list)
    failure: str | None = None
    error: BaseException | None = field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def published(self) -> bool:
        """True when this version of the day passed its blocking checks and is visible to readers."""
        return self.failure is None

    @property
    def failed_checks(self) -> list[quality.CheckOutcome]:
        """Checks that failed with ERROR severity (blocking or not)."""
        return [c for c in self.checks if not c.passed and c.severity == quality.ERROR]

    @property
    def warned_checks(self) -> list[quality.CheckOutcome]:
        """Checks that warned."""
        return [c for c in self.checks if not c.passed and c.severity != quality.ERROR]

    def check_names(self, outcomes: list[quality.CheckOutcome]) -> list[str]:
        """``[<app>/]<table>:<check>`` names, as the Dagster asset checks are named."""
        prefix = "" if self.app.key == "default" else f"{self.app.key}/"
        return [f"{prefix}{c.spec.table}:{c.spec.name}" for c in outcomes]

    def summary(self) -> str:
        """One PII-free line for progress logs."""
        app = "" if self.app.key == "default" else f" [{self.app.key}]"
        if self.failure is not None:
            return f"{self.window.key}{app} FAILED: {self.failure}"
        rows = ", ".join(f"{name} {count:,}" for name, count in self.inserted.items())
        requests = f", {self.landed.requests.get('requests', 0):,} requests" if self.landed else ""
        return f"{self.window.key}{app} published: {rows} ({self.seconds:.1f}s{requests})"


@dataclass(frozen=True)
class RunOptions:
    """How a run treats its days: ``resplit`` reads the landed files instead of the API;
    ``allow_shrink`` lets a re-load publish fewer campaigns or messages than the published
    version; ``run_id`` names the run's quarantined versions; ``lock_wait_s`` bounds the wait
    for a warehouse another process holds (``None``: 1800 s for another pipeline writer, 120 s
    for any other DuckDB connection)."""

    resplit: bool = False
    allow_shrink: bool = False
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}")
    lock_wait_s: float | None = None

    def warehouse(self, cfg: PipelineConfig) -> Warehouse:
        """The run's warehouse (the DuckDB file, or the DuckLake of ``CAMPAIGN_WAREHOUSE_URI``),
        with the run's lock waits."""
        waits = ((DEFAULT_LOCK_TIMEOUT_S, DEFAULT_OPEN_TIMEOUT_S) if self.lock_wait_s is None
                 else (self.lock_wait_s, self.lock_wait_s))
        return open_warehouse(cfg, *waits)


def day_windows(start: date, end: date, tz_name: str) -> list[PartitionWindow]:
    """The partition windows of ``start..end`` inclusive."""
    return [PartitionWindow.for_day(start + timedelta(days=n), tz_name) for n in range((end - start).days + 1)]


def run_range(cfg: PipelineConfig, start: date, end: date, options: RunOptions | None = None,
              log: logging.Logger = progress_log) -> Iterator[DayResult]:
    """Every app's days of ``start..end`` inclusive (see :func:`run_days`)."""
    windows = day_windows(start, end, cfg.partition_tz)
    options = options or RunOptions()
    for app in cfg.apps:
        yield from run_days(cfg, app, windows, options, log)


def run_days(cfg: PipelineConfig, app: AppConfig, windows: list[PartitionWindow], options: RunOptions | None = None,
             log: logging.Logger = progress_log) -> Iterator[DayResult]:
    """Fetch (or re-split), write, audit and publish each of one app's days in order, yielding
    each day's result once it is done; stops after the first failed day. ``log`` gets one INFO
    line per day (and the client's retry warnings). The data dir is checked first
    (:func:`prepare_data_dir`: writable, and pinned to one source, PII mode and timezone)."""
    options = options or RunOptions()
    _pin_malloc_mmap_threshold()
    prepare_data_dir(cfg)
    if not cfg.warehouse_uri:  # a DuckLake is read directly: its readers never wait
        analytics.refresh(cfg.data_dir, cfg.lake_root)
    lake = Lake(cfg.lake_root, s3_endpoint_url=cfg.s3_endpoint_url, s3_region=cfg.s3_region)
    warehouse = options.warehouse(cfg)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_rare_young_collections())
        client = None if options.resplit else stack.enter_context(open_client(cfg, app, log))
        for number, window in enumerate(windows, start=1):
            result = run_day(cfg, app, window, lake, warehouse, client, options, log)
            level = logging.INFO if result.published else logging.ERROR
            log.log(level, "day %d/%d %s", number, len(windows), result.summary())
            yield result
            if not result.published:
                return


def run_day(cfg: PipelineConfig, app: AppConfig, window: PartitionWindow, lake: Lake, warehouse: Warehouse,
            client: CinnoxClient | None, options: RunOptions, log: logging.Logger = progress_log) -> DayResult:
    """One (app, day): fetch and land (with a ``client``) or re-split (without), then write,
    audit and publish. A version failing a blocking check is quarantined (its files and check
    results under ``lake/_quarantine/date=<day>/run=<run_id>/``). Never raises for a failed day
    (the result carries the failure), except on ``KeyboardInterrupt``/``SystemExit``."""
    started = time.monotonic()
    result = DayResult(app, window)
    staged: list[StagedFile] = []
    try:
        if client is not None:
            splitter = DaySplitter(window, app.app_id)
            result.landed, raw = land_day(client, lake, app, window, splitter, cfg.fetch_workers,
                                          recipient_hasher(cfg), log)
            staged.append(raw)
            tables = splitter.finish()
            log.debug("%s: typed %s", window.key, tables.row_counts)
        else:
            tables = split_day(lake, app, window)
        result.stats = tables.stats
        parquet = {name: lake.stage_parquet(name, window.day, table.reader(), app.key)
                   for name, table in tables.parts.items()}
        staged += parquet.values()
        del tables  # DuckDB loads the staged Parquet files: the day's rows are not held twice
        _return_freed_heap()
        log.debug("%s: Parquet staged", window.key)
        refetch = _summary_refetcher(cfg, app, window, client, log)
        files = {name: Path(file.local_path) for name, file in parquet.items()}
        committed = _load_and_audit(cfg, app, window, warehouse, files, result.stats, refetch, result,
                                    options.allow_shrink, publish_files=lambda: _publish(cfg, staged))
        if not committed:
            where = _quarantine(lake, app, window, options.run_id, staged, result)
            names = ", ".join(result.check_names([c for c in result.failed_checks if c.spec.blocking]))
            result.failure = (f"blocking check failed ({names}); not published, the previous version is kept; "
                              f"this version is quarantined in {where}")
    except Exception as error:  # noqa: BLE001 -- a failed day is a result; the front ends decide
        # A full disk or read-only location says so, whichever layer (lake, Arrow, DuckDB) hit it.
        result.error = storage_error(error, cfg.lake_root) or error
        result.failure = _describe(result.error)
    finally:
        for file in staged:
            file.discard()  # no-op for committed files
    result.seconds = time.monotonic() - started
    return result


def _publish(cfg: PipelineConfig, staged: list[StagedFile]) -> None:
    """Move a committed day's files into the lake, then bring the analysts' database up to date
    (it gains a table's view the first time that table has a file)."""
    for file in staged:
        file.commit()
    if not cfg.warehouse_uri:
        analytics.refresh(cfg.data_dir, cfg.lake_root)


def _load_and_audit(cfg: PipelineConfig, app: AppConfig, window: PartitionWindow, warehouse: Warehouse,
                    files: dict[str, Path], stats: SplitStats, refetch: Callable[[], list], result: DayResult,
                    allow_shrink: bool, publish_files: Callable[[], object]) -> bool:
    """Replace the day in DuckDB and run its checks inside the transaction; commit only if no
    blocking check failed, then ``publish_files`` while the writer lock is still held. Fills
    ``result.inserted``, ``rates`` and ``checks``."""

    previous: dict[str, int] = {}

    def count_published(con) -> None:
        previous.update(quality.published_counts(con, window.day, app.app_id))

    def audit(con) -> bool:
        result.rates = reporting.partition_rates(con, window.day, app.app_id)
        result.checks = quality.evaluate_day(con, window, app.app_id, stats, refetch, cfg.rejected_threshold,
                                             previous, allow_shrink)
        result.table_rows = {name: con.execute(f'SELECT count(*) FROM "{name}" WHERE app_id = ?',
                                               [app.app_id]).fetchone()[0] for name in files}
        return not any(c.spec.blocking for c in result.failed_checks)

    result.inserted, committed = warehouse.replace_partition(window.day, files, app.app_id, audit, count_published,
                                                             publish_files)
    return committed


def _quarantine(lake: Lake, app: AppConfig, window: PartitionWindow, run_id: str, staged: list[StagedFile],
                result: DayResult) -> str:
    """Keep a version that failed its checks aside for inspection: its staged files and its check
    results under ``lake/_quarantine/date=<day>/run=<run_id>/``; returns that directory."""
    directory = lake.quarantine_dir(window.day, run_id)
    for file in staged:
        table, _, name = file.path.rsplit("/", 3)[-3:]  # <root>/<table>/date=<day>/<name>
        file.commit(f"{directory}/{table}-{name}")
    checks = [{"table": c.spec.table, "check": c.spec.name, "passed": c.passed, "severity": c.severity,
               "blocking": c.spec.blocking, "description": c.description} for c in result.checks]
    lake.write_json(f"{directory}/checks-{app.key}.json", {"day": window.key, "app": app.key, "run_id": run_id,
                                                            "inserted": result.inserted, "checks": checks})
    return directory


def land_day(client: CinnoxClient, lake: Lake, app: AppConfig, window: PartitionWindow, splitter: DaySplitter,
             workers: int, hasher: RecipientHasher | None = None,
             log: logging.Logger = progress_log) -> tuple[LandingStats, StagedFile]:
    """Fetch one day into a staged raw landing file, typing every page into ``splitter`` as it
    arrives: summary pages first, then every in-window campaign's detail pages, ``workers``
    campaigns at a time. With a ``hasher`` (``CAMPAIGN_PII_MODE=hash``) detail records are
    pseudonymized before they are landed or typed. The first failure aborts the day."""
    before = client.stats.as_dict()
    landed = LandingStats()
    with lake.raw_writer(window.day, app.key) as writer:
        for page in client.iter_summary_pages(window.start_utc, window.end_utc):
            writer.write_page("summary", None, page.offset, page.records)
            splitter.add_summary_records(page.records)
            landed.campaigns_listed += len(page.records)
        expected_rows = splitter.campaigns_to_fetch
        campaign_ids = list(expected_rows)
        landed.campaigns_in_window = len(splitter.campaign_channels)
        log.info("%s: %d campaigns listed, %d in the day; fetching their details", window.key,
                 landed.campaigns_listed, landed.campaigns_in_window)
        write_lock = threading.Lock()
        stop = threading.Event()
        done = 0

        def fetch_campaign(history_id: str) -> None:
            nonlocal done
            # Without a usable totalRecipients, page until an empty page (a capped server's short
            # page must not end the listing): one request more for such a campaign.
            expected = expected_rows[history_id]
            for page in client.iter_detail_pages(history_id, sys.maxsize if expected is None else expected):
                page_records = hasher.redact_page(page.records) if hasher is not None else page.records
                with write_lock:
                    if stop.is_set():  # the day was abandoned: its writer may be closed already
                        return
                    if hasher is None:
                        writer.write_response("detail", history_id, page.offset, page.body, page.row_count)
                    else:
                        writer.write_page("detail", history_id, page.offset, page_records)
                splitter.add_detail_records(history_id, page_records)
            splitter.finish_campaign(history_id)
            with write_lock:
                done += 1
                log.debug("%s: fetched campaign %d/%d", window.key, done, len(campaign_ids))

        try:
            _run_on_daemon_threads(fetch_campaign, campaign_ids, workers, stop, "cinnox-detail")
        except BaseException:
            with write_lock:  # no fetcher writes a page once the writer starts closing
                stop.set()
            raise
        landed.pages, landed.records = writer.pages, writer.records
    after = client.stats.as_dict()
    landed.requests = {key: round(after[key] - before.get(key, 0), 3)
                       for key in after if isinstance(after[key], (int, float))}
    return landed, writer.staged


def _run_on_daemon_threads(task: Callable[[str], None], items: Iterable[str], workers: int,
                           stop: threading.Event, name: str) -> None:
    """Call ``task(item)`` for every item, ``workers`` at a time, on daemon threads; raise the
    first failure. On a failure the other tasks stop after their current page (``stop`` is set)
    and are waited for; on an interrupt (``KeyboardInterrupt``, ``SystemExit``) nothing is waited
    for: a thread blocked in a slow request must not hold up the process's exit, and a daemon
    thread dies with it. (A ``ThreadPoolExecutor`` joins its threads at exit, however it is shut down.)"""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    count = todo.qsize()
    if count == 0:
        return
    outcomes: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

    def work() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                task(item)
            except BaseException as error:  # noqa: BLE001 -- handed to the waiting thread
                outcomes.put(error)
                return
            outcomes.put(None)

    threads = [threading.Thread(target=work, name=f"{name}-{n}", daemon=True)
               for n in range(max(1, min(workers, count)))]
    for thread in threads:
        thread.start()
    try:
        for _ in range(count):
            while True:
                try:
                    error = outcomes.get(timeout=0.5)  # wakes up for signals on every platform
                    break
                except queue.Empty:
                    if not any(thread.is_alive() for thread in threads) and outcomes.empty():
                        raise RuntimeError(f"{name} threads ended without finishing their work") from None
            if error is not None:
                raise error
    except Exception:
        stop.set()
        for thread in threads:
            thread.join()
        raise
    except BaseException:
        stop.set()
        raise


def split_day(lake: Lake, app: AppConfig, window: PartitionWindow) -> DayTables:
    """Type one day's landed pages into tables. Makes no API call."""
    if not lake.has_raw(window.day, app.key):
        raise LandingMissingError(
            f"no landed data for {window.key}; run the backfill without --resplit to fetch it from the API"
        )
    splitter = DaySplitter(window, app.app_id)
    for page in lake.iter_raw_pages(window.day, app.key):
        if page.endpoint == "summary":
            splitter.add_summary_records(page.records)
        else:
            splitter.add_detail_records(page.history_id, page.records)
    return splitter.finish()


@contextlib.contextmanager
def open_client(cfg: PipelineConfig, app: AppConfig, log: logging.Logger | None = None) -> Iterator[CinnoxClient]:
    """A client for ``app``: the real CINNOX API, or (``CAMPAIGN_SOURCE=simulator``) an embedded
    simulator that lives as long as the block."""
    if cfg.source == SOURCE_SIMULATOR:
        from campaign_pipeline.simulator import SimulatorConfig, SimulatorServer

        sim = SimulatorConfig(app_id=app.app_id, seed=app.sim_seed, campaigns_per_day=cfg.sim_campaigns_per_day,
                              recipients_per_campaign=cfg.sim_recipients_per_campaign)
        with SimulatorServer(sim) as server:
            with CinnoxClient(server.base_url, server.app_id, server.token, logger=log,
                              **cfg.client_options()) as client:
                yield client
        return
    with CinnoxClient(app.base_url, app.app_id, app.app_token, logger=log, **cfg.client_options()) as client:
        yield client


def _summary_refetcher(cfg: PipelineConfig, app: AppConfig, window: PartitionWindow, client: CinnoxClient | None,
                       log: logging.Logger) -> Callable[[], list]:
    """The reconciliation check's second look at the day's summary: through the run's client, or
    (a re-split, which otherwise makes no API call) a client opened only if the check needs it."""

    def refetch() -> list:
        with contextlib.nullcontext(client) if client is not None else open_client(cfg, app, log) as own:
            return [record for page in own.iter_summary_pages(window.start_utc, window.end_utc)
                    for record in page.records]

    return refetch


@contextlib.contextmanager
def _rare_young_collections() -> Iterator[None]:
    """Python's cyclic GC after 10,000 net new containers instead of 700 while a run lasts: the
    day's JSON records are acyclic dicts that die young, and collecting every 700 kept walking
    the pages still alive. Measured: GC 0.145 -> 0.026 s and a 1x week 4.25 -> 4.09 s (the 1x
    target), four 10x days' GC 0.9 -> 0.03 s, same peak RSS. Restored when the run ends."""
    before = gc.get_threshold()
    gc.set_threshold(10_000, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _glibc():
    """The C library when it is glibc (for its heap controls below), else ``None``."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def _pin_malloc_mmap_threshold() -> None:
    """glibc raises its mmap threshold after each large free, so a day's freed Arrow and DuckDB
    buffers come back from the heap and fragment it: pinning it at 64 KiB for the run (as
    ``MALLOC_MMAP_THRESHOLD_=65536`` would) measured 320 -> 267 MB peak RSS for four 10x days,
    which keeps the 300 MB target. A no-op where the C library is not glibc."""
    if _LIBC is not None:
        _LIBC.mallopt(-3, 65536)  # M_MMAP_THRESHOLD


def _return_freed_heap() -> None:
    """Hand the heap pages the day's fetch threads freed back to the OS before DuckDB loads the
    day (glibc ``malloc_trim``): four 10x days peaked at 280 MB without it, 264 MB with it
    (RSS at the load's start 216 -> 189 MB), for the 300 MB target. A no-op without glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _describe(error: BaseException) -> str:
    """One line for a failed day: our errors' own words, anything else prefixed with its type."""
    return one_line(error if isinstance(error, CampaignPipelineError) else f"{type(error).__name__}: {error}")
