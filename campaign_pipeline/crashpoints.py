"""Deterministic crash injection for the reliability tests (a no-op unless configured).

``CAMPAIGN_CRASH_AT=<point>:<n>`` makes this process SIGKILL itself the ``n``-th time it reaches
``<point>``; nothing is flushed or cleaned up, exactly like a machine losing power mid-step.
Points: ``landing_page`` (a page appended to the temporary landing file), ``file_before_rename``
(a complete temporary file not yet renamed into place) and ``warehouse_before_commit`` (a day's
rows deleted and re-inserted, the transaction not yet committed).
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = ("landing_page", "file_before_rename", "warehouse_before_commit")
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL this process if ``CAMPAIGN_CRASH_AT`` names ``name`` and its count is reached."""
    spec = os.environ.get("CAMPAIGN_CRASH_AT")
    if not spec or not spec.startswith(name + ":"):
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= int(spec.rsplit(":", 1)[1]):
            os.kill(os.getpid(), signal.SIGKILL)
