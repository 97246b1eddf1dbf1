"""The CINNOX API layer: the HTTP client (paging and its stop rule, pacing, the one retry loop,
response decoding). It imports only ``settings`` and ``errors``; never ``dagster``, and nothing
from ``model``, ``storage``, ``engine`` or ``defs``."""
