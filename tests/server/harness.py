"""Test harness for the upstream server: a real app on a real database, signed gates, tokens.

``ServerHarness`` opens a ``ServerState`` on the test's database (SQLite file or
the shared PostgreSQL) with an injectable clock and drives it through
Starlette's ``TestClient``. ``Gate`` is a device that signs its requests
exactly as sync.md §2.4 says, keeps a local hash chain built with
``sync.events.build_event`` and checks every signed answer (time and ack) it
gets back, so no test can pass on an unsigned or wrongly signed answer.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sync.canonical import canonical
from sync.events import build_event, genesis
from sync.keys import KeyFile, generate_key, verify_ed25519
from sync.server import create_app, open_state
from sync.server.config import RateLimitConfig, ServerConfig
from sync.server.tokens import create_token
from sync.signing import ack_text, enroll_text, head_text, new_nonce, request_text, time_text
from sync.timefmt import format_ms, parse_ms

T0 = parse_ms("2022-04-12T00:31:06.004Z")
SITE = "fc-plant-1"
VENUE = {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}
BOOT = "3f6c1d2e-8a4b-4c5d-9e0f-1a2b3c4d5e6f"


class FakeClock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def key_from_seed(role: str, seed_input: str) -> KeyFile:
    return generate_key(role, role, seed=hashlib.sha256(seed_input.encode()).digest())


@dataclass
class Chain:
    """A gate's local hash chain (what EventStore would hold)."""

    device_id: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def head(self) -> tuple[int, str]:
        if not self.events:
            return 0, genesis(self.device_id)
        return self.events[-1]["seq"], self.events[-1]["hash"]

    def append(self, kind: str, payload: dict[str, Any], *, wall_ms: int = T0, clock: str = "synced") -> dict[str, Any]:
        seq, prev = self.head
        at = {"wall": format_ms(wall_ms), "clock": clock, "boot": BOOT, "mono_ms": 1000 + seq}
        event, _, h = build_event(device_id=self.device_id, seq=seq + 1, kind=kind, at=at, payload=payload,
                                  prev_hash=prev)
        event["hash"] = h
        self.events.append(event)
        return event

    def hash_of(self, seq: int) -> str:
        return genesis(self.device_id) if seq == 0 else self.events[seq - 1]["hash"]


def decision(outcome: str = "admit", *, pid: str | None = "9347d5ebaf1bb363fbbcbfd205ae7d8a",
             name_m: str = "张*三", alert: str = "none", temp: int | None = 3650, venue: dict[str, Any] | None = None,
             reasons: list[str] | None = None) -> dict[str, Any]:
    return {
        "venue": venue or VENUE, "lane": "person", "mode": "normal", "bundle": {"version": 1, "state": "fresh"},
        "outcome": outcome, "alert": alert, "credential": {"kind": "health", "status": "valid"},
        "subject": {"pid": pid, "pid_kid": 1 if pid else None, "name_m": name_m, "role": "staff", "firm_id": "F0012",
                    "whitelisted": True},
        "health": {"code": "green", "test_age_min": 60, "flags": []},
        "temp": {"body_centi_c": temp, "status": "ok" if temp else "absent"},
        "reasons": reasons or ([] if outcome == "admit" else ["fever"]),
    }


def fever(decision_seq: int, temp: int = 3790) -> dict[str, Any]:
    return {"cause": "fever", "decision_seq": decision_seq, "body_centi_c": temp, "threshold_centi_c": 3730,
            "subject": decision()["subject"], "venue": VENUE,
            "observation_point": {"zh": "南门临时留观点", "en": "the south-gate observation point"}}


class Gate:
    """A signed device talking to the server under test."""

    def __init__(self, h: ServerHarness, device_id: str, key: KeyFile) -> None:
        self.h = h
        self.device_id = device_id
        self.key = key
        self.chain = Chain(device_id)
        self.last_nonce = ""

    def sign_headers(self, method: str, path: str, body: bytes, *, nonce: str | None = None,
                     time_s: int | None = None) -> dict[str, str]:
        nonce = nonce or new_nonce()
        time_s = self.h.clock() // 1000 if time_s is None else time_s
        sig = self.key.sign(request_text(method, path, self.device_id, time_s, nonce, body)).hex()
        self.last_nonce = nonce
        return {"X-Checkpoint-Device": self.device_id, "X-Checkpoint-Time": str(time_s),
                "X-Checkpoint-Nonce": nonce, "X-Checkpoint-Signature": sig}

    def request(self, method: str, route: str, body: bytes = b"", *, gzip_body: bool = False,
                headers: dict[str, str] | None = None, **sign: Any) -> Any:
        path = f"/v1/devices/{self.device_id}/{route}"
        hdrs = self.sign_headers(method, path, body, **sign)
        wire = body
        if gzip_body:
            wire = gzip.compress(body)
            hdrs["Content-Encoding"] = "gzip"
        if body:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        return self.h.client.request(method, path, content=wire, headers=hdrs)

    def batch(self, first: int, last: int, *, skip: dict[str, Any] | None = None) -> dict[str, Any]:
        """A batch of seqs first..last of the local chain (after a leading skip when given)."""
        start = skip["to_seq"] + 1 if skip else first
        events = [copy.deepcopy(e) for e in self.chain.events if start <= e["seq"] <= last]
        if events:
            head_seq, head_hash = events[-1]["seq"], events[-1]["hash"]
        else:
            head_seq, head_hash = skip["to_seq"], skip["last_hash"]  # type: ignore[index]
        return {"device_id": self.device_id, "first_seq": first, "last_seq": head_seq,
                "prev_hash": self.chain.hash_of(first - 1) if first - 1 <= len(self.chain.events) else "0" * 64,
                "skip": skip, "events": events, "head_hash": head_hash,
                "head_sig": self.key.sign(head_text(self.device_id, head_seq, head_hash)).hex()}

    def upload(self, batch: dict[str, Any] | bytes, **kw: Any) -> Any:
        body = batch if isinstance(batch, bytes) else json.dumps(batch, ensure_ascii=False).encode()
        return self.request("POST", "events", body, **kw)

    def upload_range(self, first: int, last: int) -> Any:
        return self.upload(self.batch(first, last))

    def check_time(self, doc: dict[str, Any], nonce: str | None = None) -> int:
        """The signed time of an answer must answer our nonce and verify with the server key."""
        t = doc["time"]
        assert t["nonce"] == (nonce or self.last_nonce)
        assert verify_ed25519(self.h.server_key.public, time_text(self.device_id, t["nonce"], t["server_time"]),
                              t["sig"]), "time signature does not verify"
        return parse_ms(t["server_time"])

    def check_ack(self, doc: dict[str, Any], nonce: str | None = None) -> tuple[int, str]:
        n = nonce or self.last_nonce
        assert verify_ed25519(self.h.server_key.public, ack_text(self.device_id, n, doc["acked_seq"],
                                                                 doc["acked_hash"]), doc["ack_sig"]), "bad ack_sig"
        self.check_time(doc, n)
        return doc["acked_seq"], doc["acked_hash"]


class LiveServer:
    """A real uvicorn serving the app on a free loopback port, in a thread (STYLE.md §3.4)."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                   lifespan="on", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="test:uvicorn", daemon=True)

    def start(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            self.thread.join(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ServerHarness:
    def __init__(self, db_url: str, tmp_path: Path, *, server_key: KeyFile | None = None,
                 publisher_keys: list[KeyFile] | None = None, clock: FakeClock | None = None,
                 rate_limit: RateLimitConfig | None = None, **config: Any) -> None:
        self.clock = clock or FakeClock()
        self.server_key = server_key or key_from_seed("server", "checkpoint test server key v1")
        self.config = ServerConfig(data_dir=tmp_path / "server", database=db_url, background_jobs=False,
                                   rate_limit=rate_limit or RateLimitConfig(enabled=False), **config)
        self.state = open_state(self.config, clock=self.clock, server_key=self.server_key,
                                publisher_keys=publisher_keys or [])
        self.app = create_app(self.state, workers=False)
        self.uvicorn = LiveServer(self.app)
        self.url = self.uvicorn.start()
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.admin_token = self.token("admin")
        self.auditor_token = self.token("auditor")

    def close(self) -> None:
        self.client.close()
        self.uvicorn.stop()
        self.state.db.dispose()

    def token(self, role: str, name: str | None = None, expires_days: int | None = None) -> str:
        with self.state.db.write() as conn:
            tok, _ = create_token(conn, role=role, name=name or f"test-{role}", now_ms=self.clock(),
                                  expires_days=expires_days)
        return tok

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token if role == 'admin' else self.auditor_token}"}

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        return self.client.request(method, path, headers={**self.auth("admin"), **kw.pop("headers", {})}, **kw)

    def auditor(self, method: str, path: str, **kw: Any) -> Any:
        return self.client.request(method, path, headers={**self.auth("auditor"), **kw.pop("headers", {})}, **kw)

    def add_site(self, site_id: str = SITE, tz: str = "Asia/Shanghai") -> None:
        r = self.admin("POST", "/v1/admin/sites", json={"site_id": site_id, "name": f"Site {site_id}", "tz": tz})
        assert r.status_code in (201, 409), r.text

    def add_device(self, device_id: str, site_id: str = SITE, venue: dict[str, Any] | None = None) -> str:
        self.add_site(site_id)
        r = self.admin("POST", "/v1/admin/devices", json={"device_id": device_id, "site_id": site_id,
                                                          "venue": venue or VENUE, "firm_id": "F0012",
                                                          "label": "test gate"})
        assert r.status_code == 201, r.text
        return str(r.json()["enrollment_code"])

    def enroll(self, code: str, key: KeyFile) -> Any:
        proof = key.sign(enroll_text(code, key.public)).hex()
        return self.client.post("/v1/enroll", json={"code": code, "public_key": key.public, "software": "0.1.0",
                                                    "proof": proof})

    def gate(self, device_id: str = "gate-fc-0007", key: KeyFile | None = None, site_id: str = SITE) -> Gate:
        key = key or generate_key("device", device_id)
        r = self.enroll(self.add_device(device_id, site_id), key)
        assert r.status_code == 200, r.text
        return Gate(self, device_id, key)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.state.db.read() as conn:
            return list(conn.execute(text(sql), params).all())


def canonical_text(value: Any) -> str:
    return canonical(value).decode()
