"""Where the user's data is: the project root, and the data dir read-only commands should read.

Relative paths resolve against the repository root, not the working directory, so ``data/demo``
means the same from ``notebooks/`` (where Jupyter starts kernels) as from the root. Every run
records its data dir (``data/.last-data-dir``); the read-only commands (``report``, the notebook,
``make sql``, ``make dev``) read that one unless ``CAMPAIGN_DATA_DIR`` says otherwise, and never
need API credentials.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from campaign_pipeline import settings
from campaign_pipeline.errors import ConfigError, WarehouseError

log = logging.getLogger(__name__)

ANALYTICS_FILENAME = "analytics.duckdb"
LAST_RUN_FILENAME = ".last-data-dir"


# ---------------------------------------------------------------------------------------------


def project_root(start: Path | None = None) -> Path:
    """The repository the user works in: the nearest directory at or above ``start`` (the working
    directory) holding ``pyproject.toml`` and ``campaign_pipeline/``; else the checkout the package
    was installed from (an editable install); else the working directory."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        if (directory / "pyproject.toml").is_file() and (directory / "campaign_pipeline").is_dir():
            return directory
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return here


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """``path`` with ``~`` expanded and, when relative, taken against the project root (not the
    working directory), so ``data/demo`` means the same from ``notebooks/`` as from the root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (root or project_root()) / path


def last_run_file(env: Mapping[str, str] | None = None, root: Path | None = None) -> Path:
    """Where every run records its data dir for the read-only commands:
    ``CAMPAIGN_LAST_RUN_FILE``, default ``data/.last-data-dir`` under the project root."""
    env = os.environ if env is None else env
    explicit = (env.get("CAMPAIGN_LAST_RUN_FILE") or "").strip()
    return resolve(explicit, root) if explicit else resolve(Path(settings.DEFAULT_DATA_DIR) / LAST_RUN_FILENAME, root)


def record_last_run(data_dir: Path, env: Mapping[str, str] | None = None) -> None:
    """Record ``data_dir`` as the one the last run used (atomically; best effort: a read-only
    project directory only costs the read-only commands their default)."""
    target = last_run_file(env)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        temp.write_text(str(data_dir.absolute()) + "\n")
        os.replace(temp, target)
    except OSError as error:
        log.debug("could not record the last data dir in %s: %s", target, error.strerror)


def _has_data(data_dir: Path) -> bool:
    """True for a data dir a run has used (its source marker; a DuckLake run writes no database file)."""
    return any((data_dir / name).is_file()
               for name in (ANALYTICS_FILENAME, settings.WAREHOUSE_FILENAME, settings.SOURCE_MARKER))


def locate_data_dir(env: Mapping[str, str] | None = None, root: Path | None = None) -> tuple[Path, str]:
    """The data dir a read-only command should read, and why (for one line on stderr).

    An explicit ``CAMPAIGN_DATA_DIR`` wins; otherwise the data dir the last run used (if it still
    holds data); otherwise the one data dir under ``data/`` that holds data (the demo's, after
    ``make demo``). Several candidates and no record of the last run is a :class:`ConfigError`
    naming them; no data at all is a :class:`WarehouseError`. Never reads API settings.
    """
    env = os.environ if env is None else env
    explicit = (env.get("CAMPAIGN_DATA_DIR") or "").strip()
    if explicit:
        return resolve(explicit, root), "CAMPAIGN_DATA_DIR"
    pointer = last_run_file(env, root)
    try:
        recorded = Path(pointer.read_text().strip())
    except OSError:
        recorded = None
    if recorded is not None and _has_data(recorded):
        return recorded, "the data dir the last run used"
    base = resolve(settings.DEFAULT_DATA_DIR, root)
    candidates = [d for d in (base / "demo", base / settings.SIMULATOR_DATA_SUBDIR, base) if _has_data(d)]
    if len(candidates) == 1:
        return candidates[0], "the only data dir with data"
    if candidates:
        names = ", ".join(str(d) for d in candidates)
        raise ConfigError(f"several data dirs hold data ({names}); set CAMPAIGN_DATA_DIR to the one to read")
    raise WarehouseError(f"no data yet under {base}: run `make demo` or a backfill first, or set CAMPAIGN_DATA_DIR")


def announce_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """:func:`locate_data_dir`, saying on stderr which data dir is read and why."""
    data_dir, why = locate_data_dir(env)
    print(f"reading {data_dir} ({why}; set CAMPAIGN_DATA_DIR to choose another)", file=sys.stderr)
    return data_dir
