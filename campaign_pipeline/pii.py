"""PII handling: with ``CAMPAIGN_PII_MODE=hash`` recipients are stored as a keyed hash and SMS bodies dropped.

Redaction happens before anything reaches disk: the raw landing file already holds the hashed
recipient (``hmac:`` + HMAC-SHA256 of the E.164 number, keyed by ``CAMPAIGN_PII_SALT``) and no
``content``, so no output file keeps a phone number or a message body in clear. The hash is
deterministic for a salt, so joins and (campaign_id, recipient) uniqueness keep working.
"""

from __future__ import annotations

import hashlib
import hmac

from campaign_pipeline import records

PII_MODE_RAW = "raw"
PII_MODE_HASH = "hash"
PII_MODES = (PII_MODE_RAW, PII_MODE_HASH)


class RecipientHasher:
    """Redacts detail records: keyed hash for ``recipient``, no ``content``."""

    def __init__(self, salt: str):
        if not salt:
            raise ValueError("a non-empty salt is required")
        self._key = salt.encode()

    def __repr__(self) -> str:
        return "RecipientHasher(<salt hidden>)"

    def hash_text(self, text: str) -> str:
        """``hmac:`` + hex HMAC-SHA256 of ``text``."""
        return records.HASHED_RECIPIENT_PREFIX + hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def redact_detail(self, record):
        """A copy of one detail record that is safe to store; non-dict records are returned as-is."""
        if not isinstance(record, dict):
            return record
        redacted = dict(record)
        redacted.pop("content", None)
        value = record.get("recipient")
        if value is None or value == "":
            return redacted
        try:
            redacted["recipient"] = self.hash_text(records.normalize_recipient(value))
        except records.RecordRejected:
            # Keep it unusable (it will be rejected) but never in clear.
            redacted["recipient"] = "invalid:" + self.hash_text(str(value))
        return redacted

    def redact_page(self, page_records: list) -> list:
        """Redact every record of a detail page."""
        return [self.redact_detail(record) for record in page_records]
