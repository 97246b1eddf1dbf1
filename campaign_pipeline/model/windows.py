"""Partition windows: a calendar day in the partition timezone as a half-open UTC interval."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaign_pipeline.errors import ConfigError


def load_timezone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name`` or raise a one-line :class:`ConfigError` saying how to fix it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise ConfigError(
            f"CAMPAIGN_PARTITION_TZ={name!r} is not a known IANA timezone; use e.g. 'UTC' or 'Asia/Hong_Kong'"
        ) from None


@dataclass(frozen=True)
class PartitionWindow:
    """One daily partition: ``day`` in ``tz``, covering ``start_utc <= t < end_utc``."""

    day: date
    tz_name: str
    start_utc: datetime
    end_utc: datetime

    @classmethod
    def for_day(cls, day: date, tz_name: str = "UTC") -> PartitionWindow:
        """The window of local calendar ``day`` in ``tz_name`` (DST days are 23 or 25 hours long)."""
        tz = load_timezone(tz_name)
        start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
        return cls(day=day, tz_name=tz_name, start_utc=start, end_utc=end)

    @property
    def key(self) -> str:
        """The Dagster partition key, ``YYYY-MM-DD``."""
        return self.day.isoformat()

    def contains_us(self, epoch_us: int) -> bool:
        """True if the UTC epoch-microsecond instant falls inside this window."""
        return self._start_us <= epoch_us < self._end_us

    @property
    def _start_us(self) -> int:
        return _to_us(self.start_utc)

    @property
    def _end_us(self) -> int:
        return _to_us(self.end_utc)


def _to_us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def days_between(start: date, end: date) -> list[date]:
    """Every day from ``start`` to ``end``, both inclusive."""
    return [start + timedelta(days=offset) for offset in range((end - start).days + 1)]


def latest_complete_day(now: datetime, tz_name: str) -> date:
    """The last local calendar day in ``tz_name`` that has fully ended at ``now``."""
    return now.astimezone(load_timezone(tz_name)).date() - timedelta(days=1)
