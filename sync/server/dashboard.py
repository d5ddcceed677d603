"""Fleet dashboard pages (sync.md §5.8; issue 10 item 4), server-rendered, no external assets, no script.

- ``/login`` takes an admin or auditor token and keeps it in a cookie
  (``HttpOnly; Secure; SameSite=Strict``, 8 h, §2.7); every page checks it again,
  so revoking the token ends the session.
- Every form POST carries a CSRF token bound to the session's token (HMAC with a
  secret derived from the server key), on top of ``SameSite=Strict``.
- Pages: the fleet table (worst first, refresh 30 s, ``?site_id=``), one gate
  (last 50 heartbeats, holes, conflicts, open alerts), alerts (auditors may
  acknowledge), the trace form (person ids only in POST bodies, every query in
  the audit log), the daily report with an SVG chart of decisions, denials
  and fevers per hour, and — for admins — the normal/emergency switch, which
  publishes only after a confirmation page.
- Sent with a Content-Security-Policy that allows no script and nothing from
  outside the server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from sync.server import tables as t
from sync.server.alerts import alert_json
from sync.server.audit import (
    daily_report,
    hourly_series,
    parse_window,
    person_pids,
    trace_person,
    trace_venue,
)
from sync.server.auth import COOKIE, Principal, client_ip, hash_token, principal_from_token
from sync.server.chart import hourly_chart
from sync.server.deps import audit
from sync.server.derive import zone
from sync.server.errors import ApiError
from sync.server.fleet import device_detail, fleet_devices
from sync.server.publish import FLEET_SCOPE, manifest_mode, publish_mode
from sync.server.state import ServerState
from sync.timefmt import format_ms

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
_env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
ZONES = ("Asia/Shanghai", "Asia/Urumqi", "Asia/Hong_Kong", "UTC")
CONFIRM_TTL_S = 300
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _st(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]


def _session(request: Request) -> tuple[Principal | None, str | None]:
    st = _st(request)
    token = request.cookies.get(COOKIE)
    p = principal_from_token(st, token)
    if p is not None:
        rl = st.config.rate_limit
        st.limiter.check("admin" if p.is_admin else "auditor", str(p.token_id),
                         rl.admin_per_min if p.is_admin else rl.auditor_per_min)
    return p, token if p is not None else None


def csrf_token(st: ServerState, token: str) -> str:
    return hmac.new(st.derived_secret("csrf"), hash_token(token).encode(), hashlib.sha256).hexdigest()


def _check_csrf(st: ServerState, token: str, given: str) -> None:
    if not hmac.compare_digest(csrf_token(st, token), given or ""):
        raise ApiError(403, "csrf", "the form is stale or not from this dashboard; reload the page")


def _page(request: Request, name: str, *, status: int = 200, who: Principal | None = None, token: str | None = None,
          **ctx: Any) -> HTMLResponse:
    st = _st(request)
    html = _env.get_template(name).render(who=who, csrf=csrf_token(st, token) if token else "", **ctx)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _login_redirect(request: Request) -> RedirectResponse:
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={_safe_next(nxt)}", status_code=303, headers=SECURITY_HEADERS)


def _safe_next(nxt: str | None) -> str:
    """Only our own dashboard pages: never an open redirect."""
    if nxt and nxt.startswith("/dashboard") and "//" not in nxt and "\\" not in nxt:
        return nxt
    return "/dashboard"


def _error(request: Request, who: Principal | None, token: str | None, status: int, message: str) -> HTMLResponse:
    return _page(request, "error.html", status=status, who=who, token=token, title="错误 / Error",
                 heading=f"{status}", message=message)


def _age(now_ms: int, ms: int | None) -> str:
    if ms is None:
        return "—"
    s = max(0, (now_ms - ms) // 1000)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


# -- login --------------------------------------------------------------------------------------------------------

@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    who, _ = _session(request)
    if who is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _page(request, "login.html", title="登录 / Log in", next=_safe_next(next))


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=200)] = "",
          next: Annotated[str, Form(max_length=500)] = "/dashboard") -> Response:
    st = _st(request)
    ip = client_ip(request, st)
    st.limiter.check_blocked(ip)
    who = principal_from_token(st, token.strip())
    if who is None:
        st.limiter.failed_auth(ip)
        log.warning("dashboard login failed ip=%s", ip)
        return _page(request, "login.html", status=401, title="登录 / Log in", next=_safe_next(next),
                     error="令牌无效、已过期或已撤销 / The token is invalid, expired or revoked.")
    resp = RedirectResponse(_safe_next(next), status_code=303, headers=SECURITY_HEADERS)
    resp.set_cookie(COOKIE, token.strip(), max_age=st.config.session_hours * 3600, httponly=True,
                    secure=st.config.cookie_secure, samesite="strict", path="/")
    log.info("dashboard login token=%d role=%s", who.token_id, who.role)
    return resp


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    st = _st(request)
    who, token = _session(request)
    if who is not None and token is not None:
        _check_csrf(st, token, csrf)
    resp = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
    resp.delete_cookie(COOKIE, path="/", secure=st.config.cookie_secure, httponly=True, samesite="strict")
    return resp


# -- fleet ----------------------------------------------------------------------------------------------------------

def _sites(st: ServerState) -> list[Any]:
    with st.db.read() as conn:
        return list(conn.execute(select(t.sites).order_by(t.sites.c.site_id)).all())


def _scopes(st: ServerState) -> list[dict[str, Any]]:
    import json

    m = t.manifests.c
    out = []
    with st.db.read() as conn:
        for r in conn.execute(select(m.scope, m.site_id, m.version, m.sha256, m.server_ms)
                              .where(m.current.is_(True)).order_by(m.scope)).all():
            mode = manifest_mode(conn, r.sha256) or "unknown"
            since = reason = None
            try:
                ref = json.loads(conn.execute(select(m.bytes).where(m.sha256 == r.sha256)).scalar_one())
                part_sha = ref["signed"]["parts"]["mode"]["sha256"]
                part = json.loads(conn.execute(select(t.parts.c.bytes).where(t.parts.c.sha256 == part_sha)).scalar_one())
                since, reason = part.get("since"), part.get("reason")
            except (ValueError, KeyError, TypeError):
                pass
            out.append({"scope": r.scope, "site": r.site_id, "label": r.site_id or "全部 / fleet-wide",
                        "version": r.version, "mode": mode, "since": since, "reason": reason,
                        "server_time": format_ms(r.server_ms)})
    return out


@router.get("/dashboard", response_class=HTMLResponse)
def fleet_page(request: Request, site_id: str | None = None) -> Response:
    who, token = _session(request)
    if who is None:
        return _login_redirect(request)
    st = _st(request)
    now = st.now_ms()
    with st.db.read() as conn:
        rows = fleet_devices(conn, now, st.config.offline_after_s, site_id or None)
    for r in rows:
        r["last_seen_text"] = _age(now, now - r["last_seen_age_s"] * 1000 if r["last_seen_age_s"] is not None
                                   else None)
    counts = {k: sum(1 for r in rows if r["health"] == k) for k in ("online", "stale", "offline")}
    counts["conflict"] = sum(1 for r in rows if r["conflict"])
    return _page(request, "fleet.html", who=who, token=token, title="设备 / Fleet", nav="fleet", refresh=30,
                 rows=rows, counts=counts, sites=_sites(st), site_id=site_id or "", modes=_scopes(st),
                 now=format_ms(now))


@router.get("/dashboard/devices/{device_id}", response_class=HTMLResponse)
def device_page(request: Request, device_id: str) -> Response:
    who, token = _session(request)
    if who is None:
        return _login_redirect(request)
    st = _st(request)
    with st.db.read() as conn:
        d = device_detail(conn, device_id[:63], st.now_ms(), st.config.offline_after_s)
    if d is None:
        return _error(request, who, token, 404, "没有这台闸机 / No such gate.")
    return _page(request, "device.html", who=who, token=token, title=f"闸机 / Gate {device_id}", nav="fleet",
                 refresh=30, d=d)


# -- alerts ---------------------------------------------------------------------------------------------------------

@router.get("/dashboard/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, status: str = "open") -> Response:
    who, token = _session(request)
    if who is None:
        return _login_redirect(request)
    st = _st(request)
    a = t.alerts.c
    q = select(t.alerts).order_by(a.id.desc()).limit(500)
    if status in ("open", "acked", "resolved"):
        q = q.where(a.status == status)
    else:
        status = ""
    with st.db.read() as conn:
        alerts = [alert_json(r) for r in conn.execute(q).all()]
    return _page(request, "alerts.html", who=who, token=token, title="告警 / Alerts", nav="alerts", refresh=30,
                 alerts=alerts, status_filter=status, status_label=status or "all")


@router.post("/dashboard/alerts/{alert_id}/ack")
def ack_page(request: Request, alert_id: int, csrf: Annotated[str, Form(max_length=200)] = "",
             back: Annotated[str, Form(max_length=300)] = "/dashboard/alerts") -> Response:
    who, token = _session(request)
    if who is None or token is None:
        return _login_redirect(request)
    st = _st(request)
    _check_csrf(st, token, csrf)
    with st.db.write() as conn:
        conn.execute(update(t.alerts).where(t.alerts.c.id == alert_id, t.alerts.c.status == "open")
                     .values(status="acked", acked_by=who.name, acked_ms=st.now_ms()))
    return RedirectResponse(_safe_next(back), status_code=303, headers=SECURITY_HEADERS)


# -- trace ----------------------------------------------------------------------------------------------------------

def _local_iso(value: str, tz: str) -> str:
    """A ``datetime-local`` value in the chosen zone as ISO 8601 with its offset."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"not a date and time: {value[:40]!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone(tz))
    return dt.isoformat()


def _temp(v: int | None) -> str:
    return "" if v is None else f"{v // 100}.{v % 100:02d} °C"


@router.get("/dashboard/trace", response_class=HTMLResponse)
def trace_page(request: Request) -> Response:
    who, token = _session(request)
    if who is None:
        return _login_redirect(request)
    st = _st(request)
    now = datetime.fromtimestamp(st.now_ms() / 1000, zone(st.config.site_tz))
    form = {"from": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"), "to": now.strftime("%Y-%m-%dT%H:%M"),
            "tz": st.config.site_tz, "id_type": "SUB"}
    return _page(request, "trace.html", who=who, token=token, title="追溯 / Trace", nav="trace", form=form,
                 zones=_zones(st))


def _zones(st: ServerState) -> list[str]:
    return list(dict.fromkeys([st.config.site_tz, *ZONES]))


@router.post("/dashboard/trace", response_class=HTMLResponse)
def trace_submit(
    request: Request,
    csrf: Annotated[str, Form(max_length=200)] = "",
    kind: Annotated[str, Form(max_length=10)] = "venue",
    venue_id: Annotated[str, Form(max_length=32)] = "",
    id_type: Annotated[str, Form(max_length=10)] = "SUB",
    id: Annotated[str, Form(max_length=200)] = "",
    from_: Annotated[str, Form(alias="from", max_length=40)] = "",
    to: Annotated[str, Form(max_length=40)] = "",
    tz: Annotated[str, Form(max_length=64)] = "Asia/Shanghai",
) -> Response:
    who, token = _session(request)
    if who is None or token is None:
        return _login_redirect(request)
    st = _st(request)
    _check_csrf(st, token, csrf)
    rl = st.config.rate_limit
    if not who.is_admin:
        st.limiter.check("auditor_heavy", str(who.token_id), rl.auditor_trace_per_min)
    tz = tz if tz in _zones(st) else st.config.site_tz
    form = {"venue_id": venue_id, "from": from_, "to": to, "tz": tz, "id_type": id_type}
    ctx: dict[str, Any] = {"form": form, "zones": _zones(st)}
    try:
        w = parse_window(_local_iso(from_, tz), _local_iso(to, tz))
        now = st.now_ms()
        if kind == "person":
            ident = id.strip()
            if id_type == "PID":
                pids = person_pids(st.pid_keys, None, None, ident.lower())
                if len(pids[0]) != 32 or any(c not in "0123456789abcdef" for c in pids[0]):
                    raise ApiError(422, "invalid_request", "a pid is 32 lowercase hex")
            elif id_type in ("SUB", "DCC"):
                pids = person_pids(st.pid_keys, id_type, ident.lower() if id_type == "SUB" else ident, None)
            else:
                raise ApiError(422, "invalid_request", "unknown id type")
            with st.db.write() as conn:
                audit(conn, who, "/dashboard/trace person", {"pids": pids, "from": from_, "to": to, "tz": tz}, now)
            with st.db.read() as conn:
                result = trace_person(conn, pids, w, limit=1000, cursor=None)
            result["title"] = "某人的行程 / Where the person was"
            result["person"] = True
        else:
            if not venue_id.strip():
                raise ApiError(422, "invalid_request", "venue id is required")
            with st.db.write() as conn:
                audit(conn, who, "/dashboard/trace venue", {"venue_id": venue_id, "from": from_, "to": to, "tz": tz},
                      now)
            with st.db.read() as conn:
                result = trace_venue(conn, venue_id.strip(), w, limit=1000, cursor=None)
            result["title"] = f"场所 / Venue {venue_id}"
            result["person"] = False
    except ApiError as exc:
        return _page(request, "trace.html", status=exc.status, who=who, token=token, title="追溯 / Trace",
                     nav="trace", error=exc.detail, **ctx)
    z = zone(tz)
    for i in result["items"]:
        at = i.get("at")
        i["at_local"] = (datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).astimezone(z)
                         .strftime("%Y-%m-%d %H:%M:%S") if at else "—")
        i["temp_text"] = _temp(i.get("temp_centi_c"))
    return _page(request, "trace.html", who=who, token=token, title="追溯 / Trace", nav="trace", result=result,
                 **ctx)


# -- daily report ---------------------------------------------------------------------------------------------------

@router.get("/dashboard/report", response_class=HTMLResponse)
def report_page(request: Request, site_id: str | None = None, day: str | None = None) -> Response:
    who, token = _session(request)
    if who is None:
        return _login_redirect(request)
    st = _st(request)
    sites = _sites(st)
    site = next((s for s in sites if s.site_id == site_id), sites[0] if sites else None)
    ctx: dict[str, Any] = {"sites": sites, "site_id": site.site_id if site else "", "day": day or ""}
    if site is None:
        return _page(request, "report.html", who=who, token=token, title="日报 / Daily report", nav="report",
                     error="还没有场地 / No sites yet.", **ctx)
    if not day:
        day = datetime.fromtimestamp(st.now_ms() / 1000, zone(site.tz)).date().isoformat()
        ctx["day"] = day
    try:
        with st.db.read() as conn:
            report = daily_report(conn, site.site_id, day, st.now_ms())
            series = hourly_series(conn, site.site_id, day)
    except ApiError as exc:
        return _page(request, "report.html", status=exc.status, who=who, token=token, title="日报 / Daily report",
                     nav="report", error=exc.detail, **ctx)
    chart = hourly_chart(series, title=f"{site.site_id} {day}: 检查、拒绝、发热 / decisions, denials, fevers per hour")
    return _page(request, "report.html", who=who, token=token, title="日报 / Daily report", nav="report",
                 report=report, chart=chart, **ctx)


# -- the one-key switch (admin) -------------------------------------------------------------------------------------

def _confirm_token(st: ServerState, token: str, site: str, mode: str, reason: str, expires_s: int) -> str:
    msg = "\n".join([hash_token(token), site, mode, reason, str(expires_s)]).encode()
    return f"{expires_s}.{hmac.new(st.derived_secret('mode-confirm'), msg, hashlib.sha256).hexdigest()}"


def _mode_ctx(st: ServerState) -> dict[str, Any]:
    scopes = _scopes(st)
    choices: list[tuple[str, str]] = []
    if any(s["scope"] == FLEET_SCOPE for s in scopes):
        choices.append(("", "全部 / fleet-wide"))
    else:
        if scopes:
            choices.append(("", "所有场地 / every site"))
        choices += [(s["site"], s["site"]) for s in scopes if s["site"]]
    return {"scopes": scopes, "scope_choices": choices}


def _admin(request: Request) -> tuple[Principal | None, str | None, Response | None]:
    who, token = _session(request)
    if who is None:
        return None, None, _login_redirect(request)
    if not who.is_admin:
        return who, token, _error(request, who, token, 403, "只有管理员可以切换模式 / Only admins can switch the mode.")
    return who, token, None


@router.get("/dashboard/mode", response_class=HTMLResponse)
def mode_page(request: Request) -> Response:
    who, token, denied = _admin(request)
    if denied is not None:
        return denied
    st = _st(request)
    return _page(request, "mode.html", who=who, token=token, title="模式切换 / Mode switch", nav="mode",
                 **_mode_ctx(st))


@router.post("/dashboard/mode/confirm", response_class=HTMLResponse)
def mode_confirm(request: Request, csrf: Annotated[str, Form(max_length=200)] = "",
                 site: Annotated[str, Form(max_length=63)] = "", mode: Annotated[str, Form(max_length=20)] = "",
                 reason: Annotated[str, Form(max_length=500)] = "") -> Response:
    who, token, denied = _admin(request)
    if denied is not None:
        return denied
    assert token is not None
    st = _st(request)
    _check_csrf(st, token, csrf)
    if mode not in ("normal", "emergency"):
        return _error(request, who, token, 422, "模式只能是 normal 或 emergency / mode must be normal or emergency")
    expires = int(time.time()) + CONFIRM_TTL_S
    confirm = {"site": site, "mode": mode, "reason": reason, "scope_label": site or "全部 / all",
               "token": _confirm_token(st, token, site, mode, reason, expires)}
    return _page(request, "mode.html", who=who, token=token, title="确认 / Confirm", nav="mode", confirm=confirm,
                 **_mode_ctx(st))


@router.post("/dashboard/mode", response_class=HTMLResponse)
async def mode_switch(request: Request, csrf: Annotated[str, Form(max_length=200)] = "",
                      site: Annotated[str, Form(max_length=63)] = "", mode: Annotated[str, Form(max_length=20)] = "",
                      reason: Annotated[str, Form(max_length=500)] = "",
                      confirm: Annotated[str, Form(max_length=200)] = "") -> Response:
    who, token, denied = await run_in_threadpool(_admin, request)
    if denied is not None:
        return denied
    assert who is not None and token is not None
    st = _st(request)
    _check_csrf(st, token, csrf)
    exp, _, _ = confirm.partition(".")
    if (not exp.isdigit() or int(exp) < time.time()
            or not hmac.compare_digest(confirm, _confirm_token(st, token, site, mode, reason, int(exp)))):
        return _error(request, who, token, 409, "确认已过期，请重新操作 / The confirmation expired; start again.")
    try:
        done = await run_in_threadpool(lambda: publish_mode(st, site=site or None, mode=mode, reason=reason,
                                                            by=who.name))
    except ApiError as exc:
        return _page(request, "mode.html", status=exc.status, who=who, token=token, title="模式切换 / Mode switch",
                     nav="mode", error=f"{exc.code}: {exc.detail}", **_mode_ctx(st))
    done["mode"] = mode
    return _page(request, "mode.html", who=who, token=token, title="模式切换 / Mode switch", nav="mode", done=done,
                 **_mode_ctx(st))
