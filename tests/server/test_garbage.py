"""Every route with garbage, truncated and oversize input: a 4xx answer with the error body, never a 5xx.

The routes come from the authorisation matrix, which is checked to hold every route the app serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sync.server.dashboard import csrf_token
from tests.server.harness import ServerHarness
from tests.server.test_authz import DEVICE, ROUTES

GARBAGE = [b"", b"{", b'{"a": 1', b"\xff\xfe\x00", b"[" * 5000, b'{"a": 1.5e308}', b"null", b'"str"',
           b'{"a": "\\ud800"}', b'{"a":1,"a":2}']


@pytest.fixture
def h(db_url: str, tmp_path: Path) -> Any:
    harness = ServerHarness(db_url, tmp_path)
    harness.gate("gate-g-01")
    yield harness
    harness.close()


def test_no_route_answers_5xx_to_garbage(h: ServerHarness) -> None:
    gate = h.gate("gate-g-02")
    cookie = {"Cookie": f"ck_session={h.admin_token}"}
    problems = []
    for method, _tpl, path, cls, _kw in ROUTES:
        if method == "GET" and cls != DEVICE:
            continue
        cases = [(b, c) for b in GARBAGE for c in ("application/json", "application/x-www-form-urlencoded")]
        cases += [(GARBAGE[1], "multipart/form-data"), (GARBAGE[1], "text/plain"),
                  (b"x" * (3 * 1024 * 1024), "application/json")]
        for body, ctype in cases:
            if cls == DEVICE:
                r = gate.request(method, path, body, headers={"Content-Type": ctype})
            else:
                headers = {**h.auth("admin"), **cookie, "Content-Type": ctype}
                r = h.client.request(method, path, content=body, headers=headers, follow_redirects=False)
            if r.status_code >= 500:
                problems.append(f"{method} {path} {ctype} {body[:20]!r}: {r.status_code}")
            elif r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
                doc = r.json()
                if not isinstance(doc, dict) or "error" not in doc or "detail" not in doc:
                    problems.append(f"{method} {path}: error body {r.text[:80]}")
    assert not problems, "\n".join(problems[:30])


def test_headers_that_lie(h: ServerHarness) -> None:
    for headers in ({"Content-Length": "abc"}, {"Content-Encoding": "gzip"}, {"Content-Type": "application/json; charset=latin-9"},
                    {"Authorization": "Bearer " + "\u00e9" * 10}, {"Authorization": "Basic Zm9vOmJhcg=="},
                    {"X-Forwarded-For": "1.2.3.4, ::1, garbage"}, {"Cookie": "ck_session=" + "a" * 5000}):
        for path in ("/v1/admin/sites", "/v1/alerts", "/dashboard/trace", "/v1/devices/gate-g-01/events"):
            try:
                r = h.client.post(path, content=b"{}", headers=headers)
            except Exception:  # the HTTP client itself may refuse a header it cannot encode
                continue
            assert r.status_code < 500, (headers, path, r.status_code, r.text[:200])
    # Form posts with a valid session but broken fields.
    data = {"csrf": csrf_token(h.state, h.admin_token), "kind": "person", "id_type": "PID", "id": "zz",
            "from": "not a time", "to": "2022-04-12T00:00"}
    r = h.client.post("/dashboard/trace", data=data, headers={"Cookie": f"ck_session={h.admin_token}"})
    assert r.status_code == 422 and "not a date" in r.text
    r = h.client.post("/dashboard/trace", data={**data, "from": "2022-04-11T00:00"},
                      headers={"Cookie": f"ck_session={h.admin_token}"})
    assert r.status_code == 422
    r = h.client.get("/dashboard/report", params={"site_id": "x", "day": "2022-99-99"},
                     headers={"Cookie": f"ck_session={h.admin_token}"})
    assert r.status_code in (200, 422)
    r = h.client.get("/dashboard/devices/" + "a" * 500, headers={"Cookie": f"ck_session={h.admin_token}"})
    assert r.status_code == 404
