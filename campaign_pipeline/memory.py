"""Keep the C allocator from hoarding memory a backfill has freed.

A backfill allocates and frees page bodies, Arrow buffers and DuckDB vectors from several threads.
glibc's malloc gives each thread its own arena (up to 8 per core) and keeps freed memory inside
them, so the resident size grows with the number of threads and the size of the days, not with
what is live. Two arenas and a trim after each landed and each published day keep the peak flat
(measured in ``benchmarks/RESULTS.md``). Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

#: Arenas glibc may create for the process (its default is 8 per core).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_lock = threading.Lock()
_state: dict[str, object] = {}


def _glibc():
    """The C library if it is glibc (it has ``malloc_trim``), else ``None``."""
    if "libc" not in _state:
        libc = None
        try:
            candidate = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(candidate, "malloc_trim") and hasattr(candidate, "mallopt"):
                libc = candidate
        except OSError:
            pass
        _state["libc"] = libc
    return _state["libc"]


def limit_allocator_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas for this process (once; call before starting worker threads).
    An explicit ``MALLOC_ARENA_MAX`` in the environment has already set the cap and is kept."""
    with _lock:
        if _state.get("arenas_limited") or os.environ.get("MALLOC_ARENA_MAX"):
            return
        libc = _glibc()
        if libc is not None:
            libc.mallopt(_M_ARENA_MAX, arenas)
        _state["arenas_limited"] = True


def release_free_memory() -> None:
    """Return the allocator's free pages to the operating system (``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
