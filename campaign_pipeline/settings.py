"""Constants only: the CINNOX API contract as we read it, and pipeline defaults.

Several API names are assumptions (the vendor documents the endpoints, not every field and paging
rule); they live here, in one place, so that a correction is a one-line change.
"""

from __future__ import annotations

import os

# --- CINNOX API paths ------------------------------------------------------------------------
SUMMARY_PATH = "/v1/api/apps/{app_id}/data/sent-campaigns-summary"
DETAIL_PATH = "/v1/api/apps/{app_id}/data/sent-campaigns-detail"

# --- Query parameter names ([ASSUMED] apart from historyID) ----------------------------------
PARAM_START_AT = "startAt"
PARAM_END_AT = "endAt"
PARAM_OFFSET = "offset"
PARAM_LIMIT = "limit"
PARAM_HISTORY_ID = "historyID"

# --- Envelope ---------------------------------------------------------------------------------
ENVELOPE_CODE = "code"
ENVELOPE_RESULT = "result"
ENVELOPE_MESSAGE = "message"
CODE_OK = 0

# --- CINNOX error codes -----------------------------------------------------------------------
CODE_BAD_PARAMETERS = 6451000
CODE_METHOD_NOT_FOUND = 6450001
CODE_BAD_RESPONSE = 6451001
CODE_TOO_MANY_REQUESTS = 6451010
RETRIABLE_BODY_CODES = frozenset({CODE_BAD_RESPONSE, CODE_TOO_MANY_REQUESTS})

# --- Paging and limits ------------------------------------------------------------------------
PAGE_SIZE = 500  # documented maximum
MAX_PAGES_PER_LISTING = 100_000  # guard against an endless paging loop
DOCUMENTED_RATE_LIMIT_PER_MIN = 500
DEFAULT_RATE_LIMIT_PER_MIN = 480  # 96% of the documented 500/min: a little headroom, no idle budget

# --- HTTP defaults ----------------------------------------------------------------------------
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
# One attempt's total deadline (connect, headers, whole body) defaults to connect + read timeout, so the
# documented worst-case bound of a call keeps its value and now holds against a server trickling bytes.
# A body above this many MB (2**20 bytes) is refused while it is read.
DEFAULT_MAX_RESPONSE_MB = 50.0
# Fetch threads also parse their pages, so beyond the machine's cores they only add contention
# and memory (each holds an open campaign): measured on 2 cores against a fast API, 2 threads
# were as fast as 4 and faster than 8. One thread per usable core, 2 to 8. Raise it when the
# API's latency is what limits (each thread must get a page in 60 * threads / 480 s to keep the
# default 480/min busy).
DEFAULT_FETCH_WORKERS = min(8, max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 2))

# A shorter App Token is refused: it could not be told apart from ordinary text when redacting.
MIN_TOKEN_LENGTH = 8

# --- Channels ---------------------------------------------------------------------------------
CHANNEL_SMS = "SMS"
CHANNEL_WHATSAPP = "WhatsApp"
CHANNELS = (CHANNEL_SMS, CHANNEL_WHATSAPP)

SMS_STATUSES = ("Submitted", "Delivered", "Undelivered", "Pending", "Failed")
SMS_CARRIER_STATUSES = ("Queued", "Delivered", "Undelivered")
WHATSAPP_STATUSES = ("Delivered", "Read", "Pending", "Failed")

# --- Lake layout ------------------------------------------------------------------------------
LAKE_DIRNAME = "lake"
RAW_DIRNAME = "raw"
WAREHOUSE_FILENAME = "warehouse.duckdb"
SOURCE_MARKER = ".campaign_source"  # written by a data dir's first run (config.prepare_data_dir)
DEFAULT_DATA_DIR = "./data"

# --- Partitions and checks --------------------------------------------------------------------
DEFAULT_PARTITION_START = "2024-01-01"
DEFAULT_PARTITION_TZ = "UTC"
DEFAULT_LOOKBACK_DAYS = 3
DEFAULT_FRESHNESS_HOURS = 30.0  # the daily run starts 00:15 and a 10x week takes minutes: 6 h of slack
DEFAULT_REJECTED_THRESHOLD = 0.01  # rejected-records share of a day above which its check fails

# --- Embedded simulator (CAMPAIGN_SOURCE=simulator) ------------------------------------
SIMULATOR_DATA_SUBDIR = "simulator"  # default data dir: <DEFAULT_DATA_DIR>/simulator
DEFAULT_SIM_SEED = 7  # app number i (0-based) of CAMPAIGN_APPS gets seed + i
DEFAULT_SIM_CAMPAIGNS_PER_DAY = 8
DEFAULT_SIM_RECIPIENTS_PER_CAMPAIGN = 150
SIM_DEFAULT_APP_ID = "sim-app"  # the default app's App ID; app KEY gets "sim-KEY"
