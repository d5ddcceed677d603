"""The console's HTTP rules (console.md §2-3) on a real uvicorn on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from edge.config import ConsoleConfig
from edge.console import Accounts, ConsoleServer, PinGate, decision_view, verify_pin
from edge.console.accounts import parse_pin_hash
from edge.console.cli import pin_hash
from sync.errors import ConfigError
from tests.console.helpers import (
    ADMIN_PIN,
    CANARY_KID,
    CANARY_PID,
    CANARY_SUB,
    GUARD_PIN,
    RecordingBackend,
    canary_payload,
    read_events,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def console(clock: FakeClock) -> Iterator[tuple[ConsoleServer, RecordingBackend]]:
    backend = RecordingBackend()
    server = ConsoleServer(ConsoleConfig(listen="127.0.0.1:0"), backend, pin_gate=PinGate(clock=clock))
    server.start()
    yield server, backend
    server.stop()


@pytest.fixture
def client(console) -> Iterator[httpx.Client]:
    server, _ = console
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 200
        yield c


def post(client: httpx.Client, path: str, body: Any, *, token: str | None = "cookie", origin: str | None = "own",
         ctype: str = "application/json", raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": ctype}
    if origin == "own":
        headers["Origin"] = str(client.base_url)
    elif origin is not None:
        headers["Origin"] = origin
    if token == "cookie":
        headers["X-CSRF-Token"] = client.cookies.get("ck_csrf") or ""
    elif token is not None:
        headers["X-CSRF-Token"] = token
    content = raw if raw is not None else json.dumps(body).encode()
    return client.post(path, content=content, headers=headers)


def override_body(**kw: Any) -> dict[str, Any]:
    body = {"decision_seq": 7, "to": "admit", "reason": "checked_by_hand", "note": "", "account": "guard-1",
            "pin": GUARD_PIN}
    body.update(kw)
    return body


# -- page and cookie ---------------------------------------------------------------------------


def test_page_sets_csrf_cookie_and_headers(console, client: httpx.Client):
    r = client.get("/")
    token = client.cookies.get("ck_csrf")
    assert token and re.fullmatch(r"[0-9a-f]{64}", token)
    assert f'content="{token}"' in r.text
    cookie = r.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "httponly" in cookie
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert not any(h.lower().startswith("access-control") for h in r.headers)
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/../web.py").status_code == 404


def test_page_shows_accounts_but_never_pin_hashes(console, client: httpx.Client):
    text = client.get("/").text
    assert "guard-1" in text and "scrypt$" not in text


def test_unknown_host_refused(console):
    server, _ = console
    r = httpx.get(server.url, headers={"Host": "evil.example:8081"})
    assert r.status_code == 421


# -- CSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    ["no_token", "wrong_token", "no_origin", "foreign_origin", "form_type", "text_type"],
)
def test_post_without_csrf_is_403(console, client: httpx.Client, variant: str):
    kw: dict[str, Any] = {}
    if variant == "no_token":
        kw["token"] = None
    elif variant == "wrong_token":
        kw["token"] = "0" * 64
    elif variant == "no_origin":
        kw["origin"] = None
    elif variant == "foreign_origin":
        kw["origin"] = "http://evil.example"
    elif variant == "form_type":
        kw["ctype"] = "application/x-www-form-urlencoded"
    else:
        kw["ctype"] = "text/plain"
    r = post(client, "/api/override", override_body(), **kw)
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    _, backend = console
    assert backend.calls == []


def test_post_without_cookie_is_403(console):
    server, backend = console
    with httpx.Client(base_url=server.url.rstrip("/")) as c:
        r = c.post("/api/setup", json={"account": "admin", "pin": ADMIN_PIN},
                   headers={"Origin": str(c.base_url), "X-CSRF-Token": "a" * 64})
    assert r.status_code == 403 and backend.calls == []


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"{", b"garbage", b"[]", b'"x"', b'{"decision_seq": 7',
        b'{"decision_seq": 7, "decision_seq": 8, "to": "admit", "reason": "x", "account": "guard-1", "pin": "246810"}',
        b'{"decision_seq": 7.0, "to": "admit", "reason": "x", "account": "guard-1", "pin": "246810"}',
        b'{"decision_seq": NaN, "to": "admit", "reason": "x", "account": "guard-1", "pin": "246810"}',
        b'{"decision_seq": "7", "to": "admit", "reason": "x", "account": "guard-1", "pin": "246810"}',
        b'{"decision_seq": 7, "to": "refer", "reason": "x", "account": "guard-1", "pin": "246810"}',
        b'{"decision_seq": 7, "to": "admit", "reason": "x", "account": "guard-1", "pin": "246810", "extra": 1}',
        b'{"decision_seq": 7, "to": "admit", "reason": "x", "account": "GUARD", "pin": "246810"}',
        b'{"decision_seq": 7, "to": "admit", "reason": "x", "account": "guard-1", "pin": "12ab56"}',
        b'{"decision_seq": 99999999999999999999, "to": "admit", "reason": "x", "account": "guard-1", "pin": "246810"}',
        b"\xff\xfe{}",
    ],
)
def test_garbage_and_truncated_bodies_are_400(console, client: httpx.Client, raw: bytes):
    r = post(client, "/api/override", None, raw=raw)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert console[1].calls == []


def test_oversize_body_is_400(console, client: httpx.Client):
    body = override_body(note="x" * 5000)
    r = post(client, "/api/override", body)
    assert r.status_code == 400 and "4096" in r.json()["detail"]
    r = post(client, "/api/override", override_body(note="n" * 201))
    assert r.status_code == 400


# -- PINs, rate limit, lockout ------------------------------------------------------------------


def test_override_with_right_pin_reaches_the_gate(console, client: httpx.Client):
    r = post(client, "/api/override", override_body(note="valid paper result"))
    assert r.status_code == 200 and r.json() == {"override_seq": 101}
    _, backend = console
    kind, req, account = backend.calls[0]
    assert (kind, req.decision_seq, req.to, req.note, account) == ("override", 7, "admit", "valid paper result",
                                                                  "guard-1")


def test_gate_refusal_is_passed_on(console, client: httpx.Client):
    r = post(client, "/api/override", override_body(decision_seq=999))
    assert r.status_code == 409 and r.json()["error"] == "not_overridable"


def test_sixth_wrong_pin_locks_for_five_minutes(console, client: httpx.Client, clock: FakeClock):
    for left in (4, 3, 2, 1, 0):
        r = post(client, "/api/override", override_body(pin="000000"))
        assert r.status_code == 401 and r.json() == {"error": "bad_pin", "detail": "wrong PIN", "attempts_left": left}
        clock.t += 1.1
    r = post(client, "/api/override", override_body())          # even the right PIN
    assert r.status_code == 423 and r.json()["error"] == "locked"
    assert 290 <= int(r.headers["Retry-After"]) <= 300
    assert client.get("/api/status").json()["locked"] == ["guard-1"]
    # another account is not locked
    clock.t += 1.1
    assert post(client, "/api/setup", {"account": "admin", "pin": ADMIN_PIN}).status_code == 200
    clock.t += 295                                              # 4 min 57 s after the lock
    assert post(client, "/api/override", override_body()).status_code == 423
    clock.t += 3
    assert post(client, "/api/override", override_body()).status_code == 200
    assert client.get("/api/status").json()["locked"] == []


def test_right_pin_resets_the_count(console, client: httpx.Client, clock: FakeClock):
    for _ in range(4):
        assert post(client, "/api/override", override_body(pin="000000")).status_code == 401
        clock.t += 1.1
    assert post(client, "/api/override", override_body()).status_code == 200
    clock.t += 1.1
    r = post(client, "/api/override", override_body(pin="000000"))
    assert r.json()["attempts_left"] == 4


def test_one_check_per_second_per_client(console, client: httpx.Client, clock: FakeClock):
    assert post(client, "/api/override", override_body(pin="000000")).status_code == 401
    r = post(client, "/api/override", override_body())
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    clock.t += 1.0
    assert post(client, "/api/override", override_body()).status_code == 200


def test_unknown_account(console, client: httpx.Client):
    r = post(client, "/api/override", override_body(account="nobody"))
    assert r.status_code == 400 and r.json()["detail"] == "unknown account"


def test_setup_needs_admin(console, client: httpx.Client, clock: FakeClock):
    r = post(client, "/api/setup", {"account": "guard-1", "pin": GUARD_PIN})
    assert r.status_code == 403 and r.json()["error"] == "not_admin"
    clock.t += 1.1
    r = post(client, "/api/setup", {"account": "admin", "pin": ADMIN_PIN})
    assert r.status_code == 200 and r.json() == {"remaining_s": 60}
    clock.t += 1.1
    r = post(client, "/api/setup", {"account": "admin", "pin": ADMIN_PIN})
    assert r.status_code == 409 and r.json()["error"] == "setup_active"


def test_manual_entry(console, client: httpx.Client):
    r = post(client, "/api/manual", {"outcome": "deny", "reason": "checked_by_hand", "note": "", "account": "admin",
                                     "pin": ADMIN_PIN})
    assert r.status_code == 200 and r.json() == {"decision_seq": 101, "override_seq": 102}


def test_no_accounts_means_no_actions(console, client: httpx.Client):
    _, backend = console
    backend._accounts = Accounts.from_settings(None)
    r = post(client, "/api/override", override_body())
    assert r.status_code == 400 and "no guard accounts" in r.json()["detail"]


# -- stream and the canary -------------------------------------------------------------------------


def test_stream_replays_last_ten_and_then_follows(console):
    server, backend = console
    for seq in range(1, 13):
        backend.add_decision(seq)
    url = server.url + "api/events/stream"
    with httpx.Client(timeout=10) as c, c.stream("GET", url) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_events(r, 11)
        assert [e[2] for e in events[:10]] == [str(s) for s in range(3, 13)]
        assert events[10][0] == "status"
        backend.add_decision(13)
        backend.broadcaster.publish("prompt", {"kind": "pair", "zh": "请扫描另一个码", "en": "Scan the other code",
                                               "remaining_s": 60})
        more = read_events(r, 2)
        assert more[0][0] == "decision" and more[0][1]["seq"] == 13
        assert more[1] == ("prompt", {"kind": "pair", "zh": "请扫描另一个码", "en": "Scan the other code",
                                      "remaining_s": 60}, None)
    with httpx.Client(timeout=10) as c, c.stream("GET", url, headers={"Last-Event-ID": "11"}) as r:
        events = read_events(r, 3)
        assert [e[2] for e in events] == ["12", "13", None]


def test_status_pushed_on_change(console):
    server, backend = console
    with httpx.Client(timeout=10) as c, c.stream("GET", server.url + "api/events/stream") as r:
        assert read_events(r, 1)[0][1]["setup"] is None
        backend.setup_active = True
        name, data, _ = read_events(r, 1)[0]
        assert name == "status" and data["setup"] == {"remaining_s": 60}


def test_canary_never_reaches_page_status_or_stream(console, client: httpx.Client):
    server, backend = console
    backend.add_decision(5, override={"to": "admit", "guard": "guard-1"})
    seen = client.get("/").text + client.get("/api/status").text
    with httpx.Client(timeout=10) as c, c.stream("GET", server.url + "api/events/stream") as r:
        events = read_events(r, 2)
    seen += json.dumps(events, ensure_ascii=False)
    for canary in (CANARY_PID, CANARY_SUB, CANARY_KID, "revocation_hash", "pid_kid"):
        assert canary not in seen
    assert "张*三" in seen


def test_decision_view_copies_only_named_fields():
    payload = canary_payload()
    payload["subject"]["extra"] = "x"
    payload["new_field"] = {"secret": CANARY_SUB}
    payload["pass"] = {"pass_id": "P-1", "plate": "豫A12345", "status": "valid", "sub": CANARY_SUB}
    at = {"wall": "2022-05-10T08:00:00.000Z", "clock": "floor", "boot": "b", "mono_ms": 1}
    v = decision_view(4, at, payload, reasons=[{"zh": "红码", "en": "Red code"}], overridable=False, unverified=True)
    assert set(v) == {"seq", "at", "clock", "outcome", "alert", "lane", "mode", "bundle", "venue", "health", "temp",
                      "pass", "credential", "subject", "reasons", "unverified", "overridable", "override"}
    assert v["credential"] == {"kind": "health", "status": "valid"}
    assert v["subject"] == {"name_m": "张*三", "role": "staff", "firm_id": "F0012", "whitelisted": True}
    assert v["pass"] == {"pass_id": "P-1", "plate": "豫A12345", "status": "valid"}
    assert v["reasons"] == [{"id": "code-colour", "zh": "红码", "en": "Red code"}]
    assert v["clock"] == "floor" and v["unverified"] is True
    assert CANARY_SUB not in json.dumps(v)


# -- accounts and the pin-hash command -----------------------------------------------------------


def test_accounts_skip_bad_entries(caplog):
    from tests.console.helpers import pin_hash as h

    accounts = Accounts.from_settings({"accounts": [
        {"id": "ok-1", "name": "A", "role": "guard", "pin": h("123456")},
        {"id": "Bad Id", "name": "B", "role": "guard", "pin": h("123456")},
        {"id": "x", "name": "C", "role": "boss", "pin": h("123456")},
        {"id": "y", "name": "D", "role": "guard", "pin": "plain-123456"},
        {"id": "z", "name": "E", "role": "guard", "pin": "scrypt$30$8$1$" + "00" * 16 + "$" + "00" * 32},
        {"id": "ok-1", "name": "dup", "role": "admin", "pin": h("123456")},
        "not an object",
    ]})
    assert [a["id"] for a in accounts.public()] == ["ok-1"]
    assert caplog.text.count("skipped") == 6
    assert len(Accounts.from_settings({"accounts": "nope"})) == 0


def test_pin_hash_command():
    runner = CliRunner()
    r = runner.invoke(pin_hash, input="24681012\n24681012\n")
    assert r.exit_code == 0, r.output
    line = r.output.strip().splitlines()[-1]
    assert re.fullmatch(r"scrypt\$14\$8\$1\$[0-9a-f]{32}\$[0-9a-f]{64}", line)
    assert verify_pin("24681012", parse_pin_hash(line)) and not verify_pin("24681013", parse_pin_hash(line))
    assert "24681012" not in r.output
    r = runner.invoke(pin_hash, input="12345\n12345\n")
    assert r.exit_code == 2
    r = runner.invoke(pin_hash, input="123456\n654321\n123456\n123456\n")
    assert r.exit_code == 0 and "do not match" in r.output.lower()


def test_non_loopback_listen_needs_tls(tmp_path):
    backend = RecordingBackend()
    with pytest.raises(ConfigError, match="tls_cert_file"):
        ConsoleServer(ConsoleConfig(listen="0.0.0.0:8081"), backend)
    with pytest.raises(ConfigError, match="go together"):
        ConsoleServer(ConsoleConfig(listen="0.0.0.0:8081", tls_cert_file=str(tmp_path / "c")), backend)
    ConsoleServer(ConsoleConfig(listen="0.0.0.0:0", allow_plain_http=True), backend)


def test_tls_console_sets_secure_cookie(tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gate.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server = ConsoleServer(ConsoleConfig(listen="127.0.0.1:0", tls_cert_file=str(tmp_path / "c.pem"),
                                         tls_key_file=str(tmp_path / "k.pem")), RecordingBackend())
    server.start()
    try:
        assert server.url.startswith("https://")
        with httpx.Client(verify=False, timeout=10) as c:
            r = c.get(server.url)
        assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
    finally:
        server.stop()


def test_account_names_cannot_break_out_of_the_page(console, client: httpx.Client):
    from tests.console.helpers import pin_hash as h

    _, backend = console
    backend._accounts = Accounts.from_settings({"accounts": [
        {"id": "evil", "name": "</script><img src=x>&", "role": "guard", "pin": h("123456")}]})
    text = client.get("/").text
    assert "<img src=x>" not in text and "</script><img" not in text
    boot = text.split('<script type="application/json" id="boot">', 1)[1].split("</script>", 1)[0]
    assert json.loads(boot)["accounts"][0]["name"] == "</script><img src=x>&"
