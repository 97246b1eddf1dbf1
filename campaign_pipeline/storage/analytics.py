"""The analysts' database: ``<data_dir>/analytics.duckdb``, readable at any moment.

The warehouse (``warehouse.duckdb``) is the writer's: while a backfill loads a day, DuckDB's file
lock refuses every other process, so a plain ``duckdb -readonly`` open fails. Analysts open this
small file instead. It holds no rows, only views with the warehouse's table names and columns over
the published Parquet lake (``<lake>/<table>/date=*/part-*.parquet``), the same metric macros and
delivery-rate views (``campaign_pipeline/storage/sql``) and the data dictionary as ``COMMENT``s:

- **Never locked by a writer.** It is rebuilt only when what it describes changes (the code's
  definitions, the lake's location, a table's first file), under a hidden temporary name renamed
  into place; nobody ever opens it read-write in place. So any number of read-only opens succeed,
  during a backfill too, with no retry.
- **Only published days.** A day's Parquet files are moved into the lake only after the day passed
  its blocking checks and was committed to the warehouse (write-audit-publish), each file by an
  atomic rename; a version that failed its checks goes to ``lake/_quarantine``, outside the globs.
- **Opens in the analysts' own DuckDB.** It is written by the project's DuckDB (1.5.5), so the
  DuckDB CLI from PyPI (``duckdb-cli`` 1.5.x), DBeaver's DuckDB driver of the same line and
  Python's ``duckdb`` read it.

Read-only commands (``report``, the notebook, ``make sql``) find it with :func:`locate_data_dir`
and need no API credentials. A lake on S3 (``CAMPAIGN_LAKE_URI=s3://...``) gets no analysts'
database: they read the warehouse (:func:`connect` falls back to it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import duckdb

from campaign_pipeline import settings
from campaign_pipeline.errors import WarehouseError, WarehouseUnusableError
from campaign_pipeline.model import dictionary, schemas
from campaign_pipeline.storage.locations import (
    ANALYTICS_FILENAME,
    announce_data_dir,
    locate_data_dir,
    resolve,
)

log = logging.getLogger(__name__)

_META_TABLE = "_campaign_pipeline_meta"
_BUILD_FORMAT = "1"  # bump when the layout of the file changes


# ---------------------------------------------------------------------------------------------
# Building it (the writer's side)
# ---------------------------------------------------------------------------------------------


def table_glob(lake_root: str, table: str) -> str:
    """Every published file of ``table``: one per day and app (``<table>/date=<day>/part-<app>.parquet``);
    glob characters in ``lake_root`` match only themselves."""
    escaped = "".join(f"[{char}]" if char in "[*?" else char for char in lake_root)
    return f"{escaped}/{table}/date=*/part-*.parquet"


def _table_view(lake_root: str, spec: schemas.TableSpec, has_files: bool) -> str:
    columns = [(field.name, schemas.duckdb_type(field.type)) for field in spec.schema]
    if has_files:
        select = ", ".join(f'CAST("{name}" AS {kind}) AS "{name}"' for name, kind in columns)
        from campaign_pipeline.storage.warehouse import sql_literal

        source = f"read_parquet({sql_literal(table_glob(lake_root, spec.name))}, hive_partitioning = false)"
        return f'CREATE OR REPLACE VIEW "{spec.name}" AS SELECT {select} FROM {source}'
    select = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in columns)
    return f'CREATE OR REPLACE VIEW "{spec.name}" AS SELECT {select} WHERE false'


def _tables_with_files(lake_root: Path) -> list[str]:
    return [name for name in schemas.TABLES
            if next((lake_root / name).glob("date=*/part-*.parquet"), None) is not None]


def _stamp(lake_root: Path, with_files: list[str]) -> str:
    from campaign_pipeline.storage.warehouse import definitions_digest

    text = "\n".join([_BUILD_FORMAT, definitions_digest(), str(lake_root), *with_files])
    return hashlib.sha256(text.encode()).hexdigest()


def _current_stamp(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        row = con.execute(f'SELECT value FROM "{_META_TABLE}" WHERE key = ?', ["stamp"]).fetchone()
        return row[0] if row else None
    except duckdb.Error:
        return None
    finally:
        con.close()


def refresh(data_dir: Path, lake_root: str) -> Path | None:
    """Make ``<data_dir>/analytics.duckdb`` describe the lake at ``lake_root``; rebuild it only if
    it is missing or out of date (one builder at a time, under ``.analytics.duckdb.lock``). Returns
    its path, or ``None`` for a lake on object storage or a lake with nothing published yet."""
    if "://" in lake_root:
        return None
    from filelock import FileLock

    lake = Path(lake_root).absolute()
    path = data_dir / ANALYTICS_FILENAME
    with_files = _tables_with_files(lake)
    stamp = _stamp(lake, with_files)
    if _BUILT.get(path) == stamp and path.is_file():  # this process built or saw it: no need to open it
        return path
    if not with_files and not path.is_file():
        return None  # nothing published yet: built when the first day is
    with FileLock(str(data_dir / f".{ANALYTICS_FILENAME}.lock")):  # one builder at a time, newest state wins
        with_files = _tables_with_files(lake)
        stamp = _stamp(lake, with_files)
        if _current_stamp(path) != stamp:
            _build(path, lake, with_files, stamp)
    _BUILT[path] = stamp
    return path


_BUILT: dict[Path, str] = {}  # analysts' database -> the stamp this process last built or checked


def _build(path: Path, lake: Path, with_files: list[str], stamp: str) -> None:
    from campaign_pipeline.storage.lake import pid_alive
    from campaign_pipeline.storage.warehouse import view_statements

    prefix = f".{path.name}.tmp-"
    for stale in path.parent.glob(prefix + "*"):  # left by a build that was killed
        pid = stale.name.removeprefix(prefix)
        if not pid.isdigit() or not pid_alive(int(pid)) or int(pid) == os.getpid():
            stale.unlink(missing_ok=True)
    temp = path.with_name(f"{prefix}{os.getpid()}")
    con = duckdb.connect(str(temp), config={"autoinstall_known_extensions": False,
                                            "autoload_known_extensions": False})
    try:
        con.execute("BEGIN TRANSACTION")  # one commit for the ~200 statements: half the build time
        for spec in schemas.TABLES.values():
            con.execute(_table_view(str(lake), spec, spec.name in with_files))
        for _name, statement in view_statements():
            con.execute(statement)
        dictionary.apply_comments(con)
        con.execute(f'CREATE TABLE "{_META_TABLE}" (key VARCHAR PRIMARY KEY, value VARCHAR)')
        con.execute(f'INSERT INTO "{_META_TABLE}" VALUES (?, ?), (?, ?)',
                    ["stamp", stamp, "lake", str(lake)])
        con.execute("COMMIT")
    except BaseException:
        con.close()
        temp.unlink(missing_ok=True)
        raise
    con.close()  # checkpoints: the file is complete, no WAL
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    log.debug("analysts' database rebuilt: %s", path)


# ---------------------------------------------------------------------------------------------
# Reading it
# ---------------------------------------------------------------------------------------------


def ducklake_from_env(data_dir: Path, env: Mapping[str, str] | None = None):
    """The DuckLake warehouse ``CAMPAIGN_WAREHOUSE_URI`` names (its data under the lake of
    ``data_dir`` or ``CAMPAIGN_LAKE_URI``), or None for the DuckDB file. Reads no API settings."""
    from campaign_pipeline.config import SETTINGS
    from campaign_pipeline.errors import ConfigError
    from campaign_pipeline.storage.warehouse import DuckLakeWarehouse, s3_settings

    env = os.environ if env is None else env
    values = {}
    for setting in SETTINGS:
        if setting.name in ("CAMPAIGN_WAREHOUSE_URI", "CAMPAIGN_LAKE_URI", "AWS_ENDPOINT_URL", "AWS_REGION",
                            "AWS_DEFAULT_REGION"):
            text = (env.get(setting.name) or "").strip()
            try:
                values[setting.name] = setting.parser(text, setting.name) if text else None
            except ValueError as error:
                raise ConfigError(f"{setting.name}: {error}") from None
    if not values["CAMPAIGN_WAREHOUSE_URI"]:
        return None
    lake = values["CAMPAIGN_LAKE_URI"] or str(data_dir / settings.LAKE_DIRNAME)
    region = values["AWS_REGION"] or values["AWS_DEFAULT_REGION"]
    return DuckLakeWarehouse(values["CAMPAIGN_WAREHOUSE_URI"], f"{lake}/ducklake/",
                             s3_settings(values["AWS_ENDPOINT_URL"], region, env))


def connect(data_dir: str | Path | None = None, *, announce: bool = True,
            why: str | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection on what analysts read, never needing API credentials:

    - with ``CAMPAIGN_WAREHOUSE_URI`` set, the DuckLake (committed snapshots; never waits);
    - else the analysts' database of ``data_dir`` (default: located with :func:`locate_data_dir`),
      or, when the data dir has none (a lake on S3, data written by an older version), its
      warehouse read-only, waiting while a writer holds it.

    With ``announce``, one line on stderr says what is read and why (``why`` names the caller's
    reason for an explicit ``data_dir``, e.g. ``--data-dir``).
    """
    from campaign_pipeline.storage.warehouse import redact_uri

    explicit = resolve(data_dir) if data_dir is not None else None
    if (os.environ.get("CAMPAIGN_WAREHOUSE_URI") or "").strip():
        base = explicit or resolve(os.environ.get("CAMPAIGN_DATA_DIR", "").strip() or settings.DEFAULT_DATA_DIR)
        ducklake = ducklake_from_env(base)
        if announce:
            print(f"reading the DuckLake warehouse {redact_uri(ducklake.uri)} (CAMPAIGN_WAREHOUSE_URI)",
                  file=sys.stderr)
        return ducklake.connect(read_only=True)
    if explicit is None:
        data_dir = announce_data_dir() if announce else locate_data_dir()[0]
    else:
        data_dir = explicit
        if announce:
            print(f"reading {data_dir} ({why or 'as asked'})", file=sys.stderr)
    path = data_dir / ANALYTICS_FILENAME
    if not path.is_file():
        warehouse = data_dir / settings.WAREHOUSE_FILENAME
        if not warehouse.is_file():
            raise WarehouseError(f"no analysts' database or warehouse in {data_dir}; "
                                 "run `make demo` or a backfill first")
        from campaign_pipeline.storage.warehouse import (
            DEFAULT_OPEN_TIMEOUT_S,
            connect_with_retry,
            require_duckdb_file,
        )

        require_duckdb_file(warehouse)
        con = connect_with_retry(str(warehouse), read_only=True, timeout_s=DEFAULT_OPEN_TIMEOUT_S)
    else:
        from campaign_pipeline.storage.warehouse import require_duckdb_file

        require_duckdb_file(path)
        try:
            con = duckdb.connect(str(path), read_only=True)
            row = con.execute(f'SELECT value FROM "{_META_TABLE}" WHERE key = ?', ["lake"]).fetchone()
        except duckdb.Error as error:
            raise WarehouseUnusableError(
                f"DuckDB cannot open the analysts' database {path}: {' '.join(str(error).split())}; "
                "any backfill rebuilds it (it holds no data of its own)") from None
        described = Path(row[0]) if row else None
        if described is not None and not described.is_dir() and (data_dir / settings.LAKE_DIRNAME).is_dir():
            con.close()  # a data dir moved or copied elsewhere: its views point at the old lake
            raise WarehouseError(f"the analysts' database {path} describes the lake at {described}, which is gone "
                                 "(was the data dir moved?); any backfill, e.g. with --resplit, rebuilds it")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    return con
