"""Staged campaigns and streamed publishing, on real parts: pages from the simulator over HTTP, Arrow
IPC staging files, Parquet files, a DuckDB file, the pipeline's staging area and the allocator calls."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from campaign_pipeline import lake as lake_module
from campaign_pipeline import memory, pipeline, schemas, settings, transform
from campaign_pipeline.client import CinnoxClient
from campaign_pipeline.lake import Lake
from campaign_pipeline.transform import DaySplitter, DayTables
from campaign_pipeline.warehouse import Warehouse
from campaign_pipeline.windows import PartitionWindow

from .conftest import FIRST_DAY, start_simulator
from .test_transform_lake_warehouse import APP, DAY, detail, summary

ROOT = Path(__file__).resolve().parents[1]
WINDOW = PartitionWindow.for_day(FIRST_DAY, "UTC")
MESSAGE_NAMES = [spec.name for spec in schemas.MESSAGE_TABLES]


# --- the day's pages, fetched once from a simulator with duplicates and untypeable records ------


@pytest.fixture(scope="module")
def odd_day() -> tuple[list[list], dict[str, list[list]]]:
    """One day's API pages from a real simulator with ``odd_records`` (duplicate recipients, rejects),
    fetched over HTTP in 25-row pages: (summary pages, {campaign id: its detail pages})."""
    server = start_simulator(odd_records=True, campaigns_per_day=8, recipients_per_campaign=60, sms_share=0.5)
    try:
        with CinnoxClient(server.base_url, server.app_id, server.token, rate_limit_per_min=None,
                          page_size=25) as client:
            summary_pages = [page.records
                             for page in client.iter_summary_pages(WINDOW.start_utc, WINDOW.end_utc)]
            probe = DaySplitter(WINDOW, APP)
            for page in summary_pages:
                probe.add_summary_records(page)
            details = {cid: [page.records for page in client.iter_detail_pages(cid)]
                       for cid in probe.campaign_channels}
    finally:
        server.stop()
    return summary_pages, details


def feed(pages: tuple[list[list], dict[str, list[list]]], staging_dir: Path | None = None,
         campaigns: set[str] | None = None, pages_per_campaign: int | None = None) -> DaySplitter:
    """A splitter fed like ``land_day`` feeds it: summary pages, then each campaign's detail pages
    followed by ``finish_campaign`` (except the last campaign, left for ``finish()`` to close)."""
    summary_pages, details = pages
    splitter = DaySplitter(WINDOW, APP, staging_dir)
    for page in summary_pages:
        splitter.add_summary_records(page)
    chosen = [cid for cid in details if campaigns is None or cid in campaigns]
    for index, cid in enumerate(chosen):
        for page in details[cid][:pages_per_campaign]:
            splitter.add_detail_records(cid, page)
        if index < len(chosen) - 1:
            splitter.finish_campaign(cid)
    return splitter


def staged_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.arrow")) if directory.exists() else []


# --- 1. staging changes where rows live, not what they are -------------------------------------


def test_staged_split_equals_the_in_memory_split_and_discard_removes_the_staging_dir(odd_day, tmp_path):
    """Both channels, several campaigns each, duplicate recipients and rejected records: the staged
    split gives exactly the in-memory split's tables, one IPC file per non-empty campaign, all
    removed (and the tables emptied) by ``discard``."""
    staging = tmp_path / "staging" / WINDOW.key  # created by the splitter, parents included
    plain_splitter = feed(odd_day)
    channels = Counter(plain_splitter.campaign_channels.values())
    plain = plain_splitter.finish()
    staged = feed(odd_day, staging).finish()

    # The input really exercises every path.
    assert channels[settings.CHANNEL_SMS] >= 2 and channels[settings.CHANNEL_WHATSAPP] >= 2, channels
    assert staged.stats.duplicate_messages_dropped > 0
    assert staged.row_counts[schemas.REJECTED_RECORDS.name] > 0

    plain_tables, staged_tables = plain.tables, staged.tables
    assert set(staged_tables) == set(schemas.TABLES)
    for name, table in staged_tables.items():
        assert table.schema == schemas.TABLES[name].schema, name
        assert table.equals(plain_tables[name]), name
    assert staged.row_counts == plain.row_counts
    assert staged.stats.as_metadata() == plain.stats.as_metadata()

    non_empty = {cid for name in MESSAGE_NAMES for cid in staged_tables[name]["campaign_id"].to_pylist()}
    files = staged_files(staging)
    assert len(files) == len(non_empty) > 0
    staged_parts = [part for name in MESSAGE_NAMES for part in staged.parts[name].parts]
    assert sorted(staged_parts) == files  # every message part is a staged file, none held in memory
    assert not any(isinstance(part, Path) for name in MESSAGE_NAMES for part in plain.parts[name].parts)

    staged.discard()
    assert not staging.exists()
    assert set(staged.row_counts.values()) == {0}
    assert all(table.num_rows == 0 for table in staged.tables.values())


def test_a_campaign_with_only_rejected_records_stages_no_file(odd_day, tmp_path):
    """A campaign whose every detail record is untypeable adds rejected rows and no staging file."""
    summary_pages, details = odd_day
    staging = tmp_path / "staging"
    splitter = DaySplitter(WINDOW, APP, staging)
    for page in summary_pages:
        splitter.add_summary_records(page)
    campaign_id = next(iter(details))
    splitter.add_detail_records(campaign_id, [{"recipient": None, "status": 3}, {"unexpected": True}])
    splitter.finish_campaign(campaign_id)
    assert staged_files(staging) == []
    day = splitter.finish()
    assert day.row_counts[schemas.REJECTED_RECORDS.name] == 2
    assert sum(day.row_counts[name] for name in MESSAGE_NAMES) == 0


# --- 2. a campaign larger than one staged slice ---------------------------------------------------


def test_a_staged_campaign_larger_than_a_slice_reads_back_sorted_and_deduplicated(tmp_path):
    """9,000 records of one campaign in 500-row pages, 1,000 of them second versions of a recipient
    (later, earlier, tied and missing ``lastUpdatedDateTime``): the staged campaign streams back in
    several slices whose concatenation is the in-memory result, one row per recipient in recipient
    order, each the latest version (ties to the later arrival, a missing time counting as oldest)."""
    distinct, duplicated, page_rows = 8_000, 1_000, 500
    assert distinct > transform._STAGED_BATCH_ROWS  # several slices
    rng = random.Random(5)
    base = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

    def stamp(minutes: int | None) -> str:
        return "" if minutes is None else (base + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")

    versions: list[tuple[str, int | None]] = [(f"+8529{i:07d}", rng.randrange(1, 600))
                                              for i in range(distinct)]
    for n, i in enumerate(rng.sample(range(distinct), duplicated)):
        recipient, minutes = versions[i]
        kind = n % 4  # later, earlier, the same time, no time at all
        if kind == 3:
            versions.append((recipient, None))
        else:
            versions.append((recipient, minutes + (1, -1, 0)[kind]))
    rng.shuffle(versions)
    records = [{**detail("c", recipient, stamp(minutes)), "content": f"m{n}"}
               for n, (recipient, minutes) in enumerate(versions)]

    # Independent expectation: per recipient, the greatest (has a time, time, arrival).
    latest: dict[str, tuple] = {}
    for arrival, (recipient, minutes) in enumerate(versions):
        rank = (minutes is not None, minutes or 0, arrival)
        if recipient not in latest or rank > latest[recipient][0]:
            latest[recipient] = (rank, f"m{arrival}")
    expected_recipients = sorted(latest)

    def split_campaign(staging_dir: Path | None) -> DayTables:
        splitter = DaySplitter(PartitionWindow.for_day(DAY, "UTC"), APP, staging_dir)
        splitter.add_summary_records([summary("c", "2024-05-01T10:00:00Z", total=distinct)])
        for start in range(0, len(records), page_rows):
            splitter.add_detail_records("c", records[start:start + page_rows])
        splitter.finish_campaign("c")
        return splitter.finish()

    in_memory = split_campaign(None).parts[schemas.SMS_MESSAGES.name].read_all()
    staged_day = split_campaign(tmp_path / "stage")
    staged = staged_day.parts[schemas.SMS_MESSAGES.name]
    assert len(staged_files(tmp_path / "stage")) == 1 and isinstance(staged.parts[0], Path)

    batches = list(staged.reader())
    assert len(batches) >= 2
    assert all(0 < batch.num_rows <= transform._STAGED_BATCH_ROWS for batch in batches)
    assert all(batch.schema == schemas.SMS_MESSAGES.schema for batch in batches)
    streamed = pa.Table.from_batches(batches, schema=schemas.SMS_MESSAGES.schema)
    assert streamed.equals(in_memory)
    assert staged.num_rows == streamed.num_rows == distinct
    assert staged_day.stats.duplicate_messages_dropped == duplicated
    assert streamed["recipient"].to_pylist() == expected_recipients
    assert streamed["content"].to_pylist() == [latest[r][1] for r in expected_recipients]
    assert set(streamed["partition_date"].to_pylist()) == {DAY}
    assert set(streamed["app_id"].to_pylist()) == {APP}
    assert pa.Table.from_batches(list(staged.reader())).equals(streamed)  # each reader() is a new pass


# --- 3. streamed Parquet writes -------------------------------------------------------------------


def _numbered_table(rows: int) -> pa.Table:
    return pa.table({
        "n": pa.array(range(rows), pa.int64()),
        "label": pa.array([f"row-{i}" for i in range(rows)], pa.string()),
        "at": pa.array([i * 1_000_000 for i in range(rows)], pa.int64()).cast(schemas.TIMESTAMP_UTC),
    })


def _row_groups(path: str) -> list[int]:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def test_write_parquet_streams_a_reader_in_bounded_row_groups(tmp_path):
    """A reader of more than two row groups' worth of rows, in the staged slice size, becomes row
    groups of at most ``PARQUET_ROW_GROUP_ROWS`` rows, and the file reads back equal to the input."""
    limit = lake_module.PARQUET_ROW_GROUP_ROWS
    table = _numbered_table(2 * limit + 1_234)
    batches = table.to_batches(max_chunksize=transform._STAGED_BATCH_ROWS)
    reader = pa.RecordBatchReader.from_batches(table.schema, batches)
    path = Lake(str(tmp_path / "lake")).write_parquet("t", DAY, reader)
    groups = _row_groups(path)
    assert len(groups) >= 3 and sum(groups) == table.num_rows
    assert max(groups) <= limit
    assert pq.read_table(path).equals(table)


@pytest.mark.parametrize("batch_rows", [5_000, 100_000])
def test_write_parquet_bounds_row_groups_whatever_the_batch_size(tmp_path, batch_rows):
    """Batches whose size does not divide ``PARQUET_ROW_GROUP_ROWS`` (or a single batch larger than
    it) must still give row groups of at most that many rows."""
    limit = lake_module.PARQUET_ROW_GROUP_ROWS
    table = _numbered_table(2 * limit + 1_234)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=batch_rows))
    path = Lake(str(tmp_path / "lake")).write_parquet("t", DAY, reader)
    assert pq.read_table(path).equals(table)
    assert max(_row_groups(path)) <= limit


def test_write_parquet_of_an_empty_reader_writes_a_readable_empty_file(tmp_path):
    """An empty stream still replaces the day: a readable file with the schema and no rows."""
    lake = Lake(str(tmp_path / "lake"))
    lake.write_parquet("t", DAY, _numbered_table(10))  # a previous version of the day
    schema = _numbered_table(0).schema
    path = lake.write_parquet("t", DAY, pa.RecordBatchReader.from_batches(schema, iter([])))
    back = pq.read_table(path)
    assert back.schema.remove_metadata() == schema and back.num_rows == 0
    assert pq.ParquetFile(path).metadata.num_rows == 0
    assert lake.read_parquet("t", DAY).num_rows == 0


# --- 4. streamed DuckDB loads ---------------------------------------------------------------------


def _warehouse_day(warehouse: Warehouse) -> dict[str, list[dict]]:
    """Every table's rows of (APP, WINDOW.day), in each table's sort order."""
    with warehouse.reader() as con:
        out = {}
        for name, spec in schemas.TABLES.items():
            order = ", ".join(f'"{c}"' for c in spec.sort_columns)
            query = f'SELECT * FROM "{name}" WHERE partition_date = ? AND app_id = ? ORDER BY {order}'
            cursor = con.execute(query, [WINDOW.day, APP])
            names = [column[0] for column in cursor.description]
            out[name] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return out


def _sorted_rows(table: pa.Table, name: str) -> list[dict]:
    keys = [(c, "ascending") for c in schemas.TABLES[name].sort_columns]
    return table.sort_by(keys).to_pylist()


def test_replace_partition_from_staged_readers_reports_inserted_rows_and_replaces_the_day(odd_day, tmp_path):
    """Readers over staged campaigns load into the real schemas: the counts returned are the rows
    DuckDB inserted and holds; re-loading the day with fewer rows leaves exactly the new rows."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    full = feed(odd_day, tmp_path / "full").finish()
    try:
        readers = {name: table.reader() for name, table in full.parts.items()}
        assert all(isinstance(reader, pa.RecordBatchReader) for reader in readers.values())
        inserted = warehouse.replace_partition(WINDOW.day, readers, APP)
        assert inserted == full.row_counts
        assert min(inserted.values()) > 0
        loaded = _warehouse_day(warehouse)
        for name, table in full.tables.items():
            assert loaded[name] == _sorted_rows(table, name), name
    finally:
        full.discard()

    # The same day again, with half the campaigns and only their first page.
    _, details = odd_day
    keep = set(list(details)[::2])
    smaller = feed(odd_day, tmp_path / "smaller", campaigns=keep, pages_per_campaign=1).finish()
    try:
        fewer = sum(smaller.row_counts[name] for name in MESSAGE_NAMES)
        assert 0 < fewer < sum(inserted[name] for name in MESSAGE_NAMES)
        inserted_again = warehouse.replace_partition(
            WINDOW.day, {name: table.reader() for name, table in smaller.parts.items()}, APP)
        assert inserted_again == smaller.row_counts
        loaded = _warehouse_day(warehouse)
        for name, table in smaller.tables.items():
            assert loaded[name] == _sorted_rows(table, name), name
        with warehouse.reader() as con:
            for name, count in inserted_again.items():
                assert con.execute(f'SELECT count(*) FROM "{name}"').fetchone() == (count,), name
            message_campaigns = {
                campaign for name in MESSAGE_NAMES
                for (campaign,) in con.execute(f'SELECT DISTINCT campaign_id FROM "{name}"').fetchall()}
        assert message_campaigns == keep
    finally:
        smaller.discard()


# --- 5. the pipeline's staging area --------------------------------------------------------------


def _exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not lake_module.pid_alive(child.pid)
    return child.pid


def test_staging_area_is_fresh_and_removed_at_exit(tmp_path):
    """The area is a new, empty directory under the (created) parent, gone after the block."""
    parent = tmp_path / "data"
    with pipeline.staging_area(parent) as first:
        assert first.parent == parent and first.is_dir()
        assert [p.name for p in first.iterdir()] == [".owner.lock"]  # held while the run lives
        assert first.name.startswith(f".staging-{os.getpid()}-")
        (first / "2024-05-01").mkdir()
        (first / "2024-05-01" / "campaign-000001.arrow").write_bytes(b"x" * 100)
        with pipeline.staging_area(parent) as second:  # another run of this process: its own area
            assert second != first and first.is_dir()
        assert not second.exists() and first.is_dir()
    assert not first.exists()
    assert list(parent.iterdir()) == []


def test_staging_area_is_removed_when_the_block_raises(tmp_path):
    """A failure inside the block propagates, and the area is still removed."""
    with pytest.raises(RuntimeError, match="publish failed"):
        with pipeline.staging_area(tmp_path) as area:
            (area / "campaign-000001.arrow").write_bytes(b"x")
            raise RuntimeError("publish failed")
    assert not area.exists()
    assert list(tmp_path.iterdir()) == []


def _hold_owner_lock(area: Path) -> subprocess.Popen:
    """Another live process holding ``area``'s owner lock (as a running backfill does)."""
    code = textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        lock = FileLock({str(area / ".owner.lock")!r}, thread_local=False)
        lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_staging_area_removes_areas_of_dead_processes_only(tmp_path):
    """On entry, a ``.staging-*`` directory whose owner lock nobody holds (its run was killed) is
    removed, whatever pid its name carries; one whose lock a live process holds is kept (it may run
    in another container sharing the volume), and so is anything not named like a staging area."""
    dead = tmp_path / f".staging-{_exited_pid()}-abc123"
    (dead / "2024-05-01").mkdir(parents=True)
    (dead / "2024-05-01" / "campaign-000001.arrow").write_bytes(b"stale")
    (dead / ".owner.lock").touch()
    reused_pid = tmp_path / f".staging-{os.getpid()}-killed"  # a killed run whose pid is now ours
    reused_pid.mkdir()
    other = tmp_path / "not-staging"
    other.mkdir()
    live = tmp_path / ".staging-4242424-elsewhere"  # a pid from another container's namespace
    live.mkdir()
    holder = _hold_owner_lock(live)
    try:
        with pipeline.staging_area(tmp_path) as area:
            assert not dead.exists() and not reused_pid.exists()
            assert live.is_dir() and other.is_dir()
            assert area.is_dir() and area.name.startswith(".staging-")
            with pipeline.staging_area(tmp_path) as second:  # a second run keeps the first one's area
                assert area.is_dir() and second.is_dir() and second != area
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    finally:
        holder.kill()
        holder.wait()
    with pipeline.staging_area(tmp_path):  # its holder is gone now
        assert not live.exists()


# --- 6. process_days cleans up after itself ---------------------------------------------------------


def sim_client(server) -> CinnoxClient:
    """A client of ``server`` without client-side rate limiting."""
    return CinnoxClient(server.base_url, server.app_id, server.token, rate_limit_per_min=None)


def _staging_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob(".staging-*"))


def test_process_days_stages_beside_the_warehouse_and_leaves_nothing_behind(simulator, tmp_path):
    """Two days fetched from the simulator, then re-split from the landing files: while the run is
    on, its one staging area beside the warehouse holds the next day's campaigns (the published day
    already discarded); after the run no ``.staging-*`` directory is left."""
    warehouse = Warehouse(tmp_path / "data" / "warehouse.duckdb")
    lake = Lake(str(tmp_path / "data" / "lake"))
    windows = [PartitionWindow.for_day(FIRST_DAY + timedelta(days=n), "UTC") for n in range(2)]
    app = pipeline.AppRef("default", simulator.app_id)
    with sim_client(simulator) as client:
        for client_or_none in (client, None):  # fetch, then re-split what was landed
            outcomes, seen_during_run = [], []
            for outcome in pipeline.process_days(windows, lake, warehouse, app, client_or_none):
                if not outcomes:
                    areas = _staging_dirs(warehouse.path.parent)
                    assert len(areas) == 1, areas
                    seen_during_run.append(areas[0])
                    assert not (areas[0] / windows[0].key).exists()  # day 1 discarded once published
                    assert staged_files(areas[0] / windows[1].key)  # day 2 landed and staged
                outcomes.append(outcome)
            assert [o.window.key for o in outcomes] == [w.key for w in windows]
            assert all(o.published is not None for o in outcomes)
            assert seen_during_run and not seen_during_run[0].exists()
            assert _staging_dirs(warehouse.path.parent) == []
    with warehouse.reader() as con:
        for name in MESSAGE_NAMES:
            per_day = con.execute(f'SELECT partition_date, count(*) FROM "{name}" GROUP BY 1').fetchall()
            assert dict(per_day) == {o.window.day: o.row_counts[name] for o in outcomes}


def test_process_days_removes_its_staging_area_when_a_day_fails_to_publish(simulator, tmp_path):
    """Day 2's Parquet directory is blocked by a file, so its publish fails after day 1 is done: the
    failure reaches the caller, day 1's outcome came first, and no staging directory is left."""
    warehouse = Warehouse(tmp_path / "data" / "warehouse.duckdb")
    lake = Lake(str(tmp_path / "data" / "lake"))
    windows = [PartitionWindow.for_day(FIRST_DAY + timedelta(days=n), "UTC") for n in range(2)]
    blocker = Path(lake.partition_dir(schemas.CAMPAIGNS.name, windows[1].day))
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a directory")
    outcomes, areas = [], []
    app = pipeline.AppRef("default", simulator.app_id)
    with sim_client(simulator) as client:
        with pytest.raises(FileExistsError):
            for outcome in pipeline.process_days(windows, lake, warehouse, app, client):
                areas.extend(_staging_dirs(warehouse.path.parent))
                outcomes.append(outcome)
    assert [o.window.key for o in outcomes] == [windows[0].key]
    assert len(areas) == 1 and not areas[0].exists()
    assert _staging_dirs(warehouse.path.parent) == []
    with warehouse.reader() as con:
        assert con.execute("SELECT DISTINCT partition_date FROM campaigns").fetchall() == [(windows[0].day,)]


# --- 7. the allocator calls ---------------------------------------------------------------------------


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this venv (no ``MALLOC_ARENA_MAX`` in its environment)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60, check=False)


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator calls are glibc's")


@glibc_only
def test_glibc_is_found_so_the_allocator_calls_are_not_no_ops():
    """On glibc, ``_glibc()`` returns the C library with ``mallopt`` and ``malloc_trim``."""
    libc = memory._glibc()
    assert libc is not None
    assert hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")
    assert memory._glibc() is libc  # looked up once


@glibc_only
def test_allocator_calls_run_without_error_and_are_idempotent(monkeypatch):
    """Both calls can be made repeatedly in this process; the arena cap is recorded as applied."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    for _ in range(2):
        assert memory.limit_allocator_arenas() is None
        assert memory._state["arenas_limited"] is True
        assert memory.release_free_memory() is None


ARENA_PROBE = """
    import ctypes, sys, threading
    from campaign_pipeline import memory
    if sys.argv[1:] == ["limit"]:
        memory.limit_allocator_arenas()
        memory.limit_allocator_arenas()  # a second call changes nothing
    libc = memory._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    barrier = threading.Barrier(8)
    def allocate():
        block = libc.malloc(4096)
        barrier.wait()  # all eight threads hold memory at once
        libc.free(block)
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@glibc_only
def test_limit_allocator_arenas_caps_the_arenas_threads_get():
    """In a fresh process, eight threads allocating at once get their own arenas, unless
    ``limit_allocator_arenas`` ran first: then glibc keeps to ``MALLOC_ARENAS``."""

    def arenas(*args: str) -> int:
        result = _run_python(ARENA_PROBE, *args)
        assert result.returncode == 0, result.stderr
        return sum(line.startswith("Arena ") for line in result.stderr.splitlines())

    assert arenas() > memory.MALLOC_ARENAS  # the default: one arena per thread here
    assert 1 <= arenas("limit") <= memory.MALLOC_ARENAS


TRIM_PROBE = """
    import ctypes, os
    from campaign_pipeline import memory
    libc = memory._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page
    chunk, count = 64 * 1024, 1024  # 64 MiB in blocks below the mmap threshold: from the heap
    blocks = [libc.malloc(chunk) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, chunk)
    for block in blocks[:-1]:
        libc.free(block)  # the last block stays, so the freed space is not at the top of the heap
    freed = rss()
    memory.release_free_memory()
    trimmed = rss()
    memory.release_free_memory()
    print(chunk * count, freed, trimmed, rss())
"""


@glibc_only
def test_release_free_memory_returns_freed_heap_pages_to_the_os():
    """64 MiB malloc'ed and freed in the middle of the heap stays resident until
    ``release_free_memory`` hands it back; a second call is harmless."""
    result = _run_python(TRIM_PROBE)
    assert result.returncode == 0, result.stderr
    allocated, freed, trimmed, again = map(int, result.stdout.split())
    assert freed - trimmed >= allocated * 3 // 4, (allocated, freed, trimmed)
    assert again <= trimmed + allocated // 8
