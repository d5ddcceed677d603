"""A console backend for the console's own HTTP tests, and small SSE helpers.

The gate process (edge.app) is the real backend; its browser tests live in
tests/console/test_browser.py. Here the console's own rules are tested — CSRF,
bodies, PINs, lockout, the stream — against a backend that records what the
console handed over, with a real uvicorn on loopback.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from edge.console import Accounts, Broadcaster, ConsoleRefusal, decision_view
from edge.console.accounts import Account, hash_pin
from edge.console.web import ManualRequest, OverrideRequest

GUARD_PIN = "246810"
ADMIN_PIN = "13579135"
CANARY_PID = "c0ffee00c0ffee00c0ffee00c0ffee00"
CANARY_SUB = "5ab5ab5ab5ab5ab5ab5ab5ab5ab5ab5a"
CANARY_KID = "fedcba9876543210"

_HASHES: dict[str, str] = {}


def pin_hash(pin: str) -> str:
    # log2 N = 10 keeps the tests fast; the gate uses whatever the string says.
    if pin not in _HASHES:
        _HASHES[pin] = hash_pin(pin, log2_n=10)
    return _HASHES[pin]


def console_settings() -> dict[str, Any]:
    return {"accounts": [
        {"id": "guard-1", "name": "王*", "role": "guard", "pin": pin_hash(GUARD_PIN)},
        {"id": "admin", "name": "Admin", "role": "admin", "pin": pin_hash(ADMIN_PIN)},
    ]}


def canary_payload(outcome: str = "deny", reasons: tuple[str, ...] = ("code-colour",)) -> dict[str, Any]:
    return {
        "venue": {"venue_id": "V0012-01", "zone": "production", "door": "south-1"},
        "lane": "person", "mode": "normal", "bundle": {"version": 3, "state": "fresh"},
        "outcome": outcome, "alert": "none",
        "credential": {"kind": "health", "status": "valid", "kid": CANARY_KID},
        "subject": {"pid": CANARY_PID, "pid_kid": 1, "name_m": "张*三", "role": "staff", "firm_id": "F0012",
                    "whitelisted": True, "sub": CANARY_SUB},
        "health": {"code": "red", "test_age_min": 600, "flags": ["close_contact"]},
        "temp": {"body_centi_c": 3640, "status": "ok"},
        "reasons": list(reasons),
        "revocation_hash": CANARY_SUB,
    }


class RecordingBackend:
    def __init__(self) -> None:
        self.broadcaster = Broadcaster()
        self._accounts = Accounts.from_settings(console_settings())
        self.views: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any, str]] = []
        self.setup_active = False
        self.lock = threading.Lock()
        self.next_seq = 100

    def add_decision(self, seq: int, payload: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        at = {"wall": "2022-05-10T08:00:00.000Z", "clock": "synced", "boot": CANARY_SUB, "mono_ms": 5}
        view = decision_view(seq, at, payload or canary_payload(), reasons=[{"zh": "红码", "en": "Red code"}], **kw)
        with self.lock:
            self.views.append(view)
            self.views = self.views[-10:]
        self.broadcaster.publish("decision", view, id=seq)
        return view

    def status(self) -> dict[str, Any]:
        return {
            "gate": {"device_id": "gate-test-01", "lane": "person", "binding": None},
            "mode": {"mode": "normal", "since": None}, "bundle": {"version": 3, "state": "fresh", "issued_at": None},
            "clock": {"state": "synced", "now": "2022-05-10T08:00:01.000Z"},
            "camera": {"state": "ok"}, "thermometer": {"state": "ok"},
            "storage": {"level": "ok"}, "upload": {"state": "ok", "backlog": 0},
            "setup": {"remaining_s": 60} if self.setup_active else None, "banners": [],
        }

    def recent_views(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.views)

    def accounts(self) -> Accounts:
        return self._accounts

    def override_reasons(self) -> list[dict[str, str]]:
        return [{"code": "checked_by_hand", "zh": "人工核验无误", "en": "Checked by hand"}]

    def override(self, req: OverrideRequest, account: Account) -> int:
        if req.decision_seq == 999:
            raise ConsoleRefusal(409, "not_overridable", "a positive-case deny cannot be overridden")
        self.calls.append(("override", req, account.id))
        self.next_seq += 1
        return self.next_seq

    def manual(self, req: ManualRequest, account: Account) -> tuple[int | None, int | None]:
        self.calls.append(("manual", req, account.id))
        self.next_seq += 2
        return self.next_seq - 1, self.next_seq

    def start_setup(self, account: Account) -> int:
        if self.setup_active:
            raise ConsoleRefusal(409, "setup_active", "set-up mode is already on")
        self.setup_active = True
        self.calls.append(("setup", None, account.id))
        return 60


def read_events(response: httpx.Response, count: int) -> list[tuple[str, dict[str, Any], str | None]]:
    """Read ``count`` SSE events (name, data, id) from a streaming response."""
    out: list[tuple[str, dict[str, Any], str | None]] = []
    name, data, eid = None, None, None
    lines = response.extensions.get("ck_lines")
    if lines is None:
        lines = response.extensions["ck_lines"] = response.iter_lines()
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line.startswith("id: "):
            eid = line[4:]
        elif line == "" and name is not None:
            out.append((name, data or {}, eid))
            name, data, eid = None, None, None
            if len(out) >= count:
                return out
    return out
