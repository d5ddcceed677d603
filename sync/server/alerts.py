"""Alerts and their webhook outbox (sync.md §5.5).

Two families:

- **event alerts** come from one event (or a declared hole) and are unique on
  ``(device_id, seq, kind)``: a re-sent batch or the ordered copy of a flash
  alert finds the row already there. The ordered copy turns a ``provisional``
  flash alert final; a different hash for that seq is a ``chain_conflict``.
- **state alerts** (offline, backlog, storage, bundle behind) have no seq and
  keep one open row per ``(device_id, kind)``; the heartbeat or the periodic
  job that sees the condition end resolves them.

Each new alert writes one ``pending`` delivery per matching webhook in the
same transaction (the webhook outbox); ``sync.server.webhooks`` sends them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, and_, select, update

from sync.server import tables as t
from sync.server.db import insert_ignore
from sync.server.derive import lst, obj
from sync.timefmt import format_ms

__all__ = [
    "SEVERITIES",
    "NewAlert",
    "alerts_for_event",
    "open_state_alert",
    "raise_alert",
    "resolve_alerts",
    "severity_at_least",
]

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
DIGIT_RUN = re.compile(r"(?<!\d)\d{11,18}(?!\d)")


def severity_at_least(severity: str, minimum: str) -> bool:
    return _RANK.get(severity, 0) >= _RANK.get(minimum, 0)


@dataclass(frozen=True)
class NewAlert:
    kind: str
    severity: str
    summary: str
    seq: int | None = None
    event_hash: str | None = None
    provisional: bool = False
    event: Mapping[str, Any] | None = None  # {"seq", "at", "clock"} of the source event
    venue: Mapping[str, Any] | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> str:
        return json.dumps({"event": self.event, "venue": self.venue, "detail": dict(self.detail)},
                          ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    site_id: str | None
    venue: Mapping[str, Any] | None = None


# -- alerts derived from events (§5.5 table) -------------------------------------------------------------

def _centi(v: Any) -> str:
    return f"{v // 100}.{v % 100:02d} °C" if isinstance(v, int) and not isinstance(v, bool) else "? °C"


def _subject_name(payload: Mapping[str, Any]) -> str:
    name = obj(payload.get("subject")).get("name_m")
    return str(name)[:32] if isinstance(name, str) and name else ""


@lru_cache(maxsize=16_384)
def name_is_masked(name: str) -> bool:
    """``name_m`` of a masked shape (credentials.md §7.2), by the project's one definition."""
    from edge.credentials.masking import looks_masked  # lazily: the server needs nothing else from edge

    return bool(looks_masked(name))


def alerts_for_event(event: Mapping[str, Any], ev_hash: str) -> list[NewAlert]:
    """The event alerts of one stored event (§5.5). Unknown kinds and odd payloads raise nothing
    but ``pii_unmasked`` checks; a payload problem never rejects a batch (§1.5)."""
    kind = event.get("kind")
    payload = obj(event.get("payload"))
    at = obj(event.get("at"))
    seq = event.get("seq")
    src = {"seq": seq, "at": at.get("wall"), "clock": at.get("clock")}
    venue = obj(payload.get("venue")) or None
    out: list[NewAlert] = []

    def add(akind: str, severity: str, summary: str, **detail: Any) -> None:
        out.append(NewAlert(kind=akind, severity=severity, summary=summary[:500], seq=seq if isinstance(seq, int)
                            else None, event_hash=ev_hash, event=src, venue=venue, detail=detail))

    name = _subject_name(payload)
    if kind == "temp_alert":
        cause = payload.get("cause")
        if cause == "fever":
            op = obj(payload.get("observation_point"))
            zh, en = str(op.get("zh") or "")[:100], str(op.get("en") or "")[:100]
            text = f"{_centi(payload.get('body_centi_c'))} {name}".strip()
            where = f"，留观点：{zh} / observation point: {en}" if (zh or en) else ""
            add("fever", "critical", f"体温异常 / fever: {text}{where}")
        elif cause == "sensor_fault":
            add("sensor_fault", "warning", "测温故障 / thermometer fault")
    elif kind == "sentinel_alert":
        flags = lst(payload.get("flags"))
        shown = ", ".join(str(f)[:32] for f in flags[:5])
        add("sentinel", "high", f"电子哨预警 / sentinel alert: {shown} {name}".strip())
    elif kind == "decision":
        level = payload.get("alert")
        if level in ("upstream", "urgent"):
            reasons = lst(payload.get("reasons"))
            shown = ", ".join(str(r)[:40] for r in reasons[:3])
            add("decision_alert", "critical" if level == "urgent" else "high",
                f"{payload.get('outcome', '?')} ({shown}) {name}".strip(), alert=level)
    elif kind == "gap":
        lost = f"seq {payload.get('from_seq')}–{payload.get('to_seq')}, {payload.get('count')} events"
        if payload.get("acked") is False:
            add("data_lost", "high", f"数据丢失 / data lost on the gate: {lost} ({payload.get('cause')})")
        elif payload.get("acked") is True:
            add("retention_cut", "info", f"提前清理已上传事件 / acknowledged events pruned early: {lost}")
    elif kind == "clock_warning":
        add("clock", "warning", f"时钟 / clock {payload.get('from')} → {payload.get('to')} ({payload.get('cause')})")
    elif kind == "bundle_rejected":
        add("bundle_rejected", "high",
            f"规则包被拒 / bundle rejected: {payload.get('reason')} v{payload.get('version')}")
    elif kind == "bundle_state":
        if payload.get("to") == "expired" or payload.get("cause") == "keys_expired":
            add("bundle_expired", "high", f"规则已过期 / rules expired ({payload.get('cause')})")
    elif kind == "device_start":
        if payload.get("unclean") is True:
            add("unclean_restart", "info", f"非正常重启 / unclean restart (quick_check {payload.get('quick_check')})")

    # Personal data that should never have left the gate unmasked (§1.4).
    problems = []
    if name and not name_is_masked(name):
        problems.append("name_m")
    note = payload.get("note")
    if kind == "override" and isinstance(note, str) and DIGIT_RUN.search(note):
        problems.append("note")
    if problems:
        add("pii_unmasked", "high", "未脱敏个人信息 / unmasked personal data in " + ", ".join(problems),
            fields=problems)
    return out


# -- writing -----------------------------------------------------------------------------------------------

_STATEMENTS: dict[tuple[str, bool], Any] = {}


def _alert_insert(conn: Connection, unique: bool) -> Any:
    """The insert statement, built once per dialect (building ``.values(...)`` per alert costs more than the insert)."""
    key = (conn.dialect.name, unique)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        base = insert_ignore(conn, t.alerts) if unique else t.alerts.insert()
        stmt = _STATEMENTS[key] = base.returning(t.alerts.c.id)
    return stmt


def _hooks(conn: Connection) -> list[tuple[int, frozenset[str], str]]:
    """Enabled webhooks, read once per transaction (kept in the connection's info until it commits)."""
    cached = conn.info.get("ck_hooks")
    if cached is not None and cached[0] is conn.get_transaction():
        return cached[1]  # type: ignore[no-any-return]
    rows = conn.execute(select(t.webhooks.c.id, t.webhooks.c.kinds, t.webhooks.c.min_severity)
                        .where(t.webhooks.c.enabled.is_(True))).all()
    hooks = [(int(r.id), frozenset(json.loads(r.kinds or "[]")), str(r.min_severity)) for r in rows]
    conn.info["ck_hooks"] = (conn.get_transaction(), hooks)
    return hooks


def raise_alert(conn: Connection, st: Any, device: DeviceInfo, alert: NewAlert, now_ms: int) -> int | None:
    """Insert an alert and its webhook deliveries; returns its id, or None if it already existed."""
    values = dict(
        created_ms=now_ms, kind=alert.kind, severity=alert.severity, device_id=device.device_id,
        site_id=device.site_id, seq=alert.seq, event_hash=alert.event_hash, provisional=alert.provisional,
        summary=alert.summary, body=alert.body(), status="open", acked_by=None, acked_ms=None, resolved_ms=None,
    )
    row = conn.execute(_alert_insert(conn, alert.seq is not None), values).first()
    if row is None:
        return None
    alert_id = int(row[0])
    st.metrics.alerts.labels(alert.kind, alert.severity).inc()
    _queue_deliveries(conn, alert_id, alert.kind, alert.severity, now_ms)
    log.info("alert id=%d kind=%s severity=%s device=%s seq=%s", alert_id, alert.kind, alert.severity,
             device.device_id, alert.seq)
    return alert_id


def _queue_deliveries(conn: Connection, alert_id: int, kind: str, severity: str, now_ms: int) -> None:
    rows = [dict(alert_id=alert_id, webhook_id=hid, status="pending", attempts=0, created_ms=now_ms,
                 next_attempt_ms=now_ms)
            for hid, kinds, minimum in _hooks(conn)
            if (not kinds or kind in kinds) and severity_at_least(severity, minimum)]
    if rows:
        conn.execute(t.alert_deliveries.insert(), rows)


def confirm_event_alert(conn: Connection, st: Any, device: DeviceInfo, alert: NewAlert, now_ms: int) -> None:
    """Store an event alert from the ordered upload: new → insert; flash copy → final; other hash → conflict."""
    if raise_alert(conn, st, device, alert, now_ms) is not None:
        return
    a = t.alerts.c
    row = conn.execute(select(a.id, a.event_hash, a.provisional).where(
        a.device_id == device.device_id, a.seq == alert.seq, a.kind == alert.kind)).first()
    if row is None:
        return
    if row.event_hash is None:
        # The data_lost alert of a skip, keyed on its gap_seq (§5.5): the gap event now names it.
        conn.execute(update(t.alerts).where(a.id == row.id).values(event_hash=alert.event_hash))
        return
    if row.event_hash == alert.event_hash:
        if row.provisional:
            conn.execute(update(t.alerts).where(a.id == row.id).values(provisional=False))
        return
    # §3.6: the flash copy of this seq had another hash than the ordered event.
    raise_alert(conn, st, device, NewAlert(
        kind="chain_conflict", severity="critical", seq=alert.seq, event_hash=alert.event_hash,
        summary=f"链冲突 / chain conflict: flash copy of seq {alert.seq} differs from the uploaded event",
        event=alert.event, venue=alert.venue, detail={"flash_hash": row.event_hash}), now_ms)


def open_state_alert(conn: Connection, st: Any, device: DeviceInfo, kind: str, severity: str, summary: str,
                     now_ms: int, **detail: Any) -> int | None:
    """One open row per (device, kind): raise it unless it is already open (or acked and not resolved)."""
    a = t.alerts.c
    exists = conn.execute(select(a.id).where(
        a.device_id == device.device_id, a.kind == kind, a.seq.is_(None), a.status != "resolved")).first()
    if exists is not None:
        return None
    return raise_alert(conn, st, device, NewAlert(kind=kind, severity=severity, summary=summary,
                                                  venue=device.venue, detail=detail), now_ms)


def resolve_alerts(conn: Connection, device_id: str, kinds: tuple[str, ...], now_ms: int) -> int:
    """Close every unresolved alert of these kinds for the device (its condition ended)."""
    a = t.alerts.c
    res = conn.execute(update(t.alerts).where(and_(
        a.device_id == device_id, a.kind.in_(kinds), a.status != "resolved",
    )).values(status="resolved", resolved_ms=now_ms))
    return int(res.rowcount or 0)


def alert_json(row: Any) -> dict[str, Any]:
    """The API form of an alert row (also the webhook body, plus ``alert_id``)."""
    try:
        body = json.loads(row.body)
    except (TypeError, ValueError):
        body = {}
    return {
        "id": row.id, "kind": row.kind, "severity": row.severity, "status": row.status,
        "provisional": bool(row.provisional), "created_at": format_ms(row.created_ms),
        "device_id": row.device_id, "site_id": row.site_id, "seq": row.seq,
        "venue": body.get("venue"), "event": body.get("event"), "summary": row.summary,
        "acked_by": row.acked_by, "acked_at": format_ms(row.acked_ms) if row.acked_ms else None,
        "resolved_at": format_ms(row.resolved_ms) if row.resolved_ms else None,
    }
