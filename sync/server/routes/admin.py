"""Admin routes ``/v1/admin/…`` (sync.md §2.3, §2.7, §3.2, §5.5; bundles.md §6). Admin tokens only."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import delete, select, update

from sync.server import models as m
from sync.server import tables as t
from sync.server.alerts import resolve_alerts
from sync.server.auth import Principal, create_token
from sync.server.deps import State, require
from sync.server.enrollment import create_device, issue_code
from sync.server.errors import ApiError
from sync.timefmt import format_ms

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require("admin"))])
DeviceId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
_ERR: dict[int | str, dict[str, Any]] = {c: {"model": m.ErrorBody} for c in (401, 403, 404, 409, 422, 429)}


def _created(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=201)


# -- sites and devices ------------------------------------------------------------------------------------

@router.post("/sites", status_code=201, response_model=m.SiteOut, responses=_ERR, summary="Create a site")
def create_site(body: m.SiteIn, st: State) -> JSONResponse:
    with st.db.write() as conn:
        if conn.execute(select(t.sites.c.site_id).where(t.sites.c.site_id == body.site_id)).first():
            raise ApiError(409, "site_exists", f"site {body.site_id} exists")
        conn.execute(t.sites.insert().values(site_id=body.site_id, name=body.name, tz=body.tz,
                                             created_ms=st.now_ms()))
    return _created(body.model_dump())


@router.post("/devices", status_code=201, response_model=m.DeviceCreated, responses=_ERR,
             summary="Create a pending device and its enrolment code (§2.3)")
def add_device(body: m.DeviceIn, st: State) -> JSONResponse:
    with st.db.write() as conn:
        out = create_device(conn, device_id=body.device_id, site_id=body.site_id, venue=body.venue.model_dump(),
                            firm_id=body.firm_id, label=body.label, now_ms=st.now_ms())
    return _created(out)


@router.post("/devices/{device_id}/enrollment-code", status_code=201, response_model=m.DeviceCreated,
             responses=_ERR, summary="A new enrolment code while the device is pending")
def new_enrollment_code(device_id: DeviceId, st: State) -> JSONResponse:
    with st.db.write() as conn:
        return _created(issue_code(conn, device_id, st.now_ms()))


def _set_status(st: Any, device_id: str, status: str, allowed_from: tuple[str, ...]) -> dict[str, Any]:
    now = st.now_ms()
    with st.db.write() as conn:
        dev = conn.execute(select(t.devices.c.status).where(t.devices.c.device_id == device_id)).first()
        if dev is None:
            raise ApiError(404, "not_found", "no such device")
        if dev.status == status:
            return {"device_id": device_id, "status": status}
        if dev.status not in allowed_from:
            raise ApiError(409, "bad_state", f"device is {dev.status}")
        values: dict[str, Any] = {"status": status}
        if status == "revoked":
            values["revoked_ms"] = now
        if status == "retired":
            resolve_alerts(conn, device_id, ("chain_conflict",), now)
        conn.execute(update(t.devices).where(t.devices.c.device_id == device_id).values(**values))
    log.warning("device %s device=%s", status, device_id)
    return {"device_id": device_id, "status": status}


@router.post("/devices/{device_id}/revoke", response_model=m.DeviceStatusOut, responses=_ERR,
             summary="Stop accepting the device's key (§2.1)")
def revoke_device(device_id: DeviceId, st: State) -> dict[str, Any]:
    return _set_status(st, device_id, "revoked", ("pending", "active"))


@router.post("/devices/{device_id}/retire", response_model=m.DeviceStatusOut, responses=_ERR,
             summary="Hardware replaced: read-only for ever (§2.1)")
def retire_device(device_id: DeviceId, st: State) -> dict[str, Any]:
    return _set_status(st, device_id, "retired", ("pending", "active", "revoked"))


@router.post("/devices/{device_id}/clear-conflict", response_model=m.DeviceStatusOut, responses=_ERR,
             summary="Accept uploads again if the gate continues from the stored head (§3.2 step 8)")
def clear_conflict(device_id: DeviceId, st: State) -> dict[str, Any]:
    now = st.now_ms()
    with st.db.write() as conn:
        dev = conn.execute(select(t.devices.c.status).where(t.devices.c.device_id == device_id)).first()
        if dev is None:
            raise ApiError(404, "not_found", "no such device")
        conn.execute(update(t.devices).where(t.devices.c.device_id == device_id).values(
            conflict=False, conflict_seq=None))
        resolve_alerts(conn, device_id, ("chain_conflict",), now)
    log.warning("conflict cleared device=%s", device_id)
    return {"device_id": device_id, "status": dev.status}


# -- tokens ----------------------------------------------------------------------------------------------------

@router.post("/tokens", status_code=201, response_model=m.TokenCreated, responses=_ERR,
             summary="Create an admin or auditor token (shown once)")
def add_token(body: m.TokenIn, st: State) -> JSONResponse:
    now = st.now_ms()
    with st.db.write() as conn:
        token, tid = create_token(conn, role=body.role, name=body.name, now_ms=now, expires_days=body.expires_days)
    log.info("token created id=%d role=%s prefix=%s", tid, body.role, token[:8])
    return _created({"id": tid, "token": token, "prefix": token[:8], "role": body.role, "name": body.name,
                     "expires_at": format_ms(now + body.expires_days * 86_400_000) if body.expires_days else None})


def _ms(v: int | None) -> str | None:
    return format_ms(v) if v is not None else None


@router.get("/tokens", response_model=list[m.TokenOut], responses=_ERR, summary="List tokens (never the tokens)")
def list_tokens(st: State) -> list[dict[str, Any]]:
    with st.db.read() as conn:
        rows = conn.execute(select(t.api_tokens).order_by(t.api_tokens.c.id)).all()
    return [{"id": r.id, "name": r.name, "role": r.role, "prefix": r.prefix, "created_at": format_ms(r.created_ms),
             "expires_at": _ms(r.expires_ms), "revoked_at": _ms(r.revoked_ms), "last_used_at": _ms(r.last_used_ms)}
            for r in rows]


@router.delete("/tokens/{token_id}", status_code=204, responses=_ERR, summary="Revoke a token")
def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**53)], st: State) -> Response:
    with st.db.write() as conn:
        res = conn.execute(update(t.api_tokens).where(t.api_tokens.c.id == token_id,
                                                      t.api_tokens.c.revoked_ms.is_(None))
                           .values(revoked_ms=st.now_ms()))
        if res.rowcount == 0 and conn.execute(select(t.api_tokens.c.id).where(
                t.api_tokens.c.id == token_id)).first() is None:
            raise ApiError(404, "not_found", "no such token")
    return Response(status_code=204)


# -- webhooks ----------------------------------------------------------------------------------------------------

def _hook(r: Any) -> dict[str, Any]:
    return {"id": r.id, "url": r.url, "kinds": json.loads(r.kinds), "min_severity": r.min_severity,
            "enabled": bool(r.enabled), "created_by": r.created_by}


@router.post("/webhooks", status_code=201, response_model=m.WebhookOut, responses=_ERR,
             summary="Deliver alerts to a URL (§5.5)")
def add_webhook(body: m.WebhookIn, st: State, request: Request) -> JSONResponse:
    who: Principal = request.state.principal
    with st.db.write() as conn:
        wid = conn.execute(t.webhooks.insert().values(
            url=body.url, secret=body.secret, kinds=json.dumps(sorted(set(body.kinds))),
            min_severity=body.min_severity, enabled=True, created_by=who.name, created_ms=st.now_ms(),
        ).returning(t.webhooks.c.id)).scalar_one()
        row = conn.execute(select(t.webhooks).where(t.webhooks.c.id == wid)).one()
    return _created(_hook(row))


@router.get("/webhooks", response_model=list[m.WebhookOut], responses=_ERR, summary="List webhooks (no secrets)")
def list_webhooks(st: State) -> list[dict[str, Any]]:
    with st.db.read() as conn:
        return [_hook(r) for r in conn.execute(select(t.webhooks).order_by(t.webhooks.c.id)).all()]


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=_ERR, summary="Remove a webhook")
def delete_webhook(webhook_id: Annotated[int, Path(ge=1, le=2**53)], st: State) -> Response:
    with st.db.write() as conn:
        conn.execute(delete(t.alert_deliveries).where(t.alert_deliveries.c.webhook_id == webhook_id))
        res = conn.execute(delete(t.webhooks).where(t.webhooks.c.id == webhook_id))
        if res.rowcount == 0:
            raise ApiError(404, "not_found", "no such webhook")
    return Response(status_code=204)
