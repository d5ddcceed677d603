"""Auditor routes (sync.md §5.4, §5.5, §5.8): fleet, trace, reports, export, alerts.

Everything here is read-only for auditors except acknowledging an alert.
Trace and export requests are written to ``audit_log`` with person ids
replaced by their pids; ``include_pid=1`` on exports is for admins only.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy import and_, select, update

from sync.server import models as m
from sync.server import tables as t
from sync.server.alerts import SEVERITIES, alert_json
from sync.server.audit import (
    MAX_EXPORT_DAYS,
    MAX_LIMIT,
    ExportQuery,
    daily_report,
    decode_cursor,
    export_csv,
    parse_window,
    person_pids,
    report_csv,
    trace_person,
    trace_venue,
)
from sync.server.auth import Principal
from sync.server.deps import State, audit, require
from sync.server.errors import ApiError
from sync.server.fleet import device_detail, fleet_devices

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["audit"], dependencies=[Depends(require("auditor"))])
heavy = APIRouter(tags=["audit"], dependencies=[Depends(require("auditor", heavy=True))])
_ERR: dict[int | str, dict[str, Any]] = {c: {"model": m.ErrorBody} for c in (401, 403, 404, 422, 429)}
IdQ = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _who(request: Request) -> Principal:
    return request.state.principal  # type: ignore[no-any-return]


@router.get("/v1/fleet/devices", responses=_ERR, summary="One row per gate, worst first (§5.8)")
def get_fleet(st: State, site_id: IdQ = None) -> list[dict[str, Any]]:
    with st.db.read() as conn:
        return fleet_devices(conn, st.now_ms(), st.config.offline_after_s, site_id)


@router.get("/v1/fleet/devices/{device_id}", responses=_ERR, summary="One gate: heartbeats, holes, alerts")
def get_device(device_id: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")], st: State) -> dict[str, Any]:
    with st.db.read() as conn:
        out = device_detail(conn, device_id, st.now_ms(), st.config.offline_after_s)
    if out is None:
        raise ApiError(404, "not_found", "no such device")
    return out


@router.get("/v1/fleet/sites", responses=_ERR, response_model=list[m.SiteOut], summary="Sites")
def get_sites(st: State) -> list[dict[str, Any]]:
    with st.db.read() as conn:
        return [dict(site_id=r.site_id, name=r.name, tz=r.tz)
                for r in conn.execute(select(t.sites).order_by(t.sites.c.site_id)).all()]


@heavy.get("/v1/trace/venue", response_model=m.TracePage, responses=_ERR,
           summary="Who was at venue V between t1 and t2 (§5.4)")
def get_trace_venue(
    request: Request, st: State,
    venue_id: Annotated[str, Query(min_length=1, max_length=32)],
    from_: Annotated[str, Query(alias="from", min_length=1, max_length=40)],
    to: Annotated[str, Query(min_length=1, max_length=40)],
    limit: Limit = 1000,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    w = parse_window(from_, to)
    decode_cursor(cursor)
    with st.db.write() as conn:
        audit(conn, _who(request), "/v1/trace/venue", {"venue_id": venue_id, "from": from_, "to": to,
                                                      "limit": limit, "cursor": cursor}, st.now_ms())
    with st.db.read() as conn:
        return trace_venue(conn, venue_id, w, limit=limit, cursor=cursor)


@heavy.post("/v1/trace/person", response_model=m.TracePage, responses=_ERR,
            summary="Where was person P between t1 and t2 (§5.4; POST keeps ids out of URLs)")
def post_trace_person(body: m.PersonTraceIn, request: Request, st: State) -> dict[str, Any]:
    w = parse_window(body.from_, body.to)
    decode_cursor(body.cursor)
    pids = person_pids(st.pid_keys, body.id_type, body.id, body.pid)
    with st.db.write() as conn:
        audit(conn, _who(request), "/v1/trace/person", {"pids": pids, "from": body.from_, "to": body.to,
                                                       "limit": body.limit}, st.now_ms())
    with st.db.read() as conn:
        return trace_person(conn, pids, w, limit=body.limit, cursor=body.cursor)


@router.get("/v1/reports/daily", response_model=m.DailyReport, responses=_ERR,
            summary="Daily site report (§5.4); format=csv for a spreadsheet")
def get_daily(
    st: State,
    site_id: Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")],
    day: Annotated[str, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")],
    format: Annotated[str, Query(pattern=r"^(json|csv)$")] = "json",
) -> Any:
    with st.db.read() as conn:
        report = daily_report(conn, site_id, day, st.now_ms())
    if format == "csv":
        return PlainTextResponse(report_csv(report), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="report-{site_id}-{day}.csv"'})
    return report


@heavy.get("/v1/export/events.csv", responses={**_ERR, 200: {"content": {"text/csv": {}}}},
           summary="Events as CSV, masked (§5.4; at most 31 days)")
def get_export(
    request: Request, st: State,
    from_: Annotated[str, Query(alias="from", min_length=1, max_length=40)],
    to: Annotated[str, Query(min_length=1, max_length=40)],
    site_id: IdQ = None,
    venue_id: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    kinds: Annotated[str, Query(max_length=400, pattern=r"^[a-z0-9_,]*$")] = "decision,override,temp_alert",
    include_pid: Annotated[int, Query(ge=0, le=1)] = 0,
) -> StreamingResponse:
    who = _who(request)
    if include_pid and not who.is_admin:
        raise ApiError(403, "forbidden", "include_pid=1 needs an admin token")
    if site_id is None and venue_id is None:
        raise ApiError(422, "invalid_request", "give site_id or venue_id")
    w = parse_window(from_, to, max_days=MAX_EXPORT_DAYS)
    q = ExportQuery(window=w, site_id=site_id, venue_id=venue_id,
                    kinds=tuple(k for k in kinds.split(",") if k), include_pid=bool(include_pid))
    with st.db.write() as conn:
        audit(conn, who, "/v1/export/events.csv", {"site_id": site_id, "venue_id": venue_id, "from": from_,
                                                   "to": to, "kinds": kinds, "include_pid": include_pid},
              st.now_ms())
    if site_id is not None:
        with st.db.read() as conn:  # unknown site → 404 before the stream starts
            from sync.server.audit import export_where

            export_where(conn, q)

    def stream() -> Any:
        with st.db.read() as conn:
            yield from export_csv(conn, q)

    name = f"events-{site_id or venue_id}-{from_[:10]}.csv"
    return StreamingResponse(stream(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/v1/alerts", response_model=m.AlertPage, responses=_ERR, summary="Alerts (§5.5)")
def get_alerts(
    st: State,
    status: Annotated[str | None, Query(pattern=r"^(open|acked|resolved)$")] = None,
    site_id: IdQ = None,
    device_id: IdQ = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    min_severity: Annotated[str | None, Query(pattern=r"^(info|warning|high|critical)$")] = None,
    limit: Limit = 1000,
    cursor: Annotated[int | None, Query(ge=1, le=2**53)] = None,
) -> dict[str, Any]:
    a = t.alerts.c
    cond = []
    if status:
        cond.append(a.status == status)
    if site_id:
        cond.append(a.site_id == site_id)
    if device_id:
        cond.append(a.device_id == device_id)
    if kind:
        cond.append(a.kind == kind)
    if min_severity:
        cond.append(a.severity.in_(SEVERITIES[SEVERITIES.index(min_severity):]))
    if cursor:
        cond.append(a.id < cursor)
    with st.db.read() as conn:
        rows = conn.execute(select(t.alerts).where(and_(True, *cond)).order_by(a.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [alert_json(r) for r in rows], "next_cursor": str(rows[-1].id) if more else None}


@router.post("/v1/alerts/{alert_id}/ack", responses=_ERR, summary="Acknowledge an alert")
def ack_alert(alert_id: Annotated[int, Path(ge=1, le=2**53)], request: Request, st: State) -> dict[str, Any]:
    who = _who(request)
    now = st.now_ms()
    with st.db.write() as conn:
        a = t.alerts.c
        row = conn.execute(select(t.alerts).where(a.id == alert_id)).first()
        if row is None:
            raise ApiError(404, "not_found", "no such alert")
        if row.status == "open":
            conn.execute(update(t.alerts).where(a.id == alert_id).values(status="acked", acked_by=who.name,
                                                                         acked_ms=now))
        row = conn.execute(select(t.alerts).where(a.id == alert_id)).one()
    log.info("alert acked id=%d by token=%d", alert_id, who.token_id)
    return alert_json(row)
