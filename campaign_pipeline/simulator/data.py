"""Deterministic synthetic CINNOX sent-campaign data, its API rendering and its ground truth (no HTTP).

Everything here is a pure function of :class:`SimulatorConfig` and the instant ``now``:

* campaigns are generated per UTC day from ``(seed, day)``;
* each recipient message gets a fixed status *trajectory* (a list of ``(time, status)`` transitions that
  starts at the campaign's sent time); the status served at ``now`` is the last transition at or
  before ``now``, so a day's numbers keep moving for about three days;
* :meth:`CinnoxSimulator.summary_records` / :meth:`CinnoxSimulator.detail_records` return records in
  the API's JSON shape, and :meth:`CinnoxSimulator.render_summary_page` /
  :meth:`CinnoxSimulator.render_detail_page` return the exact response bytes the HTTP server sends;
* :meth:`CinnoxSimulator.ground_truth` returns the same data with canonical snake_case keys and
  normalized Python values, computed from the internal model (not by parsing the JSON), so a
  pipeline's output can be compared with it.

Misbehaving-server modes (all off by default; the data modes are applied here, the transport
modes ``summary_page_cap``, ``detail_page_cap``, ``bom_bodies``, ``drip_bytes_per_s`` and
``oversized_mb`` by ``server.py``; they change how bytes are served, never the data). Each data
mode picks its campaign(s) per UTC day deterministically, preferring campaigns not sent exactly
at midnight and a different campaign per mode while the day has enough of them:

* ``empty_summary``: the summary listing is empty for every window (a bad night). The ground
  truth keeps what really exists and adds one ``empty_summary`` anomaly.
* ``truncate_details``: one campaign a day serves only the first half of its detail rows (then
  empty pages), fewer than its summary's ``totalRecipients``. Truth: messages unchanged (the
  real data), one ``truncate_details`` anomaly with ``total_recipients`` and ``rows_served``.
* ``poison_values``: one SMS campaign a day has a detail row with ``numSMS`` 3000000000 and
  another whose ``content`` ends in a lone surrogate escape ``\\ud83d`` (escape text in the
  body, which orjson refuses); one WhatsApp campaign a day (SMS if there is none) has a summary
  ``replied`` (``delivered`` for SMS) of 10**20, beyond 64 bits. Truth: the poisoned rows are
  out of ``messages``, the poisoned summary's campaign is out of ``campaigns``; each is in
  ``rejected`` (``endpoint``, ``reason_kind`` from :data:`HOSTILE_REASON_KINDS`) and in
  ``anomalies``.
* ``duplicate_summary``: one campaign a day is listed twice in the summary, first a stale copy
  (``campaignName`` "STALE", ``totalRecipients`` 1, other counts 0 but ``pending`` 1), then the
  real one. Truth: campaigns unchanged (the real, later copy wins), one anomaly.
* ``naive_dates``: one campaign a day has a summary ``date`` without a UTC offset
  (``2024-05-01T20:00:00.000``). ``odd_channel``: one campaign a day (WhatsApp if any) has the
  summary ``channel`` "WhatsApp Business". Truth: the campaign is out of ``campaigns`` and in
  ``rejected`` (``naive_date`` / ``unknown_channel``); its detail rows (unchanged) stay in
  ``messages``; one anomaly each.

:meth:`CinnoxSimulator.summary_records` and :meth:`CinnoxSimulator.detail_records` return what the
API serves in every mode (stale copies, truncation and poison included; ``10**20`` as an int, the
lone surrogate as a ``str`` holding ``"\\ud83d"``).

This module imports nothing from the rest of ``campaign_pipeline``: it is an independent reading of
``shared/reference/cinnox-api.md`` so that it can catch client bugs.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

__all__ = [
    "ALL_FAULT_KINDS",
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
    "count_sms_segments",
    "day_bounds_utc",
    "format_timestamp",
    "is_gsm7_text",
    "parse_rfc3339",
]

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

ALL_FAULT_KINDS: tuple[str, ...] = (
    "429_retry_after",
    "429_no_retry_after",
    "500",
    "502",
    "503",
    "reset",
    "truncated",
    "body_code_6451010",
    "body_code_6451001",
    "slow",
)
"""Every fault the HTTP server can inject; see ``server.py`` for what each one does."""

SMS = "SMS"
WHATSAPP = "WhatsApp"

SMS_STATUSES: tuple[str, ...] = ("Submitted", "Delivered", "Undelivered", "Pending", "Failed")
WHATSAPP_STATUSES: tuple[str, ...] = ("Delivered", "Read", "Pending", "Failed")
UNKNOWN_STATUS = "Expired"
"""A status outside the documented vocabularies; only served with ``odd_records=True``."""

SMS_CARRIER_STATUS_BY_STATUS: dict[str, str] = {
    "Delivered": "Delivered",
    "Undelivered": "Undelivered",
    "Submitted": "Queued",
    "Pending": "",
    "Failed": "",
    UNKNOWN_STATUS: "",
}
"""``carrierNetworkStatus`` served for each SMS ``status`` ("" = the carrier never received it)."""

WHATSAPP_FAILED_REASONS: tuple[str, ...] = (
    "Error Code: 7061120 - 360Dialog bad request",
    "Error Code: 7061123 360dialog unauthorized",
    "Error Code: 7061124 - 360dialog forbidden",
    "Error Code: 7061125 - 360dialog not found",
    "Error Code: 3120410 - 360dialog whatsapp 24hr window error",
    "Error Code: 7061121 - 360dialog internal server error",
    "Error Code: 7061122 - 360dialog server timeout",
    "Error Code: 7061126 - 360dialog unknown error",
)
"""WhatsApp ``failedReason`` values, spelled exactly as on the vendor page (7061123 has no dash there)."""

REJECT_REASON_KINDS: tuple[str, ...] = ("missing_recipient", "missing_id", "bad_date")
"""Kinds of untypeable detail records served with ``odd_records=True``."""

HOSTILE_REASON_KINDS: tuple[str, ...] = (
    "num_sms_out_of_range",
    "invalid_unicode",
    "count_out_of_range",
    "naive_date",
    "unknown_channel",
)
"""``reason_kind`` of the ground truth's rejected records served by ``poison_values``,
``naive_dates`` and ``odd_channel``."""

POISON_NUM_SMS = 3_000_000_000
"""``numSMS`` of the ``poison_values`` detail row (beyond a 32-bit integer)."""
POISON_COUNT = 10**20
"""Summary count served by ``poison_values`` (beyond 64 bits)."""
LONE_SURROGATE = "\ud83d"
"""A high surrogate without its low half: served as the JSON escape text ``\\ud83d``."""
ODD_CHANNEL = "WhatsApp Business"
"""The summary ``channel`` served by ``odd_channel``."""
STALE_CAMPAIGN_NAME = "STALE"
"""``campaignName`` of the stale copy served by ``duplicate_summary``."""

# Placeholders rendered by orjson and replaced in the response bytes: orjson can write neither a
# lone surrogate nor an integer beyond 64 bits.
_MARK_COUNT = "@@sim-poison-count@@"
_MARK_SURROGATE = "@@sim-lone-surrogate@@"
_MARK_COUNT_JSON = b'"' + _MARK_COUNT.encode() + b'"'

ODD_RECORD_VARIANTS: tuple[str, ...] = (
    "recipient_json_number",
    "recipient_without_plus",
    "num_sms_string",
    "capitalized_last_updated_key",
    "timestamp_without_millis",
    "timestamp_with_offset",
    "other_channel_fields_empty",
    "other_channel_fields_null",
    "status_lower_case",
    "status_upper_case",
    "unknown_extra_fields",
    "unknown_status_expired",
    "duplicate_recipient_older",
    "bad_record",
)
"""Names of the encoding variants ``odd_records=True`` mixes into every campaign (documentation)."""

PAGE_LIMIT_MAX = 500
"""The documented maximum ``limit`` of one page."""

_DAY_MS = 86_400_000
_SETTLE_MS = 3 * _DAY_MS  # every trajectory is final at most ~3 days after the sent time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_DAY = date(1970, 1, 2)
_MAX_DAY = date(2105, 12, 31)  # campaign ids carry the sent time as 32-bit seconds
_OFFSET_MINUTES = 480  # "+08:00", used by the timestamp_with_offset variant

# Flag bits of one message (the odd-record variants that apply to its rendering).
_F_REC_NUMBER = 1 << 0
_F_REC_NOPLUS = 1 << 1
_F_NUMSMS_STR = 1 << 2
_F_KEY_CAPITAL = 1 << 3
_F_TS_NO_MS = 1 << 4
_F_TS_OFFSET = 1 << 5
_F_OTHER_EMPTY = 1 << 6
_F_OTHER_NULL = 1 << 7
_F_CASE_LOWER = 1 << 8
_F_CASE_UPPER = 1 << 9
_F_EXTRA = 1 << 10
_F_EXPIRED = 1 << 11
_F_DUPLICATE = 1 << 12
_CONFLICTS = (
    _F_REC_NUMBER | _F_REC_NOPLUS,
    _F_OTHER_EMPTY | _F_OTHER_NULL,
    _F_CASE_LOWER | _F_CASE_UPPER | _F_EXPIRED,
)
_SMS_FLAGS = (
    _F_REC_NUMBER,
    _F_REC_NOPLUS,
    _F_NUMSMS_STR,
    _F_KEY_CAPITAL,
    _F_TS_NO_MS,
    _F_TS_OFFSET,
    _F_OTHER_EMPTY,
    _F_OTHER_NULL,
    _F_CASE_LOWER,
    _F_CASE_UPPER,
    _F_EXTRA,
    _F_EXPIRED,
    _F_DUPLICATE,
)
_WHATSAPP_FLAGS = tuple(f for f in _SMS_FLAGS if f != _F_NUMSMS_STR)

# --------------------------------------------------------------------------------------------
# Synthetic vocabularies
# --------------------------------------------------------------------------------------------

# (ISO alpha-2, weight, E.164 prefix choices, digits after the prefix)
_COUNTRIES: tuple[tuple[str, float, tuple[str, ...], int], ...] = (
    ("HK", 0.32, ("+8525", "+8526", "+8529"), 7),
    ("SG", 0.15, ("+658", "+659"), 7),
    ("US", 0.09, ("+1212", "+1310", "+1415", "+1646", "+1702", "+1917"), 7),
    ("GB", 0.08, ("+447",), 9),
    ("MY", 0.10, ("+6012", "+6013", "+6016", "+6017", "+6019"), 7),
    ("PH", 0.09, ("+639",), 9),
    ("TW", 0.10, ("+8869",), 8),
    ("AU", 0.07, ("+614",), 8),
)
_COUNTRY_CUM_WEIGHTS: tuple[float, ...] = tuple(
    sum(c[1] for c in _COUNTRIES[: i + 1]) for i in range(len(_COUNTRIES))
)

_STAFF: tuple[str, ...] = ("Alice Chan", "Ben Tan", "Carmen Lim", "David Wong", "Erin Santos", "Farid Ismail")

_SMS_SENDERS: tuple[str, ...] = (
    "+85230018888",  # virtual number
    "+85230019999",  # virtual number
    "+6531650000",  # service number
    "+18005550199",  # service number
    "ACMEBANK",  # alphanumeric sender id
    "ACMEINFO",  # alphanumeric sender id
)

# (channel phone, channel name, template source)
_WHATSAPP_CHANNELS: tuple[tuple[str, str, str], ...] = (
    ("+85264501234", "ACME Hong Kong", "360dialog"),
    ("+6588001234", "ACME Singapore", "360dialog"),
    ("+60129876543", "ACME Malaysia", "360dialog"),
)

# (campaign theme, WhatsApp template name)
_WHATSAPP_THEMES: tuple[tuple[str, str], ...] = (
    ("Order Update", "order_update_v2"),
    ("Appointment Reminder", "appointment_reminder"),
    ("Payment Due Notice", "payment_due_notice"),
    ("Seasonal Promotion", "seasonal_promo"),
    ("Welcome Onboarding", "welcome_onboarding"),
    ("Account Security Alert", "account_alert_v3"),
)

_EN_NAMES: tuple[str, ...] = (
    "Alex",
    "Priya",
    "Wei Ming",
    "Siti",
    "Jose",
    "Olivia",
    "Christopher",
    "Nurul Aisyah",
    "Tom",
    "Mei Ling",
)
_ZH_NAMES: tuple[str, ...] = ("陳先生", "李小姐", "黃先生", "張小姐", "林先生", "王太太")

# (campaign theme, SMS template id); template ids index _sms_content below.
_SMS_THEMES: tuple[tuple[str, int], ...] = (
    ("Card Activation Reminder", 0),
    ("Rewards Points Expiry", 1),
    ("Branch Hours Update", 2),
    ("Weekend Flash Sale", 3),
    ("Card Activation Reminder (ZH)", 4),
    ("Branch Hours Update (ZH)", 5),
    ("Verification Code Notice", 6),
)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _sms_content(template: int, rng: random.Random) -> str:
    """Return one personalised SMS text for ``template`` (0-3, 6 English; 4-5 Chinese)."""
    if template == 0:
        return (
            f"ACME Bank: Hi {rng.choice(_EN_NAMES)}, your card ending {rng.randrange(10000):04d} is now "
            "active. Questions? Call 2233 4455."
        )
    if template == 1:
        # Lengths straddle the 160-character single-SMS limit depending on name and points.
        return (
            f"ACME Rewards: Hi {rng.choice(_EN_NAMES)}, you have {rng.randrange(10, 250000)} points "
            f"expiring on {rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}. Redeem them now at "
            "acme.example/rewards for up to 30% off dining. Reply STOP to opt out."
        )
    if template == 2:
        return (
            f"ACME Bank: Dear {rng.choice(_EN_NAMES)}, thank you for banking with us. From "
            f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d} our branches in Central and Causeway "
            "Bay will open from 9am to 7pm on weekdays and 9am to 1pm on Saturdays. You can also manage "
            "your accounts 24/7 in the ACME Mobile app, including card limits, bill payments and overseas "
            f"spending alerts. Reference {rng.randrange(1000000):06d}. Reply STOP to opt out."
        )
    if template == 3:
        # A curly apostrophe is not GSM-7: the whole message becomes Unicode.
        return (
            f"ACME: Don’t miss our weekend sale, {rng.choice(_EN_NAMES)}! Use code "
            f"SALE{rng.randrange(1000):03d} for 15% off at acme.example/sale"
        )
    if template == 4:
        return (
            f"【ACME銀行】{rng.choice(_ZH_NAMES)}您好，您尾號{rng.randrange(10000):04d}的信用卡已成功啟用。"
            "如有查詢請致電2233 4455。"
        )
    if template == 5:
        return (
            f"【ACME銀行】{rng.choice(_ZH_NAMES)}您好！由{rng.randrange(1, 13)}月{rng.randrange(1, 29)}日起，"
            "本行中環及銅鑼灣分行的營業時間將更改為星期一至五上午九時至下午七時，星期六上午九時至下午一時。"
            "您亦可隨時透過ACME流動應用程式管理賬戶、調整信用卡限額、繳付賬單及設定海外消費提示。"
            f"參考編號：{rng.randrange(1000000):06d}。如欲取消訂閱，請回覆STOP。"
        )
    return f"Your ACME verification code is {rng.randrange(1000000):06d}. It expires in 5 minutes."


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def is_gsm7_text(text: str) -> bool:
    """Return True when every character of ``text`` is in the GSM 03.38 basic or extension table."""
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in text)


def count_sms_segments(text: str) -> int:
    """Return ``numSMS`` for ``text`` per CINNOX's "SMS Char Limit" rule.

    GSM-7 ("English") text: up to 160 characters is 1 SMS, longer text is split into parts of 153.
    Any other character makes the whole message Unicode: up to 70 characters is 1 SMS, else parts of
    67. GSM extension characters (``^{}[]~|€\\``) count twice and Unicode length is counted in UTF-16
    units, as handsets do; the generated content uses neither, so for it ``len(text)`` is exact.
    Empty text is 1 SMS.
    """
    if is_gsm7_text(text):
        length = sum(2 if ch in _GSM7_EXTENSION else 1 for ch in text)
        single, part = 160, 153
    else:
        length = len(text.encode("utf-16-le")) // 2
        single, part = 70, 67
    if length <= single:
        return 1
    return math.ceil(length / part)


def day_bounds_utc(day: date) -> tuple[datetime, datetime]:
    """Return ``(start, end)`` of the UTC day ``day`` as aware datetimes: midnight and next midnight."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def format_timestamp(epoch_ms: int, *, millis: bool = True, offset_minutes: int = 0) -> str:
    """Format an epoch-millisecond instant as RFC3339, e.g. ``2024-05-01T20:00:00.000Z``.

    ``millis=False`` drops the fraction (only exact for whole-second instants); a non-zero
    ``offset_minutes`` writes the same instant in that offset, e.g. ``+08:00``.
    """
    local = _EPOCH + timedelta(milliseconds=epoch_ms + offset_minutes * 60_000)
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}T"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    )
    if millis:
        text += f".{epoch_ms % 1000:03d}"
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> datetime:
    """Parse a strict RFC3339 timestamp (offset required, optional fraction) into an aware datetime.

    Raises ``ValueError`` for anything else (date-only, naive, a space instead of ``T``, ...).
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC3339 timestamp: {text!r}")
    day_part, time_part, fraction, offset = match.groups()
    iso = f"{day_part}T{time_part}"
    if fraction:
        iso += "." + fraction[:6].ljust(6, "0")
    iso += "+00:00" if offset in ("Z", "z") else offset
    return datetime.fromisoformat(iso)


def _to_epoch_ms(moment: datetime) -> int:
    """Return ``moment`` (aware) as integer epoch milliseconds, rounded down."""
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _to_epoch_us(moment: datetime) -> int:
    """Return ``moment`` (aware) as integer epoch microseconds."""
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_epoch_ms(epoch_ms: int) -> datetime:
    """Return epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=epoch_ms)


def _seed_int(*parts: object) -> int:
    """Return a stable 64-bit integer from ``parts`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _hex_digest(n_chars: int, *parts: object) -> str:
    """Return ``n_chars`` stable lowercase hex characters derived from ``parts``."""
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()[:n_chars]


def _staff_eid(name: str) -> str:
    """Return a stable UUID-shaped staff EID for the staff member ``name``."""
    h = _hex_digest(32, "staff", name)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _log_uniform_ms(rng: random.Random, low_s: float, high_s: float) -> int:
    """Return a delay in ms drawn log-uniformly between ``low_s`` and ``high_s`` seconds."""
    return int(math.exp(rng.uniform(math.log(low_s), math.log(high_s))) * 1000)


# --------------------------------------------------------------------------------------------
# Config and ground truth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that determines the simulated CINNOX account and how its server misbehaves.

    Data: ``seed``, ``campaigns_per_day``, ``recipients_per_campaign`` (mean; sizes vary about
    0.3x..1.7x, and with a mean >= 300 some campaigns are exactly 500/1000 rows),
    ``recipients_min``/``recipients_max`` (both or neither: every campaign's size is drawn uniformly
    from ``[min, max]`` instead, with no page-boundary cases; ``min == max`` fixes the size; the mean
    is then ignored), ``sms_share``,
    ``now`` (aware; None = wall clock at each call), ``whatsapp_delivered_includes_read`` (the
    summary's ``delivered`` convention for WhatsApp) and ``odd_records`` (mix encoding variants,
    duplicates and untypeable rows into the detail data).
    Server: ``app_id``, ``token``, ``fault_rate``/``fault_kinds``/``fault_seed``/``slow_seconds``
    (random fault injection), ``down`` (every request answers 503), ``rate_limit_per_min`` and
    ``stats_path`` (e.g. ``/_stats``: ``GET`` there answers the server's request counters as JSON,
    without auth and without being counted; None, the default, serves no such path).
    Misbehaving server (all off by default; see the module docstring for what each serves and
    what the ground truth says): ``summary_page_cap`` / ``detail_page_cap`` (at most N rows per
    page whatever ``limit`` asks), ``empty_summary``, ``truncate_details``, ``bom_bodies`` (every
    response body starts with a UTF-8 BOM), ``poison_values``, ``duplicate_summary``,
    ``naive_dates`` and ``odd_channel``; hostile transport: ``drip_bytes_per_s`` (every detail
    body is sent at about that many bytes per second, headers at once) and ``oversized_mb``
    (every detail answer is padded to that many MB of 2**20 bytes with a long unknown
    ``padding`` field: well-formed JSON, sent without ``Content-Length``, ending at the close).
    """

    seed: int = 7
    app_id: str = "sim-app"
    token: str = "sim-token"
    campaigns_per_day: int = 8
    recipients_per_campaign: int = 150
    recipients_min: int | None = None
    recipients_max: int | None = None
    sms_share: float = 0.55
    now: datetime | None = None
    whatsapp_delivered_includes_read: bool = True
    odd_records: bool = False
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = ALL_FAULT_KINDS
    fault_seed: int = 1
    slow_seconds: float = 2.0
    down: bool = False
    rate_limit_per_min: int | None = None
    stats_path: str | None = None
    summary_page_cap: int | None = None
    detail_page_cap: int | None = None
    empty_summary: bool = False
    truncate_details: bool = False
    bom_bodies: bool = False
    poison_values: bool = False
    duplicate_summary: bool = False
    naive_dates: bool = False
    odd_channel: bool = False
    drip_bytes_per_s: float | None = None
    oversized_mb: float | None = None

    def __post_init__(self) -> None:
        """Validate the values and normalise ``fault_kinds`` to a tuple."""
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        if self.campaigns_per_day < 0 or self.campaigns_per_day > 10_000:
            raise ValueError("campaigns_per_day must be between 0 and 10000")
        if self.recipients_per_campaign < 1:
            raise ValueError("recipients_per_campaign must be >= 1")
        if (self.recipients_min is None) != (self.recipients_max is None):
            raise ValueError("recipients_min and recipients_max go together")
        if self.recipients_min is not None and not 1 <= self.recipients_min <= self.recipients_max:
            raise ValueError("need 1 <= recipients_min <= recipients_max")
        if not 0.0 <= self.sms_share <= 1.0:
            raise ValueError("sms_share must be within [0, 1]")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        unknown = [k for k in self.fault_kinds if k not in ALL_FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {ALL_FAULT_KINDS}")
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.now is not None and self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")
        if self.rate_limit_per_min is not None and self.rate_limit_per_min < 1:
            raise ValueError("rate_limit_per_min must be >= 1 or None")
        if not self.app_id or "/" in self.app_id:
            raise ValueError("app_id must be a non-empty path segment")
        if self.stats_path is not None and (
            not self.stats_path.startswith("/") or self.stats_path.startswith("/v1/")
        ):
            raise ValueError("stats_path must start with '/' and lie outside /v1/")
        for name in ("summary_page_cap", "detail_page_cap"):
            cap = getattr(self, name)
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ValueError(f"{name} must be an int >= 1 or None")
        for name in ("drip_bytes_per_s", "oversized_mb"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 < value < math.inf):
                raise ValueError(f"{name} must be a number > 0 or None")

    @property
    def data_modes(self) -> tuple[str, ...]:
        """The misbehaving-server modes that change the data served (not just its transport)."""
        names = ("empty_summary", "truncate_details", "poison_values", "duplicate_summary", "naive_dates",
                 "odd_channel")
        return tuple(name for name in names if getattr(self, name))


@dataclass(frozen=True)
class GroundTruth:
    """What a correct pipeline must end up with for campaigns sent in ``[start, end)`` as of ``as_of``.

    ``campaigns``: one dict per campaign (summary facts, counts at ``as_of``).
    ``messages``: one dict per good, de-duplicated detail row (latest state wins).
    ``rejected``: one dict per untypeable record: ``campaign_id``, ``channel``, ``reason_kind``
    (:data:`REJECT_REASON_KINDS` for ``odd_records``, :data:`HOSTILE_REASON_KINDS` for the
    misbehaving modes), ``endpoint`` (``"summary"`` or ``"detail"``) and, for a poisoned detail
    row, ``recipient``.
    ``anomalies``: one dict per misbehaviour the server shows for the window (misbehaving data
    modes only): ``mode`` (the config field), ``endpoint``, ``campaign_id`` (not for
    ``empty_summary``) and mode-specific keys: ``field``/``value`` (``poison_values``,
    ``naive_dates``, ``odd_channel``; ``recipient`` for detail rows), ``total_recipients``/
    ``rows_listed``/``rows_served`` (``truncate_details``), ``stale_copy`` (the stale summary
    record of ``duplicate_summary``), ``campaigns_hidden`` (``empty_summary``).
    Keys are canonical snake_case; timestamps are aware UTC datetimes; fields that do not apply to
    the channel are None.
    """

    campaigns: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    as_of: datetime = field(default=_EPOCH)
    anomalies: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Internal model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Campaign:
    """Static facts of one campaign (cheap: generated for a whole day at once)."""

    campaign_id: str
    day: date
    index: int
    sent_ms: int
    channel: str
    campaign_name: str
    created_by: str
    sender_phone: str
    sender_channel_name: str | None
    sender_source_name: str | None
    sender_eid: str | None
    subject: str | None
    size: int
    sms_template: int
    reply_rate: float
    tag: str
    summary_extra_fields: bool


class _Message:
    """One recipient's message: static content plus its full status trajectory."""

    __slots__ = (
        "content",
        "country",
        "failed_reason",
        "flags",
        "num_sms",
        "recipient",
        "replies",
        "statuses",
        "times",
    )

    def __init__(self, recipient: str, country: str, content: str | None, num_sms: int | None) -> None:
        """Create a message with an empty trajectory (filled in by the generator)."""
        self.recipient = recipient
        self.country = country
        self.content = content
        self.num_sms = num_sms
        self.times: tuple[int, ...] = ()
        self.statuses: tuple[str, ...] = ()
        self.failed_reason = ""
        self.replies = False
        self.flags = 0


@dataclass(frozen=True, slots=True)
class _BadRecord:
    """An extra, untypeable detail record (odd_records only)."""

    position: int  # inserted before message ``position`` (== size: at the end)
    kind: str  # one of REJECT_REASON_KINDS
    recipient: str
    source_index: int  # message whose state/contents it copies


@dataclass(slots=True)
class _Body:
    """A campaign's generated detail data."""

    messages: list[_Message]
    change_times: list[int]  # sorted distinct transition times after the sent time
    bad_records: list[_BadRecord]
    poison: dict[int, str] = field(default_factory=dict)  # message index -> "num_sms" | "lone_surrogate"


@dataclass(slots=True)
class _PrerenderedPages:
    """Detail pages (limit 500) rendered at one data version of one campaign."""

    sent_ms: int
    change_times: list[int]
    version: int
    pages: dict[int, bytes]


class _LRU:
    """A small thread-safe least-recently-used mapping."""

    _MISSING = object()

    def __init__(self, maxsize: int) -> None:
        """Create an empty cache holding at most ``maxsize`` entries."""
        self._maxsize = maxsize
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """Return the cached value or None."""
        with self._lock:
            value = self._data.get(key, self._MISSING)
            if value is self._MISSING:
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        """Store ``value`` and evict the oldest entries beyond the size limit."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------


class CinnoxSimulator:
    """Deterministic synthetic CINNOX account: campaigns, detail rows, API rendering, ground truth.

    Thread-safe. Generated days and campaigns are cached (LRU); :meth:`prerender` keeps the exact
    bytes of every detail page (limit 500) for a range of days so that benchmarks measure the client.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        """Create a simulator for ``config`` (default :class:`SimulatorConfig`)."""
        self._config = config or SimulatorConfig()
        self._days = _LRU(4096)
        self._bodies = _LRU(160)
        self._row_plans = _LRU(512)
        self._counts = _LRU(8192)
        self._pages = _LRU(1024)
        self._prerendered: dict[str, _PrerenderedPages] = {}
        self._prerender_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._staff_eids = {name: _staff_eid(name) for name in _STAFF}
        self._hostile = bool(self._config.data_modes)
        self._day_roles = _LRU(4096)

    # ---------------------------------------------------------------- basics

    @property
    def config(self) -> SimulatorConfig:
        """The configuration this simulator was built from."""
        return self._config

    def now_ms(self, now: datetime | None = None) -> int:
        """Return the effective 'now' in epoch ms: ``now``, else ``config.now``, else the wall clock."""
        if now is not None:
            return _to_epoch_ms(now)
        if self._config.now is not None:
            return _to_epoch_ms(self._config.now)
        return time.time_ns() // 1_000_000

    # ---------------------------------------------------------------- campaigns of a day

    def _day_campaigns(self, day: date) -> list[_Campaign]:
        """Return the campaigns sent on UTC ``day`` in sent-time order (cached)."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        campaigns = self._generate_day(day)
        self._days.put(day, campaigns)
        return campaigns

    def _generate_day(self, day: date) -> list[_Campaign]:
        """Generate the campaigns of ``day`` from ``(seed, day)``."""
        cfg = self._config
        n = cfg.campaigns_per_day
        if n == 0 or not _MIN_DAY <= day <= _MAX_DAY:
            return []
        iso = day.isoformat()
        rng = random.Random(_seed_int(cfg.seed, "day", iso))
        day_start_ms = _to_epoch_ms(day_bounds_utc(day)[0])
        slot_s = 86_400 / n
        sent_seconds = [int(i * slot_s + rng.random() * slot_s) for i in range(n)]
        if _seed_int(cfg.seed, "midnight", iso) % 3 == 0:
            sent_seconds[0] = 0  # a campaign exactly on the window edge
        sent_seconds = [min(max(s, 0), 86_399) for s in sent_seconds]
        channels = [SMS if rng.random() < cfg.sms_share else WHATSAPP for _ in range(n)]
        if n >= 2 and 0.0 < cfg.sms_share < 1.0 and len(set(channels)) == 1:
            channels[-1] = WHATSAPP if channels[-1] == SMS else SMS
        mean = cfg.recipients_per_campaign
        sizes = []
        if cfg.recipients_min is not None and cfg.recipients_max is not None:
            sizes = [rng.randint(cfg.recipients_min, cfg.recipients_max) for _ in range(n)]
        else:
            for _ in range(n):
                size = max(1, round(mean * rng.uniform(0.3, 1.7)))
                if mean >= 300 and rng.random() < 0.12:
                    size = max(500, round(size / 500) * 500)  # exactly on a page boundary
                sizes.append(size)
            ordinal = day.toordinal()
            if mean >= 300 and ordinal % 7 == 3:
                sizes[-1] = 500  # one campaign a week fills exactly one page
            if mean >= 400 and ordinal % 7 == 5:
                sizes[0] = max(sizes[0], round(mean * 1.5), 501)  # one a week needs several pages
        campaigns = []
        for i in range(n):
            sent_ms = day_start_ms + sent_seconds[i] * 1000
            campaign_id = f"{sent_ms // 1000:08x}{_hex_digest(12, cfg.seed, 'campaign', iso, i)}{i:04x}"
            staff = rng.choice(_STAFF)
            label = f"{_MONTHS[day.month - 1]} {day.day:02d}"
            if channels[i] == SMS:
                theme, template = rng.choice(_SMS_THEMES)
                phone = rng.choice(_SMS_SENDERS)
                channel_name = source_name = subject = None
                eid: str | None = self._staff_eids[staff]
            else:
                theme, subject = rng.choice(_WHATSAPP_THEMES)
                phone, channel_name, source_name = rng.choice(_WHATSAPP_CHANNELS)
                template, eid = -1, None
            reply_rate = rng.uniform(0.02, 0.25)
            campaigns.append(
                _Campaign(
                    campaign_id=campaign_id,
                    day=day,
                    index=i,
                    sent_ms=sent_ms,
                    channel=channels[i],
                    campaign_name=f"{theme} {label} #{i + 1}",
                    created_by=staff,
                    sender_phone=phone,
                    sender_channel_name=channel_name,
                    sender_source_name=source_name,
                    sender_eid=eid,
                    subject=subject,
                    size=sizes[i],
                    sms_template=template,
                    reply_rate=reply_rate,
                    tag=rng.choice(("retention", "promo", "service", "compliance")),
                    summary_extra_fields=(i % 3 == 1) or rng.random() < 0.2,
                )
            )
        campaigns.sort(key=lambda c: (c.sent_ms, c.campaign_id))
        return campaigns

    def _campaign_by_id(self, history_id: str) -> _Campaign | None:
        """Return the campaign with id ``history_id`` (ids encode their day and index), or None."""
        if not isinstance(history_id, str) or not re.fullmatch(r"[0-9a-f]{24}", history_id):
            return None
        seconds = int(history_id[:8], 16)
        index = int(history_id[20:], 16)
        day = _from_epoch_ms(seconds * 1000).date()
        for campaign in self._day_campaigns(day):
            if campaign.index == index and campaign.campaign_id == history_id:
                return campaign
        return None

    def _campaigns_between(
        self, start_us: int, end_us: int, now_ms: int, *, end_inclusive: bool
    ) -> list[_Campaign]:
        """Return campaigns with ``start <= sent <= end`` (or ``< end``) and sent <= now, sorted."""
        last_us = min(end_us, now_ms * 1000)
        if last_us < start_us:
            return []
        first_day = max(_from_epoch_ms(start_us // 1000).date(), _MIN_DAY)
        last_day = min(_from_epoch_ms(last_us // 1000).date(), _MAX_DAY)
        found = []
        day = first_day
        while day <= last_day:
            for campaign in self._day_campaigns(day):
                sent_us = campaign.sent_ms * 1000
                if sent_us < start_us or sent_us > now_ms * 1000:
                    continue
                if sent_us > end_us or (not end_inclusive and sent_us == end_us):
                    continue
                found.append(campaign)
            day += timedelta(days=1)
        found.sort(key=lambda c: (c.sent_ms, c.campaign_id))
        return found

    # ---------------------------------------------------------------- misbehaving modes

    def _roles_of_day(self, day: date) -> dict[str, frozenset[str]]:
        """Return ``{campaign_id: roles}`` of ``day``: which campaign each enabled data mode hits.

        Roles: ``poison_detail`` (an SMS campaign), ``poison_summary`` (WhatsApp, else SMS),
        ``truncate_details``, ``duplicate_summary``, ``naive_dates``, ``odd_channel`` (WhatsApp if
        any). Campaigns sent exactly at midnight (listed in two windows) are avoided when possible,
        and each role takes a campaign no other role took while there are enough.
        """
        cached = self._day_roles.get(day)
        if cached is not None:
            return cached
        cfg = self._config
        wanted: list[tuple[str, str | None, bool]] = []  # (role, preferred channel, channel required)
        if cfg.poison_values:
            wanted += [("poison_detail", SMS, True), ("poison_summary", WHATSAPP, False)]
        if cfg.truncate_details:
            wanted.append(("truncate_details", None, False))
        if cfg.duplicate_summary:
            wanted.append(("duplicate_summary", None, False))
        if cfg.naive_dates:
            wanted.append(("naive_dates", None, False))
        if cfg.odd_channel:
            wanted.append(("odd_channel", WHATSAPP, False))
        campaigns = self._day_campaigns(day)
        candidates = [c for c in campaigns if c.sent_ms % _DAY_MS != 0] or campaigns
        roles: dict[str, set[str]] = {}
        for role, channel, required in wanted:
            fits = [c for c in candidates if channel is None or c.channel == channel]
            unused = [c for c in fits if c.campaign_id not in roles]
            if not required:  # a campaign of another channel beats sharing one
                unused = unused or [c for c in candidates if c.campaign_id not in roles]
                fits = fits or candidates
            pool = unused or fits
            if pool:
                roles.setdefault(pool[0].campaign_id, set()).add(role)
        result = {cid: frozenset(names) for cid, names in roles.items()}
        self._day_roles.put(day, result)
        return result

    def _roles(self, campaign: _Campaign) -> frozenset[str]:
        """The misbehaving-mode roles of ``campaign`` (empty unless a data mode is on)."""
        if not self._hostile:
            return frozenset()
        return self._roles_of_day(campaign.day).get(campaign.campaign_id, frozenset())

    def _poison_rows(self, messages: list[_Message], bad: list[_BadRecord]) -> dict[int, str]:
        """Pick the ``poison_detail`` rows: ``{message index: "num_sms" | "lone_surrogate"}``.

        Plain rows only (no odd-record variant, not copied by an untypeable record), so each
        poisoned row is rejected for its poison alone.
        """
        sources = {b.source_index for b in bad}
        plain = [i for i, m in enumerate(messages)
                 if i not in sources and not (self._config.odd_records and m.flags)]
        if not plain:
            return {}
        rows = {plain[len(plain) // 3]: "num_sms"}
        rows.setdefault(plain[(2 * len(plain)) // 3], "lone_surrogate")
        return rows

    def _served_plan(self, campaign: _Campaign, body: _Body, now_ms: int) -> list[tuple[int, int, int]]:
        """The detail rows the API serves at ``now_ms``: the row plan, cut to its first half for a
        ``truncate_details`` campaign."""
        plan = self._row_plan(campaign, body, now_ms)
        if self._hostile and "truncate_details" in self._roles(campaign):
            return plan[: len(plan) // 2]
        return plan

    def _summary_entries(self, campaigns: list[_Campaign]) -> list[tuple[_Campaign, bool]]:
        """The summary listing as ``(campaign, stale)`` entries: empty for ``empty_summary``; a
        ``duplicate_summary`` campaign's stale copy right before the real one."""
        if not self._hostile:
            return [(c, False) for c in campaigns]
        if self._config.empty_summary:
            return []
        entries = []
        for campaign in campaigns:
            if "duplicate_summary" in self._roles(campaign):
                entries.append((campaign, True))
            entries.append((campaign, False))
        return entries

    def _summary_entry(self, campaign: _Campaign, stale: bool, now_ms: int) -> dict[str, Any]:
        """Render one summary listing entry (API shape, poison as placeholders)."""
        record = self._summary_record(campaign, now_ms)
        if not self._hostile:
            return record
        if stale:
            return self._stale_copy(record)
        roles = self._roles(campaign)
        if "naive_dates" in roles:
            record["date"] = record["date"].removesuffix("Z")
        if "odd_channel" in roles:
            record["channel"] = ODD_CHANNEL
        if "poison_summary" in roles:
            record[self._poison_count_field(campaign)] = _MARK_COUNT
        return record

    @staticmethod
    def _stale_copy(record: dict[str, Any]) -> dict[str, Any]:
        """The stale copy of a summary record: an early snapshot with one recipient, still pending."""
        stale = dict(record)
        stale["campaignName"] = STALE_CAMPAIGN_NAME
        stale["totalRecipients"] = 1
        stale["delivered"] = 0
        if record.get("channel") == WHATSAPP:
            stale.update({"read": 0, "replied": 0, "pending": 1, "failed": 0})
        return stale

    @staticmethod
    def _poison_count_field(campaign: _Campaign) -> str:
        """The summary count ``poison_values`` overflows: ``replied`` (WhatsApp) or ``delivered`` (SMS)."""
        return "replied" if campaign.channel == WHATSAPP else "delivered"

    @staticmethod
    def _pythonize(record: dict[str, Any]) -> dict[str, Any]:
        """Replace the poison placeholders of a rendered record by the Python values the body means."""
        for key, value in record.items():
            if value == _MARK_COUNT:
                record[key] = POISON_COUNT
            elif value.__class__ is str and _MARK_SURROGATE in value:
                record[key] = value.replace(_MARK_SURROGATE, LONE_SURROGATE)
        return record

    # ---------------------------------------------------------------- detail generation

    def _body(self, campaign: _Campaign) -> _Body:
        """Return the generated detail data of ``campaign`` (cached; generated once at a time)."""
        body = self._bodies.get(campaign.campaign_id)
        if body is not None:
            return body
        with self._generate_lock:
            body = self._bodies.get(campaign.campaign_id)
            if body is None:
                body = self._generate_body(campaign)
                self._bodies.put(campaign.campaign_id, body)
        return body

    def _generate_body(self, campaign: _Campaign) -> _Body:
        """Generate recipients, contents and status trajectories of ``campaign``."""
        cfg = self._config
        rng = random.Random(_seed_int(cfg.seed, "body", campaign.campaign_id))
        is_sms = campaign.channel == SMS
        pool = _SMS_FLAGS if is_sms else _WHATSAPP_FLAGS
        used: set[str] = set()
        messages: list[_Message] = []
        for _ in range(campaign.size):
            recipient, country = self._new_recipient(rng, used)
            if is_sms:
                content: str | None = _sms_content(campaign.sms_template, rng)
                num_sms: int | None = count_sms_segments(content)
            else:
                content = num_sms = None
            message = _Message(recipient, country, content, num_sms)
            if rng.random() < 0.12:
                message.flags = _add_flag(0, pool[rng.randrange(len(pool))])
                if rng.random() < 0.3:
                    message.flags = _add_flag(message.flags, pool[rng.randrange(len(pool))])
            if is_sms:
                self._sms_trajectory(rng, campaign.sent_ms, message)
            else:
                self._whatsapp_trajectory(rng, campaign, message)
            messages.append(message)
        self._cover_variants(campaign, messages, pool)
        if cfg.odd_records:
            for row, message in enumerate(messages):
                if message.flags & _F_EXPIRED:
                    self._expired_trajectory(campaign, row, message)
        change_times: set[int] = set()
        for message in messages:
            if message.flags & _F_TS_NO_MS:
                message.times = tuple(-(-t // 1000) * 1000 for t in message.times)
            change_times.update(message.times[1:])
        bad_records = self._bad_records(campaign, used) if cfg.odd_records else []
        poison = {}
        if "poison_detail" in self._roles(campaign):
            poison = self._poison_rows(messages, bad_records)
        return _Body(messages, sorted(change_times), bad_records, poison)

    @staticmethod
    def _new_recipient(rng: random.Random, used: set[str]) -> tuple[str, str]:
        """Draw a plausible E.164 number not yet in ``used``; return ``(number, country)``."""
        while True:
            pick = bisect.bisect_left(_COUNTRY_CUM_WEIGHTS, rng.random() * _COUNTRY_CUM_WEIGHTS[-1])
            country, _, prefixes, n_digits = _COUNTRIES[min(pick, len(_COUNTRIES) - 1)]
            prefix = prefixes[rng.randrange(len(prefixes))]
            if country == "US":
                digits = f"{rng.randrange(2, 10)}{rng.randrange(10 ** (n_digits - 1)):0{n_digits - 1}d}"
            else:
                digits = f"{rng.randrange(10**n_digits):0{n_digits}d}"
            number = prefix + digits
            if number not in used:
                used.add(number)
                return number, country

    @staticmethod
    def _finish_trajectory(message: _Message, times: list[int], statuses: list[str]) -> None:
        """Cap a trajectory at ~3 days after sending, make it strictly increasing and store it."""
        cap = times[0] + _SETTLE_MS
        last = len(times) - 1
        for k in range(last, 0, -1):
            times[k] = min(times[k], cap - (last - k) * 1000)
        for k in range(1, len(times)):
            times[k] = max(times[k], times[k - 1] + 1000)
        message.times = tuple(times)
        message.statuses = tuple(statuses)

    def _sms_trajectory(self, rng: random.Random, sent_ms: int, message: _Message) -> None:
        """Give an SMS message its trajectory: mostly Pending -> Submitted -> Delivered."""
        outcome = rng.random()
        if outcome < 0.03:
            self._finish_trajectory(message, [sent_ms], ["Pending"])
            return
        if outcome < 0.06:
            failed_at = sent_ms + _log_uniform_ms(rng, 1, 600)
            self._finish_trajectory(message, [sent_ms, failed_at], ["Pending", "Failed"])
            return
        submitted_at = sent_ms + _log_uniform_ms(rng, 1, 90)
        if outcome < 0.09:
            self._finish_trajectory(message, [sent_ms, submitted_at], ["Pending", "Submitted"])
            return
        final = "Undelivered" if outcome < 0.14 else "Delivered"
        final_at = submitted_at + _log_uniform_ms(rng, 2, 3 * 86_400)
        self._finish_trajectory(message, [sent_ms, submitted_at, final_at], ["Pending", "Submitted", final])

    def _whatsapp_trajectory(self, rng: random.Random, campaign: _Campaign, message: _Message) -> None:
        """Give a WhatsApp message its trajectory: mostly Pending -> Delivered -> Read."""
        sent_ms = campaign.sent_ms
        outcome = rng.random()
        replies = rng.random() < campaign.reply_rate
        if outcome < 0.06:
            self._finish_trajectory(message, [sent_ms], ["Pending"])
        elif outcome < 0.14:
            pick = rng.random()
            if pick < 0.35:
                reason = WHATSAPP_FAILED_REASONS[4]  # 24hr window: the common one
            elif pick < 0.55:
                reason = WHATSAPP_FAILED_REASONS[0]
            else:
                reason = WHATSAPP_FAILED_REASONS[rng.randrange(len(WHATSAPP_FAILED_REASONS))]
            message.failed_reason = reason
            failed_at = sent_ms + _log_uniform_ms(rng, 1, 3600)
            self._finish_trajectory(message, [sent_ms, failed_at], ["Pending", "Failed"])
        elif outcome < 0.44:
            delivered_at = sent_ms + _log_uniform_ms(rng, 1, 3 * 86_400)
            self._finish_trajectory(message, [sent_ms, delivered_at], ["Pending", "Delivered"])
        else:
            delivered_at = sent_ms + _log_uniform_ms(rng, 1, 86_400)
            read_at = delivered_at + _log_uniform_ms(rng, 5, 3 * 86_400)
            self._finish_trajectory(
                message, [sent_ms, delivered_at, read_at], ["Pending", "Delivered", "Read"]
            )
            message.replies = replies

    def _expired_trajectory(self, campaign: _Campaign, row: int, message: _Message) -> None:
        """Replace a flagged message's trajectory by one ending in the unknown status "Expired"."""
        rng = random.Random(_seed_int(self._config.seed, "expired", campaign.campaign_id, row))
        sent_ms = campaign.sent_ms
        expired_at = sent_ms + _log_uniform_ms(rng, 60, 7200)
        message.failed_reason = ""
        message.replies = False
        if campaign.channel == SMS:
            submitted_at = sent_ms + _log_uniform_ms(rng, 1, 30)
            self._finish_trajectory(
                message,
                [sent_ms, submitted_at, expired_at + 30_000],
                ["Pending", "Submitted", UNKNOWN_STATUS],
            )
        else:
            self._finish_trajectory(message, [sent_ms, expired_at], ["Pending", UNKNOWN_STATUS])

    def _cover_variants(self, campaign: _Campaign, messages: list[_Message], pool: tuple[int, ...]) -> None:
        """Make sure every odd-record variant occurs at least once in the campaign (when it fits)."""
        rng = random.Random(_seed_int(self._config.seed, "cover", campaign.campaign_id))
        is_sms = campaign.channel == SMS
        for flag in pool:
            if any(m.flags & flag for m in messages):
                continue
            candidates = []
            for row, message in enumerate(messages):
                if _add_flag(message.flags, flag) == message.flags:
                    continue  # conflicts with a flag it already has
                final = message.statuses[-1]
                if flag == _F_CASE_LOWER and final != "Delivered":
                    continue
                if flag == _F_CASE_UPPER and final != ("Delivered" if is_sms else "Read"):
                    continue
                if flag == _F_DUPLICATE and len(message.times) < 2:
                    continue
                candidates.append(row)
            if candidates:
                fresh = [row for row in candidates if messages[row].flags == 0] or candidates
                row = fresh[rng.randrange(len(fresh))]
                messages[row].flags |= flag

    def _bad_records(self, campaign: _Campaign, used: set[str]) -> list[_BadRecord]:
        """Draw the campaign's untypeable extra records (odd_records only)."""
        rng = random.Random(_seed_int(self._config.seed, "bad", campaign.campaign_id))
        kinds = [REJECT_REASON_KINDS[(campaign.index + campaign.day.toordinal()) % 3]]
        if rng.random() < 0.3:
            kinds.append(REJECT_REASON_KINDS[rng.randrange(3)])
        records = []
        for kind in kinds:
            recipient, _ = self._new_recipient(rng, used)
            records.append(
                _BadRecord(
                    position=rng.randrange(campaign.size + 1),
                    kind=kind,
                    recipient=recipient,
                    source_index=rng.randrange(campaign.size),
                )
            )
        records.sort(key=lambda r: r.position)
        return records

    # ---------------------------------------------------------------- state at now

    @staticmethod
    def _version(body: _Body, now_ms: int) -> int:
        """Return the data version of a campaign at ``now_ms``: the number of changes so far."""
        return bisect.bisect_right(body.change_times, now_ms)

    def _row_plan(self, campaign: _Campaign, body: _Body, now_ms: int) -> list[tuple[int, int, int]]:
        """Return the ordered detail rows at ``now_ms`` as ``(kind, index, state)`` tuples.

        kind 0 = a message at trajectory state ``state``; 1 = its older duplicate; 2 = bad record
        ``index`` copying its source message at ``state``.
        """
        version = self._version(body, now_ms)
        key = (campaign.campaign_id, version)
        plan = self._row_plans.get(key)
        if plan is not None:
            return plan
        odd = self._config.odd_records
        bad_at: dict[int, list[int]] = {}
        for j, bad in enumerate(body.bad_records):
            bad_at.setdefault(bad.position, []).append(j)
        messages = body.messages
        plan = []
        for i, message in enumerate(messages):
            for j in bad_at.get(i, ()):
                source = messages[body.bad_records[j].source_index]
                plan.append((2, j, bisect.bisect_right(source.times, now_ms) - 1))
            state = bisect.bisect_right(message.times, now_ms) - 1
            if odd and message.flags & _F_DUPLICATE and state >= 1:
                if i % 2 == 0:
                    plan.extend(((1, i, state - 1), (0, i, state)))
                else:
                    plan.extend(((0, i, state), (1, i, state - 1)))
            else:
                plan.append((0, i, state))
        for j in bad_at.get(len(messages), ()):
            source = messages[body.bad_records[j].source_index]
            plan.append((2, j, bisect.bisect_right(source.times, now_ms) - 1))
        self._row_plans.put(key, plan)
        return plan

    def _status_counts(self, campaign: _Campaign, body: _Body, now_ms: int) -> dict[str, int]:
        """Return the summary counts of ``campaign`` at ``now_ms`` from its good, de-duplicated rows."""
        key = (campaign.campaign_id, self._version(body, now_ms))
        counts = self._counts.get(key)
        if counts is not None:
            return counts
        tally = {"Delivered": 0, "Read": 0, "Pending": 0, "Failed": 0, "replied": 0}
        for message in body.messages:
            status = message.statuses[bisect.bisect_right(message.times, now_ms) - 1]
            if status in tally:
                tally[status] += 1
            if status == "Read" and message.replies:
                tally["replied"] += 1
        if campaign.channel == SMS:
            counts = {"totalRecipients": len(body.messages), "delivered": tally["Delivered"]}
        else:
            delivered = tally["Delivered"]
            if self._config.whatsapp_delivered_includes_read:
                delivered += tally["Read"]
            counts = {
                "totalRecipients": len(body.messages),
                "delivered": delivered,
                "read": tally["Read"],
                "replied": tally["replied"],
                "pending": tally["Pending"],
                "failed": tally["Failed"],
            }
        self._counts.put(key, counts)
        return counts

    # ---------------------------------------------------------------- API rendering

    def _summary_record(self, campaign: _Campaign, now_ms: int) -> dict[str, Any]:
        """Render one summary record (API shape) at ``now_ms``."""
        counts = self._status_counts(campaign, self._body(campaign), now_ms)
        if campaign.channel == SMS:
            sender = {"phone": campaign.sender_phone, "senderEID": campaign.sender_eid}
        else:
            sender = {
                "phone": campaign.sender_phone,
                "channelName": campaign.sender_channel_name,
                "sourceName": campaign.sender_source_name,
            }
        record: dict[str, Any] = {
            "id": campaign.campaign_id,
            "date": format_timestamp(campaign.sent_ms),
            "campaignName": campaign.campaign_name,
            "channel": campaign.channel,
            "createdBy": campaign.created_by,
            "sender": sender,
        }
        if campaign.channel == WHATSAPP:
            record["subject"] = campaign.subject
        record.update(counts)
        if self._config.odd_records and campaign.summary_extra_fields:
            record["campaignTag"] = campaign.tag
            record["priority"] = "high" if campaign.index % 2 else "normal"
        return record

    def _detail_record(self, campaign: _Campaign, body: _Body, entry: tuple[int, int, int]) -> dict[str, Any]:
        """Render one detail row (API shape) from a row-plan entry."""
        kind, index, state = entry
        if kind == 2:
            bad = body.bad_records[index]
            record = self._render_message(campaign, body.messages[bad.source_index], state, 0)
            record["recipient"] = bad.recipient
            if bad.kind == "missing_recipient":
                del record["recipient"]
            elif bad.kind == "missing_id":
                del record["id"]
            else:
                record["date"] = "not-a-date"
            return record
        message = body.messages[index]
        flags = message.flags if self._config.odd_records else 0
        record = self._render_message(campaign, message, state, flags)
        if body.poison:
            poison = body.poison.get(index)
            if poison == "num_sms":
                record["numSMS"] = POISON_NUM_SMS
            elif poison == "lone_surrogate":
                record["content"] = f"{record['content']} {_MARK_SURROGATE}"
        return record

    @staticmethod
    def _render_message(campaign: _Campaign, message: _Message, state: int, flags: int) -> dict[str, Any]:
        """Render ``message`` at trajectory ``state`` with the encoding variants in ``flags``."""
        is_sms = campaign.channel == SMS
        status = message.statuses[state]
        updated_ms = message.times[state]
        no_ms = bool(flags & _F_TS_NO_MS)
        offset = _OFFSET_MINUTES if flags & _F_TS_OFFSET else 0
        other: Any = _ABSENT
        if flags & _F_OTHER_EMPTY:
            other = ""
        elif flags & _F_OTHER_NULL:
            other = None
        if flags & _F_REC_NUMBER:
            recipient: Any = int(message.recipient[1:])
        elif flags & _F_REC_NOPLUS:
            recipient = message.recipient[1:]
        else:
            recipient = message.recipient
        if is_sms:
            sender: dict[str, Any] = {"phone": campaign.sender_phone}
            if other is not _ABSENT:
                sender["channelName"] = other
                sender["sourceName"] = other
            sender["senderEID"] = campaign.sender_eid
        else:
            sender = {
                "phone": campaign.sender_phone,
                "channelName": campaign.sender_channel_name,
                "sourceName": campaign.sender_source_name,
            }
            if other is not _ABSENT:
                sender["senderEID"] = other
        record: dict[str, Any] = {
            "id": campaign.campaign_id,
            "date": format_timestamp(campaign.sent_ms, millis=not no_ms, offset_minutes=offset),
            "sender": sender,
            "recipient": recipient,
        }
        if is_sms:
            record["recipientCountry"] = message.country
        elif other is not _ABSENT:
            record["recipientCountry"] = other
        if not is_sms:
            record["subject"] = campaign.subject
        elif other is not _ABSENT:
            record["subject"] = other
        if is_sms:
            record["content"] = message.content
            record["numSMS"] = str(message.num_sms) if flags & _F_NUMSMS_STR else message.num_sms
        elif other is not _ABSENT:
            record["content"] = other
            record["numSMS"] = other
        if flags & _F_CASE_LOWER:
            record["status"] = status.lower()
        elif flags & _F_CASE_UPPER:
            record["status"] = status.upper()
        else:
            record["status"] = status
        if is_sms:
            record["carrierNetworkStatus"] = SMS_CARRIER_STATUS_BY_STATUS[status]
        elif other is not _ABSENT:
            record["carrierNetworkStatus"] = other
        if not is_sms:
            record["failedReason"] = message.failed_reason if status == "Failed" else ""
        elif other is not _ABSENT:
            record["failedReason"] = other
        key = "LastUpdatedDateTime" if flags & _F_KEY_CAPITAL else "lastUpdatedDateTime"
        record[key] = format_timestamp(
            updated_ms, millis=not (no_ms and updated_ms % 1000 == 0), offset_minutes=offset
        )
        if flags & _F_EXTRA:
            record["campaignTag"] = campaign.tag
            record["priority"] = "normal"
        return record

    def summary_records(
        self, start_at: datetime, end_at: datetime, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Return the summary records (API shape) the API lists for ``start_at <= date <= end_at``
        (both inclusive), as the server serves them in every mode.

        Sorted by ``(date, id)``; campaigns sent after ``now`` are never returned.
        """
        now_ms = self.now_ms(now)
        campaigns = self._campaigns_between(
            _to_epoch_us(start_at), _to_epoch_us(end_at), now_ms, end_inclusive=True
        )
        records = [self._summary_entry(c, stale, now_ms) for c, stale in self._summary_entries(campaigns)]
        if self._config.poison_values:
            records = [self._pythonize(r) for r in records]
        return records

    def detail_records(self, history_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Return every detail record (API shape) the API serves for campaign ``history_id``, in the
        stable page order (a ``truncate_details`` campaign's listing ends early here too).

        An unknown id, or a campaign sent after ``now``, gives ``[]``.
        """
        now_ms = self.now_ms(now)
        campaign = self._campaign_by_id(history_id)
        if campaign is None or campaign.sent_ms > now_ms:
            return []
        body = self._body(campaign)
        records = [self._detail_record(campaign, body, e) for e in self._served_plan(campaign, body, now_ms)]
        if body.poison:
            records = [self._pythonize(r) for r in records]
        return records

    def _cid(self, *parts: object) -> str:
        """Return the envelope's ``cid``: random-looking but a pure function of the request."""
        return _hex_digest(24, self._config.seed, "cid", *parts)

    def _envelope(self, records: list[dict[str, Any]], cid: str) -> bytes:
        """Serialise a success envelope (with the poison placeholders replaced by what they stand for)."""
        data = orjson.dumps({"code": 0, "result": records, "cid": cid})
        if self._config.poison_values and b"@@sim-" in data:
            data = data.replace(_MARK_COUNT_JSON, str(POISON_COUNT).encode())
            data = data.replace(_MARK_SURROGATE.encode(), b"\\ud83d")
        return data

    def render_summary_page(
        self,
        start_at: datetime,
        end_at: datetime,
        offset: int = 0,
        limit: int = 50,
        now: datetime | None = None,
    ) -> bytes:
        """Return the exact success response body of one summary page (no parameter validation)."""
        now_ms = self.now_ms(now)
        campaigns = self._campaigns_between(
            _to_epoch_us(start_at), _to_epoch_us(end_at), now_ms, end_inclusive=True
        )
        page = self._summary_entries(campaigns)[offset : offset + limit]
        records = [self._summary_entry(c, stale, now_ms) for c, stale in page]
        cid = self._cid("summary", _to_epoch_us(start_at), _to_epoch_us(end_at), offset, limit)
        return self._envelope(records, cid)

    def render_detail_page(
        self, history_id: str, offset: int = 0, limit: int = 50, now: datetime | None = None
    ) -> bytes:
        """Return the exact success response body of one detail page (no parameter validation).

        Pages pre-rendered by :meth:`prerender` are served from memory while the campaign's data
        has not changed since.
        """
        now_ms = self.now_ms(now)
        cid = self._cid("detail", history_id, offset, limit)
        if limit == PAGE_LIMIT_MAX and offset % PAGE_LIMIT_MAX == 0:
            stored = self._prerendered.get(history_id)
            if (
                stored is not None
                and stored.sent_ms <= now_ms
                and bisect.bisect_right(stored.change_times, now_ms) == stored.version
                and offset in stored.pages
            ):
                return stored.pages[offset]
        campaign = self._campaign_by_id(history_id)
        if campaign is None or campaign.sent_ms > now_ms:
            return self._envelope([], cid)
        body = self._body(campaign)
        key = (history_id, self._version(body, now_ms), offset, limit)
        page_bytes = self._pages.get(key)
        if page_bytes is None:
            plan = self._served_plan(campaign, body, now_ms)
            records = [self._detail_record(campaign, body, e) for e in plan[offset : offset + limit]]
            page_bytes = self._envelope(records, cid)
            self._pages.put(key, page_bytes)
        return page_bytes

    def prerender(self, start_day: date, end_day: date, now: datetime | None = None) -> int:
        """Pre-render every detail page (limit 500; offsets 0, 500, ...) of days ``start_day..end_day``.

        Both days are inclusive. The final page is included even when empty (a campaign of exactly
        500 rows has pages at offsets 0 and 500). Returns the number of pages rendered.
        """
        now_ms = self.now_ms(now)
        n_pages = 0
        day = start_day
        while day <= end_day:
            for campaign in self._day_campaigns(day):
                if campaign.sent_ms > now_ms:
                    continue
                body = self._body(campaign)
                plan = self._served_plan(campaign, body, now_ms)
                pages = {}
                for offset in range(0, len(plan) + 1, PAGE_LIMIT_MAX):
                    records = [
                        self._detail_record(campaign, body, e) for e in plan[offset : offset + PAGE_LIMIT_MAX]
                    ]
                    pages[offset] = self._envelope(
                        records, self._cid("detail", campaign.campaign_id, offset, PAGE_LIMIT_MAX)
                    )
                with self._prerender_lock:
                    self._prerendered[campaign.campaign_id] = _PrerenderedPages(
                        sent_ms=campaign.sent_ms,
                        change_times=body.change_times,
                        version=self._version(body, now_ms),
                        pages=pages,
                    )
                n_pages += len(pages)
            day += timedelta(days=1)
        return n_pages

    # ---------------------------------------------------------------- ground truth

    def ground_truth(
        self, start_utc: datetime, end_utc: datetime, now: datetime | None = None
    ) -> GroundTruth:
        """Return the canonical truth for campaigns with ``start_utc <= sent_at < end_utc`` (half-open).

        Computed from the internal model at ``now`` (default ``config.now``, else the wall clock);
        campaigns sent after ``now`` are excluded. With misbehaving data modes on, see the module
        docstring and :class:`GroundTruth` (``rejected``, ``anomalies``) for what changes.
        """
        now_ms = self.now_ms(now)
        campaigns = self._campaigns_between(
            _to_epoch_us(start_utc), _to_epoch_us(end_utc), now_ms, end_inclusive=False
        )
        truth_campaigns: list[dict[str, Any]] = []
        truth_messages: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for campaign in campaigns:
            body = self._body(campaign)
            counts = self._status_counts(campaign, body, now_ms)
            is_sms = campaign.channel == SMS
            sent_at = _from_epoch_ms(campaign.sent_ms)
            truth_campaigns.append(
                {
                    "campaign_id": campaign.campaign_id,
                    "sent_at": sent_at,
                    "channel": campaign.channel,
                    "campaign_name": campaign.campaign_name,
                    "created_by": campaign.created_by,
                    "sender_phone": campaign.sender_phone,
                    "sender_channel_name": campaign.sender_channel_name,
                    "sender_source_name": campaign.sender_source_name,
                    "sender_eid": campaign.sender_eid,
                    "subject": campaign.subject,
                    "total_recipients": counts["totalRecipients"],
                    "delivered": counts["delivered"],
                    "read": counts.get("read"),
                    "replied": counts.get("replied"),
                    "pending": counts.get("pending"),
                    "failed": counts.get("failed"),
                }
            )
            for message in body.messages:
                state = bisect.bisect_right(message.times, now_ms) - 1
                status = message.statuses[state]
                carrier = SMS_CARRIER_STATUS_BY_STATUS[status] if is_sms else ""
                failed_reason = message.failed_reason if (not is_sms and status == "Failed") else ""
                truth_messages.append(
                    {
                        "campaign_id": campaign.campaign_id,
                        "recipient": message.recipient,
                        "channel": campaign.channel,
                        "sent_at": sent_at,
                        "sender_phone": campaign.sender_phone,
                        "sender_eid": campaign.sender_eid,
                        "sender_channel_name": campaign.sender_channel_name,
                        "sender_source_name": campaign.sender_source_name,
                        "recipient_country": message.country if is_sms else None,
                        "content": message.content,
                        "num_sms": message.num_sms,
                        "subject": campaign.subject,
                        "status": status,
                        "carrier_network_status": carrier or None,
                        "failed_reason": failed_reason or None,
                        "last_updated_at": _from_epoch_ms(message.times[state]),
                    }
                )
            for bad in body.bad_records:
                rejected.append(
                    {
                        "campaign_id": None if bad.kind == "missing_id" else campaign.campaign_id,
                        "channel": campaign.channel,
                        "reason_kind": bad.kind,
                        "endpoint": "detail",
                    }
                )
        anomalies: list[dict[str, Any]] = []
        if self._hostile:
            anomalies = self._apply_modes_to_truth(
                campaigns, now_ms, truth_campaigns, truth_messages, rejected
            )
        return GroundTruth(
            campaigns=truth_campaigns,
            messages=truth_messages,
            rejected=rejected,
            as_of=_from_epoch_ms(now_ms),
            anomalies=anomalies,
        )

    def _apply_modes_to_truth(
        self,
        campaigns: list[_Campaign],
        now_ms: int,
        truth_campaigns: list[dict[str, Any]],
        truth_messages: list[dict[str, Any]],
        rejected: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Apply the misbehaving data modes to a window's truth (in place); return its anomalies."""
        anomalies: list[dict[str, Any]] = []
        if self._config.empty_summary:
            anomalies.append(
                {"mode": "empty_summary", "endpoint": "summary", "campaigns_hidden": len(campaigns)}
            )
        summary_rejected: set[str] = set()
        poisoned_rows: set[tuple[str, str]] = set()
        for campaign in campaigns:
            roles = self._roles(campaign)
            if not roles:
                continue
            cid, channel = campaign.campaign_id, campaign.channel
            summary = self._summary_record(campaign, now_ms)
            if "duplicate_summary" in roles:
                anomalies.append({"mode": "duplicate_summary", "endpoint": "summary", "campaign_id": cid,
                                  "stale_copy": self._stale_copy(summary)})
            # one rejected summary record per campaign; with several summary modes on one campaign
            # (a day with fewer campaigns than modes) the first kind below names it
            summary_kinds = []
            if "naive_dates" in roles:
                summary_kinds.append("naive_date")
                anomalies.append({"mode": "naive_dates", "endpoint": "summary", "campaign_id": cid,
                                  "field": "date", "value": summary["date"].removesuffix("Z")})
            if "odd_channel" in roles:
                summary_kinds.append("unknown_channel")
                anomalies.append({"mode": "odd_channel", "endpoint": "summary", "campaign_id": cid,
                                  "field": "channel", "value": ODD_CHANNEL})
            if "poison_summary" in roles:
                summary_kinds.append("count_out_of_range")
                anomalies.append({"mode": "poison_values", "endpoint": "summary", "campaign_id": cid,
                                  "field": self._poison_count_field(campaign), "value": POISON_COUNT})
            if summary_kinds and not self._config.empty_summary:
                summary_rejected.add(cid)
                rejected.append({"campaign_id": cid, "channel": channel, "reason_kind": summary_kinds[0],
                                 "endpoint": "summary"})
            body = self._body(campaign)
            if "truncate_details" in roles:
                listed = len(self._row_plan(campaign, body, now_ms))
                anomalies.append({"mode": "truncate_details", "endpoint": "detail", "campaign_id": cid,
                                  "total_recipients": len(body.messages), "rows_listed": listed,
                                  "rows_served": len(self._served_plan(campaign, body, now_ms))})
            served = {entry[1] for entry in self._served_plan(campaign, body, now_ms) if entry[0] != 2}
            for index, poison in sorted(body.poison.items()):
                message = body.messages[index]
                poisoned_rows.add((cid, message.recipient))  # never a valid message
                if index not in served:
                    continue  # cut off by truncate_details: never served, so never rejected either
                if poison == "num_sms":
                    kind, column, value = "num_sms_out_of_range", "numSMS", POISON_NUM_SMS
                else:
                    kind, column = "invalid_unicode", "content"
                    value = f"{message.content} {LONE_SURROGATE}"
                rejected.append({"campaign_id": cid, "channel": channel, "reason_kind": kind,
                                 "endpoint": "detail", "recipient": message.recipient})
                anomalies.append({"mode": "poison_values", "endpoint": "detail", "campaign_id": cid,
                                  "recipient": message.recipient, "field": column, "value": value})
        if summary_rejected:
            truth_campaigns[:] = [c for c in truth_campaigns if c["campaign_id"] not in summary_rejected]
        if poisoned_rows:
            truth_messages[:] = [m for m in truth_messages
                                 if (m["campaign_id"], m["recipient"]) not in poisoned_rows]
        return anomalies


_ABSENT = object()


def _add_flag(flags: int, flag: int) -> int:
    """Return ``flags`` plus ``flag`` unless it conflicts with a flag already set."""
    for group in _CONFLICTS:
        if flag & group and flags & group and not flags & flag:
            return flags
    return flags | flag
