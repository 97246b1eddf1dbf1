"""Profile ``campaign-pipeline backfill`` with cProfile in every thread, not only the main one.

``python -m cProfile -m campaign_pipeline.cli backfill ...`` profiles the main thread only, and
the backfill fetches detail pages in a thread pool, so the HTTP, JSON and landing work would be
missing. This wrapper runs :func:`campaign_pipeline.cli.main` with:

* one ``cProfile.Profile`` on the main thread (the same as ``python -m cProfile``), dumped to
  ``<out>.main.prof``;
* one more per thread started through ``threading`` while it runs (installed with
  ``threading.setprofile``), merged with the main one into ``<out>.all.prof``. In the merged file
  times of concurrent threads add up, so cumulative times can exceed the wall time.

    python benchmarks/profile_backfill.py --out .work/prof -- backfill --start 2024-05-13 --end 2024-05-19

Configuration comes from the environment, as for ``campaign-pipeline``. Exits with the CLI's code.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import threading
import time
from typing import Any


class _Snapshot:
    """Adapter handing a profiler's stats to :class:`pstats.Stats` without touching its thread state."""

    def __init__(self, profiler: cProfile.Profile) -> None:
        profiler.snapshot_stats()
        self.stats = profiler.stats

    def create_stats(self) -> None:
        """Nothing to do: the stats were taken in ``__init__``."""


def run_profiled(cli_args: list[str], out: str) -> int:
    """Run the CLI with ``cli_args`` under per-thread cProfile; write ``<out>.main.prof`` and ``<out>.all.prof``."""
    from campaign_pipeline import cli

    thread_profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profiler(frame: Any, event: str, arg: Any) -> None:
        """First profile event of a new thread: replace this hook by a cProfile profiler."""
        profiler = cProfile.Profile()
        with lock:
            thread_profilers.append(profiler)
        profiler.enable()

    main_profiler = cProfile.Profile()
    threading.setprofile(start_thread_profiler)
    started = time.perf_counter()
    main_profiler.enable()
    try:
        code = cli.main(cli_args)
    finally:
        main_profiler.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    main_profiler.dump_stats(f"{out}.main.prof")
    merged = pstats.Stats(main_profiler)
    with lock:
        profilers = list(thread_profilers)
    for profiler in profilers:
        merged.add(pstats.Stats(_Snapshot(profiler)))
    merged.dump_stats(f"{out}.all.prof")
    print(
        f"profiled {elapsed:.1f}s, main thread + {len(profilers)} other threads -> {out}.main.prof, {out}.all.prof",
        file=sys.stderr,
    )
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse ``--out`` and hand the remaining arguments (after ``--``) to the CLI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path prefix of the two .prof files")
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then the campaign-pipeline arguments")
    args = parser.parse_args(argv)
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    return run_profiled(cli_args, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
