"""Trace queries, the daily report and the CSV export (sync.md §5.3-5.4).

The queries are the ones of §5.3, on the indexes built for them: ``(venue_id,
at_ms)`` for "who was at venue V", the partial ``(pid, at_ms)`` for "where was
person P", ``(site_id, day, kind)`` for the report and site exports. Pages are
keyset pages on ``(at_ms, device_id, seq)``; the cursor is opaque to callers.
Every answer counts the rows whose time is not ``synced`` (lower bounds or
unverified). A person's id is turned into pids under every pid key and never
logged or stored; the audit log gets the pids.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, tuple_

from sync.events import pid as make_pid
from sync.server import tables as t
from sync.server.alerts import DIGIT_RUN
from sync.server.derive import lst, obj, zone
from sync.server.errors import ApiError
from sync.timefmt import format_ms, to_ms

__all__ = [
    "ExportQuery",
    "Window",
    "daily_report",
    "export_csv",
    "hourly_series",
    "parse_window",
    "trace_person",
    "trace_venue",
]

MAX_LIMIT = 10_000
MAX_EXPORT_DAYS = 31
_E = t.events.c
TRACE_KINDS = ("decision", "override")


@dataclass(frozen=True)
class Window:
    from_ms: int
    to_ms: int


def parse_instant(text: str, name: str) -> int:
    """ISO 8601 with an offset (``Z`` or ``+08:00``) → epoch ms; a time without offset is refused."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"{name}: not an ISO 8601 time: {text[:40]!r}") from exc
    if dt.tzinfo is None:
        raise ApiError(422, "invalid_request", f"{name}: add an offset (Z or +08:00) to {text[:40]!r}")
    return to_ms(dt.astimezone(UTC))


def parse_window(frm: str, to: str, *, max_days: int | None = None) -> Window:
    w = Window(parse_instant(frm, "from"), parse_instant(to, "to"))
    if w.to_ms <= w.from_ms:
        raise ApiError(422, "invalid_request", "to must be after from")
    if max_days is not None and w.to_ms - w.from_ms > max_days * 86_400_000:
        raise ApiError(422, "invalid_request", f"at most {max_days} days per request")
    return w


def encode_cursor(at_ms: int, device_id: str, seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([at_ms, device_id, seq]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[int, str, int] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_ms, device_id, seq = json.loads(raw)
        if type(at_ms) is int and isinstance(device_id, str) and type(seq) is int:
            return at_ms, device_id, seq
    except (ValueError, TypeError):
        pass
    raise ApiError(422, "invalid_request", "cursor is not one this server issued")


def _page(conn: Connection, cols: list[Any], where: Any, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(422, "invalid_request", f"limit must be 1..{MAX_LIMIT}")
    after = decode_cursor(cursor)
    cond = [where]
    if after is not None:
        cond.append(tuple_(_E.at_ms, _E.device_id, _E.seq) > tuple_(*after))
    rows = list(conn.execute(select(*cols).where(and_(*cond)).order_by(_E.at_ms, _E.device_id, _E.seq)
                             .limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1].at_ms, rows[-1].device_id, rows[-1].seq) if more else None
    return rows, nxt


def _item(r: Any, *, person: bool) -> dict[str, Any]:
    item = {"at": format_ms(r.at_ms) if r.at_ms is not None else None, "clock": r.clock, "device_id": r.device_id,
            "seq": r.seq, "kind": r.kind, "result": r.result, "zone": r.zone, "door": r.door,
            "temp_centi_c": r.temp_centi_c}
    if person:
        item["venue_id"] = r.venue_id
    else:
        item.update(pid=r.pid, name_m=r.name_m, role=r.role, firm_id=r.firm_id)
    return item


def trace_venue(conn: Connection, venue_id: str, w: Window, *, limit: int, cursor: str | None) -> dict[str, Any]:
    cols = [_E.at_ms, _E.clock, _E.device_id, _E.seq, _E.kind, _E.result, _E.zone, _E.door, _E.pid, _E.name_m,
            _E.role, _E.firm_id, _E.temp_centi_c]
    where = and_(_E.venue_id == venue_id, _E.at_ms >= w.from_ms, _E.at_ms < w.to_ms, _E.kind.in_(TRACE_KINDS))
    rows, nxt = _page(conn, cols, where, limit, cursor)
    items = [_item(r, person=False) for r in rows]
    return {"venue_id": venue_id, "from": format_ms(w.from_ms), "to": format_ms(w.to_ms), "items": items,
            "untrusted_time_items": sum(1 for i in items if i["clock"] != "synced"), "next_cursor": nxt}


def person_pids(pid_keys: dict[int, bytes], id_type: str | None, ident: str | None, pid: str | None) -> list[str]:
    """The person's pid under every pid key (sync.md §5.4), or the pid given."""
    if pid is not None:
        if id_type is not None or ident is not None:
            raise ApiError(422, "invalid_request", "give either pid, or id_type and id")
        return [pid]
    if id_type is None or ident is None:
        raise ApiError(422, "invalid_request", "give either pid, or id_type and id")
    if id_type == "SUB" and not re.fullmatch(r"[0-9a-f]{32}", ident):
        raise ApiError(422, "invalid_request", "a SUB id is 32 lowercase hex (credentials.md §7.1)")
    return [make_pid(key, id_type, ident) for _, key in sorted(pid_keys.items())]


def trace_person(conn: Connection, pids: list[str], w: Window, *, limit: int, cursor: str | None) -> dict[str, Any]:
    cols = [_E.at_ms, _E.clock, _E.device_id, _E.seq, _E.kind, _E.result, _E.venue_id, _E.zone, _E.door,
            _E.temp_centi_c]
    where = and_(_E.pid.in_(pids), _E.at_ms >= w.from_ms, _E.at_ms < w.to_ms)
    rows, nxt = _page(conn, cols, where, limit, cursor)
    items = [_item(r, person=True) for r in rows]
    return {"pids": pids, "from": format_ms(w.from_ms), "to": format_ms(w.to_ms), "items": items,
            "untrusted_time_items": sum(1 for i in items if i["clock"] != "synced"), "next_cursor": nxt}


# -- daily report ------------------------------------------------------------------------------------------------

def _site(conn: Connection, site_id: str) -> Any:
    row = conn.execute(select(t.sites).where(t.sites.c.site_id == site_id)).first()
    if row is None:
        raise ApiError(404, "not_found", "no such site")
    return row


def day_bounds(day: str, tz: str) -> tuple[int, int]:
    """Epoch ms of the local midnight starting ``day`` and of the next one."""
    try:
        d = date.fromisoformat(day)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", "day must be YYYY-MM-DD") from exc
    z = zone(tz)
    start = datetime(d.year, d.month, d.day, tzinfo=z)
    end = datetime.combine(d + timedelta(days=1), datetime.min.time(), tzinfo=z)
    return to_ms(start.astimezone(UTC)), to_ms(end.astimezone(UTC))


def daily_report(conn: Connection, site_id: str, day: str, now_ms: int) -> dict[str, Any]:
    site = _site(conn, site_id)
    _, day_end = day_bounds(day, site.tz)
    counts: dict[tuple[str, str | None], int] = {}
    for r in conn.execute(select(_E.kind, _E.result, func.count()).where(_E.site_id == site_id, _E.day == day)
                          .group_by(_E.kind, _E.result)).all():
        counts[(r[0], r[1])] = int(r[2])
    is_decision = _E.kind == "decision"
    people, reporting, untrusted = conn.execute(select(
        func.count(func.distinct(_E.pid)).filter(is_decision),
        func.count(func.distinct(_E.device_id)),
        func.count().filter(and_(is_decision, or_(_E.clock.is_(None), _E.clock != "synced"))),
    ).where(_E.site_id == site_id, _E.day == day)).one()
    d = t.devices.c
    pending = conn.execute(select(d.device_id).where(
        d.site_id == site_id, d.status == "active",
        or_(d.hb_backlog > 0, d.last_heartbeat_ms.is_(None), d.last_heartbeat_ms < day_end),
    ).order_by(d.device_id)).scalars().all()

    def n(kind: str, result: str | None = None) -> int:
        if result is None:
            return sum(v for (k, _), v in counts.items() if k == kind)
        return counts.get((kind, result), 0)

    return {
        "site_id": site_id, "day": day, "tz": site.tz,
        "checked": n("decision"), "people": int(people or 0),
        "admitted": n("decision", "admit"), "denied": n("decision", "deny"), "referred": n("decision", "refer"),
        "fevers": n("temp_alert", "fever"), "overrides": n("override"), "sentinel_alerts": n("sentinel_alert"),
        "data_gaps": n("gap", "lost"), "devices_reporting": int(reporting or 0), "untrusted_time": int(untrusted or 0),
        "pending_devices": list(pending) if day_end > now_ms - 86_400_000 * 60 else [],
    }


def hourly_series(conn: Connection, site_id: str, day: str) -> list[dict[str, int]]:
    """Decisions, denials and fevers per local hour of the day (the dashboard chart)."""
    site = _site(conn, site_id)
    start, end = day_bounds(day, site.tz)
    hours = (end - start) // 3_600_000
    series = [{"hour": h, "decisions": 0, "denials": 0, "fevers": 0} for h in range(hours)]
    bucket = ((_E.at_ms - start) // 3_600_000).label("h")
    rows = conn.execute(select(bucket, _E.kind, _E.result, func.count()).where(
        _E.site_id == site_id, _E.day == day, _E.at_ms >= start, _E.at_ms < end,
        _E.kind.in_(("decision", "temp_alert"))).group_by(bucket, _E.kind, _E.result)).all()
    for h, kind, result, c in rows:
        i = int(h)
        if not 0 <= i < hours:
            continue
        if kind == "decision":
            series[i]["decisions"] += int(c)
            if result == "deny":
                series[i]["denials"] += int(c)
        elif result == "fever":
            series[i]["fevers"] += int(c)
    return series


def report_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    keys = [k for k in report if k != "pending_devices"] + ["pending_devices"]
    w.writerow(keys)
    w.writerow([";".join(report[k]) if k == "pending_devices" else report[k] for k in keys])
    return "\ufeff" + buf.getvalue()


# -- CSV export (§5.4) ------------------------------------------------------------------------------------------

EXPORT_COLUMNS = ["at", "clock", "site_id", "venue_id", "zone", "door", "device_id", "seq", "kind", "result",
                  "name_m", "role", "firm_id", "temp_c", "reasons", "note"]


@dataclass(frozen=True)
class ExportQuery:
    window: Window
    site_id: str | None
    venue_id: str | None
    kinds: tuple[str, ...]
    include_pid: bool


def _cell(v: Any) -> str:
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@") else s


def _temp(v: int | None) -> str:
    if v is None:
        return ""
    sign = "-" if v < 0 else ""
    return f"{sign}{abs(v) // 100}.{abs(v) % 100:02d}"


def export_where(conn: Connection, q: ExportQuery) -> Any:
    cond = [_E.at_ms >= q.window.from_ms, _E.at_ms < q.window.to_ms]
    if q.site_id is not None:
        site = _site(conn, q.site_id)
        cond.append(_E.site_id == q.site_id)
        # Use (site_id, day, kind): the local days the window touches.
        first = datetime.fromtimestamp(q.window.from_ms / 1000, zone(site.tz)).date()
        last = datetime.fromtimestamp((q.window.to_ms - 1) / 1000, zone(site.tz)).date()
        cond.append(_E.day.between(first.isoformat(), last.isoformat()))
    if q.venue_id is not None:
        cond.append(_E.venue_id == q.venue_id)
    if q.kinds:
        cond.append(_E.kind.in_(q.kinds))
    return and_(*cond)


def export_count(conn: Connection, q: ExportQuery) -> int:
    return int(conn.execute(select(func.count()).where(export_where(conn, q))).scalar() or 0)


def export_csv(conn: Connection, q: ExportQuery, *, chunk: int = 1000) -> Iterator[str]:
    """The CSV text in pieces: BOM + header, then rows (RFC 4180, CRLF), masked again on the way out."""
    from edge.credentials.masking import mask_name  # lazily: the one masking definition of the project

    tz_of = {r.site_id: r.tz for r in conn.execute(select(t.sites.c.site_id, t.sites.c.tz)).all()}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(EXPORT_COLUMNS + (["pid"] if q.include_pid else []))
    yield "\ufeff" + buf.getvalue()
    stmt = (select(_E.at_ms, _E.clock, _E.site_id, _E.venue_id, _E.zone, _E.door, _E.device_id, _E.seq, _E.kind,
                   _E.result, _E.name_m, _E.role, _E.firm_id, _E.temp_centi_c, _E.pid, _E.body)
            .where(export_where(conn, q)).order_by(_E.at_ms, _E.device_id, _E.seq))
    result = conn.execution_options(stream_results=True, yield_per=chunk).execute(stmt)
    for part in result.partitions():
        buf.seek(0)
        buf.truncate()
        for r in part:
            tz = zone(tz_of.get(r.site_id) or "Asia/Shanghai")
            at = datetime.fromtimestamp(r.at_ms / 1000, tz).isoformat(timespec="milliseconds")
            try:
                payload = obj(obj(json.loads(r.body)).get("payload"))
            except ValueError:
                payload = {}
            reasons = lst(payload.get("reasons"))
            raw_note = payload.get("note")
            note = DIGIT_RUN.sub(lambda mm: "*" * len(mm.group(0)), raw_note if isinstance(raw_note, str) else "")
            row = [at, r.clock, r.site_id, r.venue_id, r.zone, r.door, r.device_id, r.seq, r.kind, r.result,
                   mask_name(r.name_m) if r.name_m else "", r.role, r.firm_id, _temp(r.temp_centi_c),
                   ";".join(str(x) for x in reasons), note]
            if q.include_pid:
                row.append(r.pid)
            w.writerow([_cell(v) for v in row])
        yield buf.getvalue()
