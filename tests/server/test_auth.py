"""Enrolment (sync.md §2.3), signed device requests (§2.4) and rate limits (§2.8)."""

from __future__ import annotations

import json
from pathlib import Path

from sync.keys import generate_key
from sync.server.config import RateLimitConfig
from sync.server.enrollment import CROCKFORD, new_code
from sync.signing import enroll_text, normalise_code
from tests.server.harness import T0, Gate, ServerHarness, decision


def test_enrolment_code_is_single_use_and_replays_a_lost_answer(server: ServerHarness) -> None:
    code = server.add_device("gate-fc-0007")
    assert len(normalise_code(code)) == 12 and all(c in CROCKFORD for c in normalise_code(code))
    key = generate_key("device", "d")
    r = server.enroll(code, key)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["device_id"] == "gate-fc-0007" and ans["keyid"] == key.keyid
    assert ans["server_key"] == server.server_key.public and len(ans["pid_key"]) == 64 and ans["pid_kid"] == 1
    assert ans["venue"] == {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}
    assert ans["server_time"] == "2022-04-12T00:31:06.004Z" and ans["keys_version"] is None
    # Lost answer: same code, same key → the same answer; the code written in lower case with spaces works too.
    again = server.enroll(code.lower().replace("-", " "), key)
    assert again.status_code == 200 and again.json() == ans
    # Another key with the used code, an unknown code, a garbage code: one answer for all.
    for c, k in ((code, generate_key("device", "thief")), (new_code(), key), ("!!!!", key), ("", key)):
        r = server.enroll(c, k)
        assert r.status_code in (403, 422), (c, r.text)
        if r.status_code == 403:
            assert r.json()["error"] == "invalid_code"
    # The admin page shows the same keyid as the installer prints.
    assert server.auditor("GET", "/v1/fleet/devices/gate-fc-0007").json()["keyid"] == key.keyid


def test_enrolment_refuses_a_bad_proof_and_an_expired_code(server: ServerHarness) -> None:
    code = server.add_device("gate-fc-0007")
    key = generate_key("device", "d")
    bad = generate_key("device", "other").sign(enroll_text(code, key.public)).hex()
    r = server.client.post("/v1/enroll", json={"code": code, "public_key": key.public, "proof": bad})
    assert r.status_code == 400 and r.json()["error"] == "bad_proof"
    r = server.admin("POST", "/v1/admin/devices/gate-fc-0007/enrollment-code")
    assert r.status_code == 201
    fresh = r.json()["enrollment_code"]
    assert server.enroll(code, key).status_code == 403  # the old code is gone
    server.clock.advance(72 * 3600 + 1)
    assert server.enroll(fresh, key).json()["error"] == "invalid_code"
    r = server.admin("POST", "/v1/admin/devices/gate-fc-0007/enrollment-code")
    assert server.enroll(r.json()["enrollment_code"], key).status_code == 200
    assert server.admin("POST", "/v1/admin/devices/gate-fc-0007/enrollment-code").status_code == 409
    for body in (b"", b"{", b"[]", json.dumps({"code": "x" * 100, "public_key": "zz", "proof": 1}).encode()):
        assert server.client.post("/v1/enroll", content=body,
                                  headers={"Content-Type": "application/json"}).status_code == 422


def test_admin_device_records(server: ServerHarness) -> None:
    server.add_site()
    body = {"device_id": "gate-fc-0007", "site_id": "fc-plant-1", "venue": {"venue_id": "v1", "zone": "A"}}
    assert server.admin("POST", "/v1/admin/devices", json=body).status_code == 201
    assert server.admin("POST", "/v1/admin/devices", json=body).status_code == 409  # ids are for life
    assert server.admin("POST", "/v1/admin/devices", json={**body, "device_id": "g", }).status_code == 422
    assert server.admin("POST", "/v1/admin/devices", json={**body, "device_id": "gate-x-01", "site_id": "nope-1"}
                        ).status_code == 422
    assert server.admin("POST", "/v1/admin/sites", json={"site_id": "s-2", "name": "x", "tz": "Mars/Base"}
                        ).status_code == 422
    assert server.admin("POST", "/v1/admin/devices/gate-nope-1/revoke").status_code == 404
    assert server.admin("POST", "/v1/admin/devices/gate-fc-0007/retire").json()["status"] == "retired"
    assert server.admin("POST", "/v1/admin/devices/gate-fc-0007/revoke").status_code == 409


def test_device_request_checks_in_the_order_of_the_spec(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("decision", decision())
    body = json.dumps(gate.batch(1, 1)).encode()
    path = "/v1/devices/gate-fc-0007/events"
    good = gate.sign_headers("POST", path, body)

    def post(headers: dict[str, str], content: bytes = body, p: str = path) -> tuple[int, str]:
        r = server.client.post(p, content=content, headers=headers)
        return r.status_code, r.json().get("error", "")

    for name in good:
        assert post({k: v for k, v in good.items() if k != name}) == (401, "bad_auth")
    assert post({**good, "X-Checkpoint-Device": "gate-fc-0008"}) == (401, "bad_auth")
    assert post({**good, "X-Checkpoint-Nonce": "XYZ"}) == (401, "bad_auth")
    assert post({**good, "X-Checkpoint-Time": "-5"}) == (401, "bad_auth")
    assert post({**good, "X-Checkpoint-Signature": "00" * 10}) == (401, "bad_auth")
    stranger = Gate(server, "gate-nobody-1", generate_key("device", "x"))
    assert stranger.upload(body) .status_code == 401 and stranger.upload(body).json()["error"] == "unknown_device"
    assert post({**good, "X-Checkpoint-Signature": "00" * 64}) == (401, "bad_signature")
    assert post(good, body + b" ") == (401, "bad_signature")  # the body is covered by the signature
    # The query string is covered too.
    assert server.client.get("/v1/devices/gate-fc-0007/state?x=1",
                             headers=gate.sign_headers("GET", "/v1/devices/gate-fc-0007/state", b"")
                             ).status_code == 401
    r = gate.request("GET", "state?x=1")
    assert r.status_code == 200
    # Clock skew: refused with a signed time the gate can correct itself from.
    r = gate.upload(body, time_s=T0 // 1000 + 301)
    assert r.status_code == 401 and r.json()["error"] == "clock_skew"
    assert gate.check_time(r.json()) == T0
    assert gate.upload(body, time_s=T0 // 1000 + 299).status_code == 200
    # Replayed nonce (a proxy forwarding twice): refused; GETs are not nonce-checked.
    assert post(good) == (200, "")
    assert post(good) == (401, "replayed_nonce")
    hdr = gate.sign_headers("GET", "/v1/devices/gate-fc-0007/state", b"")
    assert [server.client.get("/v1/devices/gate-fc-0007/state", headers=hdr).status_code for _ in (1, 2)] == [200, 200]
    # A path that is no device id at all.
    assert server.client.get("/v1/devices/NOT_AN_ID/state").status_code == 404


def test_rate_limits_answer_429_with_retry_after(db_url: str, tmp_path: Path) -> None:
    limits = RateLimitConfig(device_per_min=60, device_burst=3, failed_auth_per_min=5, failed_auth_block_s=600,
                             auditor_per_min=4, enroll_per_hour=30, enroll_failed_per_hour=3)
    h = ServerHarness(db_url, tmp_path, rate_limit=limits)
    try:
        gate = h.gate()
        codes = [gate.request("GET", "state").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        r = gate.request("GET", "state")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "rate_limited"
        codes = [h.auditor("GET", "/v1/alerts").status_code for _ in range(6)]
        assert codes.count(429) == 2
        # An admin token has its own bucket.
        assert h.admin("GET", "/v1/admin/tokens").status_code == 200
        # Failed authentication from one address: blocked for a while, even with a good token.
        codes = [h.client.get("/v1/alerts", headers={"Authorization": "Bearer ck_" + "x" * 43}).status_code
                 for _ in range(7)]
        assert codes[:5] == [401] * 5 and 429 in codes
        assert h.admin("GET", "/v1/admin/tokens").status_code == 429
    finally:
        h.close()


def test_enrolment_codes_cannot_be_guessed_past_the_limit(db_url: str, tmp_path: Path) -> None:
    h = ServerHarness(db_url, tmp_path, rate_limit=RateLimitConfig(enroll_failed_per_hour=3, enroll_per_hour=5))
    try:
        code = h.add_device("gate-fc-0007")
        key = generate_key("device", "k")
        assert [h.enroll(new_code(), key).status_code for _ in range(4)] == [403, 403, 403, 429]
        r = h.enroll(code, key)  # the right code, after the failures: still refused for now
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 60
        h2 = ServerHarness(db_url, tmp_path / "b", rate_limit=RateLimitConfig(enroll_per_hour=2))
        try:
            assert [h2.enroll(new_code(), key).status_code for _ in range(3)] == [403, 403, 429]
        finally:
            h2.close()
    finally:
        h.close()


def test_token_lifecycle(server: ServerHarness) -> None:
    r = server.admin("POST", "/v1/admin/tokens", json={"role": "auditor", "name": "court request", "expires_days": 1})
    assert r.status_code == 201
    tok = r.json()["token"]
    assert tok.startswith("ck_") and len(tok) == 46 and r.json()["prefix"] == tok[:8]
    stored = server.rows("SELECT token_hash, prefix FROM api_tokens WHERE name = 'court request'")[0]
    assert tok not in stored.token_hash and stored.prefix == tok[:8]  # only the hash is kept
    hdr = {"Authorization": f"Bearer {tok}"}
    assert server.client.get("/v1/alerts", headers=hdr).status_code == 200
    assert server.client.get("/v1/admin/tokens", headers=hdr).status_code == 403
    listed = server.admin("GET", "/v1/admin/tokens").json()
    assert all("token" not in t and "token_hash" not in t for t in listed)
    server.clock.advance(86_401)
    assert server.client.get("/v1/alerts", headers=hdr).status_code == 401
    assert server.admin("POST", "/v1/admin/tokens", json={"role": "root", "name": "x"}).status_code == 422
    assert server.admin("DELETE", "/v1/admin/tokens/424242").status_code == 404
