"""Authorisation matrix over every route of the server and every kind of caller (sync.md §2.4, §2.7).

The route table below must list every route the app serves: a route added
without an entry here fails ``test_every_route_is_in_the_matrix``, so nothing
new can escape the matrix. For each route, every caller who must not get in
must get 401 or 403 (dashboard pages: a redirect to the login page), and the
callers who may get in must not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sync.server.dashboard import csrf_token
from tests.server.harness import Gate, ServerHarness, decision

SHA = "ab" * 32
PUBLIC, ENROLL, DEVICE, ADMIN, AUDITOR, METRICS, PAGE, ADMIN_PAGE = (
    "public", "enroll", "device", "admin", "auditor", "metrics", "page", "admin_page")

# (method, route template, concrete path, class, request kwargs)
ROUTES: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("GET", "/healthz", "/healthz", PUBLIC, {}),
    ("GET", "/readyz", "/readyz", PUBLIC, {}),
    ("GET", "/openapi.json", "/openapi.json", PUBLIC, {}),
    ("GET", "/docs", "/docs", PUBLIC, {}),
    ("GET", "/docs/oauth2-redirect", "/docs/oauth2-redirect", PUBLIC, {}),
    ("GET", "/v1/keys/{name}", "/v1/keys/1.json", PUBLIC, {}),
    ("GET", "/login", "/login", PUBLIC, {}),
    ("POST", "/login", "/login", PUBLIC, {"data": {"token": "nope"}}),
    ("POST", "/logout", "/logout", PUBLIC, {}),
    ("POST", "/v1/enroll", "/v1/enroll", ENROLL, {"json": {"code": "AAAA-BBBB-CCCC", "public_key": "00" * 32,
                                                          "proof": "00" * 64}}),
    ("POST", "/v1/devices/{device_id}/events", "events", DEVICE, {}),
    ("POST", "/v1/devices/{device_id}/flash", "flash", DEVICE, {}),
    ("GET", "/v1/devices/{device_id}/state", "state", DEVICE, {}),
    ("POST", "/v1/devices/{device_id}/heartbeat", "heartbeat", DEVICE, {}),
    ("GET", "/v1/devices/{device_id}/bundle", "bundle", DEVICE, {}),
    ("GET", "/v1/devices/{device_id}/manifests/{sha256}", f"manifests/{SHA}", DEVICE, {}),
    ("GET", "/v1/devices/{device_id}/parts/{sha256}", f"parts/{SHA}", DEVICE, {}),
    ("POST", "/v1/admin/sites", "/v1/admin/sites", ADMIN, {"json": {"site_id": "site-m", "name": "M"}}),
    ("POST", "/v1/admin/devices", "/v1/admin/devices", ADMIN, {"json": {
        "device_id": "gate-m-01", "site_id": "fc-plant-1", "venue": {"venue_id": "v", "zone": "z"}}}),
    ("POST", "/v1/admin/devices/{device_id}/enrollment-code", "/v1/admin/devices/gate-pending/enrollment-code",
     ADMIN, {}),
    ("POST", "/v1/admin/devices/{device_id}/revoke", "/v1/admin/devices/gate-target/revoke", ADMIN, {}),
    ("POST", "/v1/admin/devices/{device_id}/retire", "/v1/admin/devices/gate-target/retire", ADMIN, {}),
    ("POST", "/v1/admin/devices/{device_id}/clear-conflict", "/v1/admin/devices/gate-target/clear-conflict",
     ADMIN, {}),
    ("POST", "/v1/admin/tokens", "/v1/admin/tokens", ADMIN, {"json": {"role": "auditor", "name": "x"}}),
    ("GET", "/v1/admin/tokens", "/v1/admin/tokens", ADMIN, {}),
    ("DELETE", "/v1/admin/tokens/{token_id}", "/v1/admin/tokens/999", ADMIN, {}),
    ("POST", "/v1/admin/webhooks", "/v1/admin/webhooks", ADMIN, {"json": {"url": "http://127.0.0.1:9/h",
                                                                          "secret": "s" * 20}}),
    ("GET", "/v1/admin/webhooks", "/v1/admin/webhooks", ADMIN, {}),
    ("DELETE", "/v1/admin/webhooks/{webhook_id}", "/v1/admin/webhooks/999", ADMIN, {}),
    ("POST", "/v1/admin/bundles", "/v1/admin/bundles", ADMIN, {"content": b"junk"}),
    ("POST", "/v1/admin/sources", "/v1/admin/sources", ADMIN, {"files": [("files", ("mode.json", b"{}"))]}),
    ("POST", "/v1/admin/mode", "/v1/admin/mode", ADMIN, {"json": {"mode": "emergency"}}),
    ("POST", "/v1/admin/keys", "/v1/admin/keys", ADMIN, {"content": b"{}"}),
    ("GET", "/v1/fleet/devices", "/v1/fleet/devices", AUDITOR, {}),
    ("GET", "/v1/fleet/devices/{device_id}", "/v1/fleet/devices/gate-own", AUDITOR, {}),
    ("GET", "/v1/fleet/sites", "/v1/fleet/sites", AUDITOR, {}),
    ("GET", "/v1/trace/venue", "/v1/trace/venue?venue_id=v&from=2022-04-12T00:00:00Z&to=2022-04-13T00:00:00Z",
     AUDITOR, {}),
    ("POST", "/v1/trace/person", "/v1/trace/person", AUDITOR, {"json": {
        "pid": "9347d5ebaf1bb363fbbcbfd205ae7d8a", "from": "2022-04-12T00:00:00Z", "to": "2022-04-13T00:00:00Z"}}),
    ("GET", "/v1/reports/daily", "/v1/reports/daily?site_id=fc-plant-1&day=2022-04-12", AUDITOR, {}),
    ("GET", "/v1/export/events.csv",
     "/v1/export/events.csv?site_id=fc-plant-1&from=2022-04-12T00:00:00Z&to=2022-04-13T00:00:00Z", AUDITOR, {}),
    ("GET", "/v1/alerts", "/v1/alerts", AUDITOR, {}),
    ("POST", "/v1/alerts/{alert_id}/ack", "/v1/alerts/1/ack", AUDITOR, {}),
    ("GET", "/metrics", "/metrics", METRICS, {}),
    ("GET", "/dashboard", "/dashboard", PAGE, {}),
    ("GET", "/dashboard/devices/{device_id}", "/dashboard/devices/gate-own", PAGE, {}),
    ("GET", "/dashboard/alerts", "/dashboard/alerts", PAGE, {}),
    ("POST", "/dashboard/alerts/{alert_id}/ack", "/dashboard/alerts/1/ack", PAGE, {"form": True}),
    ("GET", "/dashboard/trace", "/dashboard/trace", PAGE, {}),
    ("POST", "/dashboard/trace", "/dashboard/trace", PAGE, {"form": {"kind": "venue", "venue_id": "v",
                                                                      "from": "2022-04-12T00:00", "to": "2022-04-12T10:00"}}),
    ("GET", "/dashboard/report", "/dashboard/report", PAGE, {}),
    ("GET", "/dashboard/mode", "/dashboard/mode", ADMIN_PAGE, {}),
    ("POST", "/dashboard/mode/confirm", "/dashboard/mode/confirm", ADMIN_PAGE, {"form": {"mode": "emergency"}}),
    ("POST", "/dashboard/mode", "/dashboard/mode", ADMIN_PAGE, {"form": {"mode": "emergency", "confirm": "0.x"}}),
]


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Any:
    h = ServerHarness(db_url, tmp_path, metrics_allow=[])  # no peer is trusted: /metrics needs a token
    own = h.gate("gate-own")
    other = h.gate("gate-other")
    revoked = h.gate("gate-revoked")
    retired = h.gate("gate-retired")
    h.gate("gate-target")
    h.add_device("gate-pending")
    for g in (own, other, revoked, retired):
        g.chain.append("decision", decision())
    assert h.admin("POST", "/v1/admin/devices/gate-revoked/revoke").status_code == 200
    assert h.admin("POST", "/v1/admin/devices/gate-retired/retire").status_code == 200
    expired = h.token("admin", "expired", expires_days=1)
    revoked_tok = h.token("admin", "revoked-token")
    tid = h.admin("GET", "/v1/admin/tokens").json()[-1]["id"]
    assert h.admin("DELETE", f"/v1/admin/tokens/{tid}").status_code == 204
    h.clock.advance(2 * 86_400)
    yield h, {"own": own, "other": other, "revoked": revoked, "retired": retired}, expired, revoked_tok
    h.close()


def _device_body(route: str, gate: Gate) -> bytes:
    if route == "events":
        return json.dumps(gate.batch(1, 1)).encode()
    if route == "flash":
        return json.dumps({"events": []}).encode()
    if route == "heartbeat":
        return b"{}"
    return b""


def test_every_route_is_in_the_matrix(world: Any) -> None:
    from sync.server.app import routers

    h = world[0]
    served = set()
    for r in [*h.app.routes, *(route for router in routers() for route in router.routes)]:
        for m in getattr(r, "methods", None) or ():
            if m != "HEAD":
                served.add((m, r.path))
    # The app mounts exactly those routers and nothing else.
    assert sum(1 for r in h.app.routes if not hasattr(r, "methods")) == len(routers())
    listed = {(m, p) for m, p, *_ in ROUTES}
    assert served == listed, f"not in the matrix: {sorted(served - listed)}; gone: {sorted(listed - served)}"


def _call(h: ServerHarness, method: str, path: str, kw: dict[str, Any], *, bearer: str | None = None,
          cookie: str | None = None) -> Any:
    headers = {}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if cookie:
        headers["Cookie"] = f"ck_session={cookie}"
    kw = dict(kw)
    form = kw.pop("form", None)
    if form is not None:
        data = dict(form) if isinstance(form, dict) else {}
        if cookie:
            data["csrf"] = csrf_token(h.state, cookie)
        kw["data"] = data
    return h.client.request(method, path, headers=headers, follow_redirects=False, **kw)


def _denied(r: Any, *, page: bool = False) -> bool:
    if page and r.status_code == 303:
        return r.headers["location"].startswith("/login")
    return r.status_code in (401, 403)


def test_no_caller_escapes(world: Any) -> None:
    h, gates, expired, revoked_tok = world
    bad_tokens = {"none": None, "garbage": "ck_" + "A" * 43, "malformed": "Bearer", "expired": expired,
                  "revoked": revoked_tok}
    escapes: list[str] = []

    def expect(ok: bool, who: str, method: str, path: str, r: Any, page: bool = False) -> None:
        if ok and _denied(r, page=page):
            escapes.append(f"{who} refused on {method} {path}: {r.status_code}")
        if not ok and not _denied(r, page=page):
            escapes.append(f"ESCAPE {who} got {r.status_code} on {method} {path}")

    for method, _tpl, path, cls, kw in ROUTES:
        if cls == DEVICE:
            own = gates["own"]
            full = f"/v1/devices/{own.device_id}/{path}"
            # Bearer tokens and no credentials never act as a device.
            for who, tok in [("admin", h.admin_token), ("auditor", h.auditor_token), *bad_tokens.items()]:
                expect(False, who, method, full, _call(h, method, full, {"content": _device_body(path, own)},
                                                        bearer=tok))
            # Another enrolled device, signing with its own key for the victim's path.
            body = _device_body(path, own)
            thief = gates["other"]
            hdrs = thief.sign_headers(method, full, body)
            hdrs["X-Checkpoint-Device"] = own.device_id
            expect(False, "other device (victim id)", method, full,
                   h.client.request(method, full, content=body, headers=hdrs))
            hdrs = thief.sign_headers(method, full, body)
            expect(False, "other device (own id)", method, full,
                   h.client.request(method, full, content=body, headers=hdrs))
            for name in ("revoked", "retired"):
                g = gates[name]
                expect(False, f"{name} device", method, path, g.request(method, path, _device_body(path, g)))
            expect(True, "own device", method, full, own.request(method, path, body))
            continue
        if cls in (PUBLIC, ENROLL):
            r = _call(h, method, path, kw)
            assert r.status_code < 500, (method, path, r.status_code)
            continue
        page = cls in (PAGE, ADMIN_PAGE)
        for who, tok in bad_tokens.items():
            r = _call(h, method, path, kw, cookie=tok) if page else _call(h, method, path, kw, bearer=tok)
            expect(False, f"token:{who}", method, path, r, page)
        own = gates["own"]
        sig = own.sign_headers(method, path if path.startswith("/v1/") else "/v1" + path, b"")
        expect(False, "device signature", method, path,
               h.client.request(method, path, headers=sig, follow_redirects=False), page)
        if page:
            # A bearer header is not a dashboard session.
            expect(False, "bearer on a page", method, path, _call(h, method, path, kw, bearer=h.admin_token), page)
        auditor_ok = cls in (AUDITOR, METRICS, PAGE)
        r = _call(h, method, path, kw, cookie=h.auditor_token) if page else _call(h, method, path, kw,
                                                                                 bearer=h.auditor_token)
        expect(auditor_ok, "auditor", method, path, r, page)
        r = _call(h, method, path, kw, cookie=h.admin_token) if page else _call(h, method, path, kw,
                                                                               bearer=h.admin_token)
        expect(True, "admin", method, path, r, page)
    assert not escapes, "\n".join(escapes)


def test_include_pid_is_for_admins_only(world: Any) -> None:
    h = world[0]
    path = ("/v1/export/events.csv?site_id=fc-plant-1&from=2022-04-12T00:00:00Z&to=2022-04-13T00:00:00Z"
            "&include_pid=1")
    assert h.auditor("GET", path).status_code == 403
    r = h.admin("GET", path)
    assert r.status_code == 200 and r.text.splitlines()[0].endswith(",pid")


def test_dashboard_posts_need_the_csrf_token(world: Any) -> None:
    h = world[0]
    r = h.client.post("/dashboard/trace", data={"kind": "venue", "venue_id": "v", "from": "2022-04-12T00:00",
                                                "to": "2022-04-12T01:00", "csrf": "0" * 64},
                      headers={"Cookie": f"ck_session={h.auditor_token}"})
    assert r.status_code == 403
    r = h.client.post("/dashboard/mode", data={"mode": "emergency", "csrf": csrf_token(h.state, h.admin_token),
                                               "confirm": "9999999999.forged"},
                      headers={"Cookie": f"ck_session={h.admin_token}"})
    assert r.status_code == 409  # a confirmation that the server did not issue


def test_a_device_only_ever_writes_its_own_chain(world: Any) -> None:
    h, gates, *_ = world
    own, other = gates["own"], gates["other"]
    assert own.upload_range(1, 1).status_code == 200
    # other signs a batch made of its own events but addressed to own's path: refused, nothing stored.
    body = json.dumps(other.batch(1, 1)).encode()
    path = f"/v1/devices/{own.device_id}/events"
    hdrs = other.sign_headers("POST", path, body)
    hdrs["X-Checkpoint-Device"] = own.device_id
    assert h.client.post(path, content=body, headers=hdrs).status_code == 401
    # own's key, own's path, but events claiming another device id: a bad batch.
    foreign = other.batch(1, 1)
    foreign["device_id"] = own.device_id
    assert own.upload(foreign).status_code == 400
    rows = h.rows("SELECT device_id, seq FROM events ORDER BY device_id, seq")
    assert [(r.device_id, r.seq) for r in rows] == [("gate-own", 1)]
