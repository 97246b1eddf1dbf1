"""PII handling: with ``CAMPAIGN_PII_MODE=hash`` every phone number in a detail record is pseudonymized.

Redaction happens before anything reaches disk: the raw landing file already holds the redacted
record, and the tables, Parquet files and ``rejected_records.raw_record`` are all derived from it.
A number becomes ``hmac:`` + HMAC-SHA256 of its E.164 form, keyed by ``CAMPAIGN_PII_SALT``: the
same number gives the same token wherever it appears (the ``recipient`` column, a ``failedReason``,
an unknown field), so joins and (campaign_id, recipient) uniqueness keep working.

The rule, applied to a detail record (nested objects and lists, and object keys, included):

* ``recipient`` is found case-insensitively (``Recipient``, ``RECIPIENT``) and stored under the
  canonical ``recipient`` key as its token (a second, different number under another casing
  keeps its key, as a token); ``content`` (the SMS body, any casing) is dropped.
* A *candidate* is a run of at least 6 digits, optionally led by ``+``, whose digits are
  separated by at most two of ``space - . / ( )`` (so ``+852 9123-4567`` and ``(852) 9123 4567``
  are one run each). Text without such a run is never touched.
* A candidate holding the recipient's national significant number (its last ``max(6, n - 3)``
  digits: the number without a 1-3 digit country code) becomes the recipient's token, whatever
  its form: ``+85291234567``, ``85291234567``, ``9123 4567``.
* Any other candidate that starts with ``+`` becomes the token of ``+`` and its digits.
* Under a phone-like key (``msisdn``, ``phone``, ``mobile``, ``recipient``, ``whatsapp``,
  ``e164``, ``tel``, ``to``, ...; nested values inherit it; the modelled fields such as
  ``recipientCountry`` are not phone-like) every candidate becomes a token, bare digits
  included. A JSON number follows the same rules on its digits.
* Other digit runs (error codes such as ``7061120``, counts, ids, timestamps) are kept.
* The common record (known fields only, ASCII, no nested object but ``sender``) is checked in
  one pass over its JSON text and copied with two changes; only the others are walked.
* ``sender.phone`` (the business's own sender number, also in ``campaigns`` in clear) is exempt
  from the ``+`` rule so that ``sender_phone`` still joins ``campaigns``.

What it can miss: a number of another person written without ``+`` outside a phone-like key
(``call 91234567``), a number whose digits are spread with wider separators (``9123 - 4567``)
or spelled out, and anything in summary records (campaign names, ``createdBy``), which are not
redacted. Over-redaction is possible and harmless: a digit run that happens to contain the
recipient's digits, or ``+`` followed by 6+ digits that is not a phone number.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import unicodedata
from typing import Any

import orjson

from campaign_pipeline.model import records

PII_MODE_RAW = "raw"
PII_MODE_HASH = "hash"
PII_MODES = (PII_MODE_RAW, PII_MODE_HASH)

RECIPIENT_KEY = "recipient"
CONTENT_KEY = "content"

# A run of 6+ digits, each after at most two separators, optionally led by "(" or by "+" (and "(" or a space).
_CANDIDATE = re.compile(r"(?:\+[ \u00a0(]{0,2}|\()?\d(?:[ \u00a0\-./()]{0,2}\d){5,}")
_PLUS_RUN_ASCII = re.compile(rb"\+[ (]{0,2}[0-9](?:[ \-./()]{0,2}[0-9]){5,}")  # on ASCII JSON text
_SEPARATOR_BYTES = b"+ -./()"
_NOT_DIGIT = re.compile(r"\D")
_MIN_DIGITS = 6
_MAX_COUNTRY_CODE_DIGITS = 3
_PHONE_KEY_PARTS = ("msisdn", "phone", "mobile", "recipient", "whatsapp", "e164", "handset")
_PHONE_KEYS = frozenset({"tel", "cell", "cellular", "waid", "wa_id", "to", "from", "number", "contact"})
# The modelled fields other than recipient hold no phone number (``sender.phone`` has its own rule).
_NOT_PHONE_KEYS = (records.DETAIL_FIELDS | records.SENDER_FIELDS) - {RECIPIENT_KEY, "phone"}
_FAST_KEYS = records.DETAIL_FIELDS


@functools.lru_cache(maxsize=4096)
def is_phone_key(key: str) -> bool:
    """Whether values under ``key`` are taken for phone numbers even without a ``+``."""
    if key in _NOT_PHONE_KEYS:
        return False
    lowered = key.lower()
    return lowered in _PHONE_KEYS or any(part in lowered for part in _PHONE_KEY_PARTS)


def _digits(text: str) -> str:
    """The ASCII digits of ``text`` (other scripts' decimal digits translated)."""
    digits = _NOT_DIGIT.sub("", text)
    if not digits.isascii():
        digits = "".join(str(unicodedata.decimal(char)) for char in digits)
    return digits


def national_core(digits: str) -> str:
    """The part of an E.164 number's digits any written form of it contains: without a 1-3
    digit country code, but at least 6 digits."""
    return digits[-max(_MIN_DIGITS, len(digits) - _MAX_COUNTRY_CODE_DIGITS):]


class RecipientHasher:
    """Redacts detail records: every phone number becomes a keyed hash, ``content`` is dropped."""

    def __init__(self, salt: str):
        if not salt:
            raise ValueError("a non-empty salt is required")
        self._key = salt.encode()

    def __repr__(self) -> str:
        return "RecipientHasher(<salt hidden>)"

    def hash_text(self, text: str) -> str:
        """``hmac:`` + hex HMAC-SHA256 of ``text``."""
        data = text.encode("utf-8", "surrogatepass")  # a lone surrogate must not crash the redaction
        return records.HASHED_RECIPIENT_PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def redact_text(self, text: str, recipient: Any = None, phone_like: bool = False) -> str:
        """``text`` with its phone numbers replaced by tokens, by the rule of the module docstring,
        for a record whose recipient is ``recipient``."""
        return _Redaction(self, recipient).text(text, phone_like, True)

    def redact_detail(self, record: Any) -> Any:
        """A copy of one detail record that is safe to store (the result of :meth:`redact_detail_walk`).

        The common record (known fields only, no nested object but ``sender``, ASCII) is checked in
        one pass over its JSON text: when no digit run in it needs a token, only ``recipient`` and
        ``content`` change. Any other record is walked value by value."""
        if record.__class__ is not dict or not _FAST_KEYS.issuperset(record):
            return self.redact_detail_walk(record)
        sender = record.get("sender")
        has_sender = sender.__class__ is dict
        if has_sender and not records.SENDER_FIELDS.issuperset(sender):
            return self.redact_detail_walk(record)
        redaction = _Redaction(self, record.get(RECIPIENT_KEY))
        redacted = dict(record)
        redacted.pop(CONTENT_KEY, None)
        has_recipient = RECIPIENT_KEY in redacted
        if has_recipient:
            redacted[RECIPIENT_KEY] = ""
        try:
            text = orjson.dumps(redacted)
        except TypeError:  # a lone surrogate, an integer beyond 64 bits
            return self.redact_detail_walk(record)
        if not text.isascii() or text.count(b"{") != 1 + has_sender or b"[" in text:
            return self.redact_detail_walk(record)
        # A run holding the recipient's digits: they are in the text once the separators are gone.
        core = redaction.core_bytes
        if core is not None and core in text.translate(None, _SEPARATOR_BYTES):
            return self.redact_detail_walk(record)
        # A "+" run: allowed once, as sender.phone itself.
        sender_phone = sender.get("phone") if has_sender else None
        exempt = sender_phone.encode() if sender_phone.__class__ is str and sender_phone.isascii() else None
        plus = text.find(b"+")
        while plus != -1:
            match = _PLUS_RUN_ASCII.match(text, plus)
            if match is not None:
                if match.group() != exempt:
                    return self.redact_detail_walk(record)
                exempt = None
            plus = text.find(b"+", plus + 1)
        if has_recipient:
            redacted[RECIPIENT_KEY] = redaction.recipient_value
        return redacted

    def redact_detail_walk(self, record: Any) -> Any:
        """:meth:`redact_detail` by visiting every key and value (nested ones included)."""
        if not isinstance(record, dict):
            return _Redaction(self, None).value(record, True)  # it will be rejected: keep no digit run
        chosen = _recipient_key(record)
        redaction = _Redaction(self, record[chosen] if chosen is not None else None)
        redacted: dict = {}
        for key, value in record.items():
            if key.__class__ is not str:
                redacted[key] = redaction.value(value, False)
                continue
            lowered = key.lower()
            if lowered == CONTENT_KEY:
                continue
            if lowered == RECIPIENT_KEY:
                if key == chosen:
                    redacted[RECIPIENT_KEY] = redaction.recipient_value
                elif value is not None and value != "" and not redaction.is_recipient(value):
                    redacted[redaction.text(key, False, True)] = redaction.value(value, True)
                continue
            if key == "sender" and value.__class__ is dict:
                redacted[key] = {k: redaction.value(v, False, plus_rule=False) if k == "phone"
                                 else redaction.value(v, k.__class__ is str and is_phone_key(k))
                                 for k, v in value.items()}
                continue
            redacted[redaction.text(key, False, True)] = redaction.value(value, is_phone_key(key))
        return redacted

    def redact_page(self, page_records: list) -> list:
        """Redact every record of a detail page."""
        return [self.redact_detail(record) for record in page_records]


def _recipient_key(record: dict) -> str | None:
    """The key that holds the record's recipient: ``recipient`` when it has a value, else the
    first other casing of it that has one, else any casing present."""
    found = [key for key in record if key.__class__ is str and len(key) == 9 and key.lower() == RECIPIENT_KEY]
    if not found:
        return None
    for key in sorted(found, key=lambda k: k != RECIPIENT_KEY):
        if record[key] is not None and record[key] != "":
            return key
    return found[0]


class _Redaction:
    """The redaction of one record: its recipient's token and the digits that identify it."""

    __slots__ = ("_core", "_e164", "_hasher", "_token", "recipient_value")

    def __init__(self, hasher: RecipientHasher, recipient: Any):
        self._hasher = hasher
        self._core: str | None = None
        self._e164: str | None = None
        self._token: str | None = None  # what a run holding the recipient's digits becomes
        self.recipient_value = recipient
        if recipient is None or recipient == "":
            return
        try:
            self._e164 = records.normalize_recipient(recipient)
        except records.RecordRejected:
            # Keep it unusable (it will be rejected) but never in clear; its digits still count.
            self.recipient_value = "invalid:" + hasher.hash_text(str(recipient))
            digits = _digits(str(recipient))
            if _MIN_DIGITS <= len(digits) <= 15:
                self._core, self._token = national_core(digits), hasher.hash_text("+" + digits)
            return
        self.recipient_value = self._token = hasher.hash_text(self._e164)
        if self._e164.startswith("+"):
            self._core = national_core(self._e164[1:])

    @property
    def core_bytes(self) -> bytes | None:
        return None if self._core is None else self._core.encode()

    def is_recipient(self, value: Any) -> bool:
        """Whether ``value`` is the same number as the chosen recipient."""
        try:
            return self._e164 is not None and records.normalize_recipient(value) == self._e164
        except records.RecordRejected:
            return False

    def value(self, value: Any, phone_like: bool, plus_rule: bool = True) -> Any:
        cls = value.__class__
        if cls is str:
            return self.text(value, phone_like, plus_rule)
        if cls is dict:
            return {self.text(k, False, True) if k.__class__ is str else k:
                    self.value(v, phone_like or k.__class__ is str and is_phone_key(k)) for k, v in value.items()}
        if cls is list:
            return [self.value(item, phone_like) for item in value]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return self._number(value, str(abs(value)), phone_like)
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
            return self._number(value, str(int(abs(value))), phone_like)
        return value

    def text(self, text: str, phone_like: bool, plus_rule: bool) -> str:
        if len(text) < _MIN_DIGITS or _CANDIDATE.search(text) is None:
            return text
        return _CANDIDATE.sub(lambda match: self._candidate(match.group(), phone_like, plus_rule), text)

    def _candidate(self, run: str, phone_like: bool, plus_rule: bool) -> str:
        digits = _digits(run)
        if self._core is not None and self._core in digits:
            return self._token
        if phone_like or plus_rule and run[0] == "+":
            return self._hasher.hash_text("+" + digits)
        return run

    def _number(self, value: float, digits: str, phone_like: bool) -> Any:
        if len(digits) < _MIN_DIGITS:
            return value
        if self._core is not None and self._core in digits:
            return self._token
        if phone_like:
            return self._hasher.hash_text("+" + digits)
        return value
