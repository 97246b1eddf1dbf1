"""A deterministic, loopback simulation of the CINNOX sent-campaigns Open API.

An independent implementation of ``shared/reference/cinnox-api.md`` (it imports nothing from the
rest of ``campaign_pipeline``), so that it can catch client bugs. It is the default data source for
the demo, the Dagster UI, the tests and the benchmarks.

* :class:`SimulatorConfig` - seed, volumes, the simulated clock, odd records, faults, rate limit,
  and the misbehaving-server modes (page caps, an empty summary, truncated details, BOM bodies,
  poisoned values, a duplicated summary row, naive dates, an odd channel, dripped and oversized
  detail bodies; see ``data.py``).
* :class:`CinnoxSimulator` - the data model: API-shaped records, response bytes, pre-rendering and
  :meth:`CinnoxSimulator.ground_truth` (canonical values a correct pipeline must end up with).
* :class:`SimulatorServer` - a real HTTP/1.1 server on 127.0.0.1 serving both endpoints.
* ``python -m campaign_pipeline.simulator --port N`` (:func:`main`) - the standalone command.

Example::

    with SimulatorServer(SimulatorConfig(now=datetime(2024, 5, 20, tzinfo=UTC))) as server:
        client = MyClient(server.base_url, server.app_id, server.token)
        truth = server.simulator.ground_truth(*day_bounds_utc(date(2024, 5, 1)))
"""

from .data import (
    ALL_FAULT_KINDS,
    HOSTILE_REASON_KINDS,
    ODD_RECORD_VARIANTS,
    PAGE_LIMIT_MAX,
    REJECT_REASON_KINDS,
    SMS,
    SMS_CARRIER_STATUS_BY_STATUS,
    SMS_STATUSES,
    UNKNOWN_STATUS,
    WHATSAPP,
    WHATSAPP_FAILED_REASONS,
    WHATSAPP_STATUSES,
    CinnoxSimulator,
    GroundTruth,
    SimulatorConfig,
    count_sms_segments,
    day_bounds_utc,
    format_timestamp,
    is_gsm7_text,
    parse_rfc3339,
)
from .server import (
    CODE_APP_NOT_FOUND,
    CODE_BAD_PARAMETERS,
    CODE_BAD_RESPONSE,
    CODE_METHOD_NOT_FOUND,
    CODE_TOO_MANY_REQUESTS,
    CODE_UNAUTHORIZED,
    SimulatorServer,
    serve_forever,
)

__all__ = [
    "ALL_FAULT_KINDS",
    "CODE_APP_NOT_FOUND",
    "CODE_BAD_PARAMETERS",
    "CODE_BAD_RESPONSE",
    "CODE_METHOD_NOT_FOUND",
    "CODE_TOO_MANY_REQUESTS",
    "CODE_UNAUTHORIZED",
    "HOSTILE_REASON_KINDS",
    "ODD_RECORD_VARIANTS",
    "PAGE_LIMIT_MAX",
    "REJECT_REASON_KINDS",
    "SMS",
    "SMS_CARRIER_STATUS_BY_STATUS",
    "SMS_STATUSES",
    "UNKNOWN_STATUS",
    "WHATSAPP",
    "WHATSAPP_FAILED_REASONS",
    "WHATSAPP_STATUSES",
    "CinnoxSimulator",
    "GroundTruth",
    "SimulatorConfig",
    "SimulatorServer",
    "count_sms_segments",
    "day_bounds_utc",
    "format_timestamp",
    "is_gsm7_text",
    "main",
    "parse_rfc3339",
    "serve_forever",
]


def __getattr__(name: str) -> object:
    """Load :func:`main` lazily so ``python -m campaign_pipeline.simulator`` runs ``__main__`` only once."""
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
