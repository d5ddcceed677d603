"""Columns the server copies out of an event at ingest (sync.md §5.2, §1.5 "result" column).

Queries never look inside JSON (§5.1): what a trace, a report or an export
needs is copied into columns here, once. Payloads come from gates and are
checked only as far as storing them needs: a field of the wrong type or length
becomes NULL (or is cut to the column's length) instead of failing the batch,
because a payload problem must never wedge a gate (§1.5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sync.errors import TimeFormatError
from sync.timefmt import to_ms

__all__ = ["derived_columns", "local_day", "lst", "obj", "zone"]

_INT32 = 2**31 - 1
_RESULT_FIELD = {
    "decision": "outcome",
    "override": "to",
    "temp_alert": "cause",
    "bundle_rejected": "reason",
    "bundle_state": "to",
    "clock_warning": "to",
    "device_start": "reason",
    "device_stop": "reason",
    "material_scan": "result",
    "venue_bound": "source",
}


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("Asia/Shanghai")


def local_day(ms: int, tz: str) -> str:
    """``YYYY-MM-DD`` of an instant in a site's time zone."""
    return _day_of_quarter_hour(ms // 900_000, tz)


@lru_cache(maxsize=65_536)
def _day_of_quarter_hour(q: int, tz: str) -> str:
    # Every UTC offset and every transition of the tz database falls on a quarter hour, so all
    # instants of one UTC quarter hour share their local date: one computation per 15 minutes.
    return datetime.fromtimestamp(q * 900, zone(tz)).date().isoformat()


_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z$")


@lru_cache(maxsize=4096)
def _midnight_ms(date: str) -> int:
    try:
        return to_ms(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC))
    except ValueError as exc:
        raise TimeFormatError(f"impossible date {date!r}") from exc


def wall_ms(text: Any) -> int | None:
    """``sync.timefmt.parse_ms`` for the event's ``at.wall`` (None when it is not a valid time), cached by day."""
    if not isinstance(text, str):
        return None
    m = _TIME_RE.match(text)
    if m is None:
        return None
    hh, mm, ss = int(m.group(2)), int(m.group(3)), int(m.group(4))
    if hh > 23 or mm > 59 or ss > 59:
        return None
    try:
        day = _midnight_ms(m.group(1))
    except TimeFormatError:
        return None
    return day + ((hh * 60 + mm) * 60 + ss) * 1000 + int(m.group(5))


def obj(v: Any) -> dict[str, Any]:
    """``v`` if it is a JSON object, else an empty one (payloads are checked only as far as needed)."""
    return v if isinstance(v, dict) else {}


def lst(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _s(v: Any, n: int) -> str | None:
    return v[:n] if isinstance(v, str) else None


def _i(v: Any) -> int | None:
    return v if type(v) is int and -_INT32 <= v <= _INT32 else None


def result_of(kind: str, payload: Mapping[str, Any]) -> str | None:
    if kind == "sentinel_alert":
        return "sentinel"
    if kind == "gap":
        acked = payload.get("acked")
        return "local" if acked is True else "lost" if acked is False else None
    fld = _RESULT_FIELD.get(kind)
    return _s(payload.get(fld), 32) if fld else None


def derived_columns(event: Mapping[str, Any], *, site_id: str | None, tz: str, device_venue: Mapping[str, Any],
                    received_ms: int) -> dict[str, Any]:
    """Everything but ``device_id``, ``seq``, hashes and body for one ``events`` row."""
    kind = str(event.get("kind"))
    at = obj(event.get("at"))
    payload = obj(event.get("payload"))
    at_ms = wall_ms(at.get("wall"))
    clock = at.get("clock")
    venue: Mapping[str, Any] = obj(payload.get("venue")) or device_venue
    subj = obj(payload.get("subject"))
    temp = _i(payload.get("body_centi_c"))
    if temp is None:
        temp = _i(obj(payload.get("temp")).get("body_centi_c"))
    return {
        "kind": kind,
        "at_ms": at_ms,
        "clock": clock if clock in ("synced", "floor", "untrusted") else None,
        "site_id": site_id,
        "day": local_day(at_ms if at_ms is not None else received_ms, tz),
        "venue_id": _s(venue.get("venue_id"), 32),
        "zone": _s(venue.get("zone"), 32),
        "door": _s(venue.get("door"), 32),
        "pid": _s(subj.get("pid"), 32),
        "name_m": _s(subj.get("name_m"), 64),
        "role": _s(subj.get("role"), 32),
        "firm_id": _s(subj.get("firm_id"), 32),
        "result": result_of(kind, payload),
        "temp_centi_c": temp,
        "received_ms": received_ms,
    }
