"""The one JSON time format of the project (sync.md §0).

Every time field in every JSON document of ours is UTC, exactly
``YYYY-MM-DDTHH:MM:SS.mmmZ`` (24 characters). Internally times are integer
milliseconds since the epoch: they compare, subtract and store without any
float rounding. Sub-millisecond parts are truncated, never rounded, so a
formatted time is never later than the instant it describes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sync.errors import TimeFormatError

__all__ = ["format_ms", "format_time", "from_ms", "parse_ms", "parse_time", "to_ms", "utc_now_ms"]

_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    """An aware UTC datetime for integer milliseconds since the epoch."""
    return _EPOCH + timedelta(milliseconds=ms)


def format_ms(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for integer milliseconds since the epoch."""
    dt = from_ms(ms)
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{ms % 1000:03d}Z"


def format_time(dt: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for a datetime (naive = UTC), truncated to milliseconds."""
    return format_ms(to_ms(dt))


def parse_ms(text: str) -> int:
    """Parse the strict JSON time format into epoch milliseconds.

    Raises:
        TimeFormatError: not exactly the 24-character format, or an impossible date.
    """
    if not isinstance(text, str):
        raise TimeFormatError(f"time must be a string, got {type(text).__name__}")
    m = _TIME_RE.match(text)
    if m is None:
        raise TimeFormatError(f"not a time in the form YYYY-MM-DDTHH:MM:SS.mmmZ: {text[:40]!r}")
    year, month, day, hour, minute, second, milli = (int(g) for g in m.groups())
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise TimeFormatError(f"impossible time {text!r}: {exc}") from exc
    return to_ms(dt) + milli


def parse_time(text: str) -> datetime:
    """Parse the strict JSON time format into an aware UTC datetime."""
    return from_ms(parse_ms(text))


def utc_now_ms() -> int:
    """The system wall clock in epoch ms. Only for tools and servers: gates use the trusted clock."""
    return to_ms(datetime.now(UTC))
