"""The console against the real gate process (console.md §4): refusals, manual entry, set-up mode,
canaries. HTTP on a real uvicorn; the browser tests are in test_browser.py."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from edge.console import PinGate
from edge.demo import HOST_FIRM, DemoPerson
from sync.events import pid as make_pid
from tests.console.helpers import read_events
from tests.gate.conftest import ADMIN_PIN, GUARD_PIN
from tests.gate.harness import PID_KEY, RELAY, wait_until

POSITIVE = DemoPerson("positive", "阳性", "positive", "陈*", "staff", HOST_FIRM, "red", flags=("positive",),
                      on_roster=False)


def person(world, key):
    return next(p for p in world.people if p.key == key)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Console:
    """An httpx client that behaves like the page: cookie, CSRF header, Origin."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.c = httpx.Client(base_url=url.rstrip("/"), timeout=20)
        self.clock = clock
        assert self.c.get("/").status_code == 200

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        r = self.c.post(path, json=body, headers={"Origin": str(self.c.base_url),
                                                  "X-CSRF-Token": self.c.cookies.get("ck_csrf") or ""})
        self.clock.t += 1.1       # one PIN check per second per client (console.md §3): the clock moves on
        return r

    def close(self) -> None:
        self.c.close()


@pytest.fixture
def console_gate(make_gate):
    def make(**kw: Any):
        clock = Clock()
        g = make_gate(console=True, pin_gate=PinGate(clock=clock), **kw)
        c = Console(g.app.console.url, clock)
        return g, c

    return make


def override(c: Console, seq: int, to: str = "admit", account: str = "guard-1", pin: str = GUARD_PIN) -> httpx.Response:
    return c.post("/api/override", {"decision_seq": seq, "to": to, "reason": "checked_by_hand", "note": "",
                                    "account": account, "pin": pin})


def manual(c: Console, outcome: str = "admit") -> httpx.Response:
    return c.post("/api/manual", {"outcome": outcome, "reason": "checked_by_hand", "note": "", "account": "guard-1",
                                  "pin": GUARD_PIN})


def test_override_records_event_and_pulses(console_gate, world):
    g, c = console_gate()
    view = g.decide(world.health_code(person(world, "expired-test")))
    assert view["outcome"] == "deny" and view["overridable"]
    mark = g.mark()
    r = c.post("/api/override", {"decision_seq": view["seq"], "to": "admit", "reason": "test_shown",
                                 "note": "paper result 2022-05-10", "account": "guard-1", "pin": GUARD_PIN})
    assert r.status_code == 200, r.text
    seq = r.json()["override_seq"]
    ev = g.events("override")[-1]
    assert ev["seq"] == seq
    assert ev["payload"] == {"decision_seq": view["seq"], "from": "deny", "to": "admit", "guard": "guard-1",
                             "reason": "test_shown", "note": "paper result 2022-05-10",
                             "subject": ev["payload"]["subject"], "venue": ev["payload"]["venue"]}
    wait_until(lambda: [bool(s.state) for s in g.pin(RELAY).states] == [False, True, False])
    again = g.wait("decision", mark, seq=view["seq"])
    assert again["override"] == {"to": "admit", "account": "guard-1"}
    c.close()


def test_admit_refused_on_positive_case_deny_and_manual_admit_within_60s(console_gate, world):
    g, c = console_gate()
    view = g.decide(world.health_code(POSITIVE))
    assert view["reasons"][0]["id"] == "positive-case"
    r = override(c, view["seq"])
    assert r.status_code == 409 and r.json()["error"] == "not_overridable"
    r = manual(c, "admit")
    assert r.status_code == 409 and r.json()["error"] == "not_overridable"
    assert [bool(s.state) for s in g.pin(RELAY).states] == [False]
    assert g.events("override") == []
    r = manual(c, "deny")                                   # a manual deny is allowed
    assert r.status_code == 200
    body = r.json()
    d = [e for e in g.events("decision") if e["seq"] == body["decision_seq"]][0]["payload"]
    assert d["outcome"] == "refer" and d["reasons"] == ["gate-manual-check"] and d["credential"]["kind"] == "none"
    o = g.events("override")[-1]
    assert o["seq"] == body["override_seq"] and o["payload"]["from"] == "refer" and o["payload"]["to"] == "deny"
    c.close()


def test_manual_admit_pulses(console_gate):
    g, c = console_gate()
    r = manual(c, "admit")
    assert r.status_code == 200
    wait_until(lambda: [bool(s.state) for s in g.pin(RELAY).states] == [False, True, False])
    c.close()


def test_override_refusals(console_gate, world):
    g, c = console_gate()
    deny = g.decide(world.health_code(person(world, "expired-test")))
    assert override(c, deny["seq"], to="deny").status_code == 400           # already a deny
    assert override(c, 99_999).json()["error"] == "too_old"                 # not among the last ten
    r = c.post("/api/override", {"decision_seq": deny["seq"], "to": "admit", "reason": "hardware_button", "note": "",
                                 "account": "guard-1", "pin": GUARD_PIN})
    assert r.status_code == 400 and "override reasons" in r.json()["detail"]
    g.app._recent[-1].mono -= 601                                             # ten minutes later
    assert override(c, deny["seq"]).json()["error"] == "too_old"
    c.close()


def test_setup_mode_binds_on_venue_code(console_gate, world):
    g, c = console_gate()
    r = c.post("/api/setup", {"account": "admin", "pin": ADMIN_PIN})
    assert r.status_code == 200 and r.json() == {"remaining_s": 60}
    assert g.app.status()["setup"]["remaining_s"] > 55
    mark = g.show(world.venue_code(venue_id="V0012-02", zone="warehouse", door="north-2"))
    g.wait("prompt", mark, kind="setup", en="Bound to V0012-02 warehouse north-2")
    vb = g.events("venue_bound")[-1]["payload"]
    assert vb == {"venue": {"venue_id": "V0012-02", "zone": "warehouse", "door": "north-2"}, "firm_id": HOST_FIRM,
                  "source": "venue_code", "kid": world.keys["venue"].keyid, "venue_name": vb["venue_name"],
                  "by": "admin"}
    row = g.app.state.read_row("binding")
    assert (row["venue_id"], row["zone"], row["source"], row["event_seq"]) == (
        "V0012-02", "warehouse", "venue_code", g.events("venue_bound")[-1]["seq"])
    assert g.app.status()["setup"] is None
    g.push.clear()
    time.sleep(1.2)
    view = g.decide("HELLO-AFTER-BINDING")
    assert view["venue"] == {"venue_id": "V0012-02", "zone": "warehouse", "door": "north-2"}
    c.close()


def test_setup_mode_ends_without_binding_on_other_code(console_gate, world):
    g, c = console_gate()
    assert c.post("/api/setup", {"account": "admin", "pin": ADMIN_PIN}).status_code == 200
    mark = g.show(world.health_code(person(world, "green-staff")))
    g.wait("prompt", mark, kind="setup", en="Not a venue code: nothing bound")
    assert g.events("venue_bound") == [] and g.events("decision") == []     # not decided either
    assert g.app.state.read_row("binding") is None
    c.close()


def test_setup_mode_refuses_venue_code_of_untrusted_key(console_gate, world):
    g, c = console_gate()
    assert c.post("/api/setup", {"account": "admin", "pin": ADMIN_PIN}).status_code == 200
    forged = world.venue_code(key="issuer")          # the health issuer's key is not trusted for venues
    mark = g.show(forged)
    data = g.wait("prompt", mark, kind="setup")
    while data["remaining_s"] == 60:
        data = g.wait("prompt", g.mark() - 1, kind="setup")
    assert "did not verify" in data["en"]
    assert g.events("venue_bound") == []
    c.close()


def test_setup_mode_ends_after_60_s(console_gate, world, monkeypatch):
    import edge.app

    monkeypatch.setattr(edge.app, "SETUP_S", 1)
    g, c = console_gate()
    r = c.post("/api/setup", {"account": "admin", "pin": ADMIN_PIN})
    assert r.json() == {"remaining_s": 1}
    wait_until(lambda: g.app.status()["setup"] is None, timeout=5)
    g.show(world.venue_code())                       # too late: decided as a scan, never bound
    time.sleep(1.5)
    assert g.events("venue_bound") == []
    c.close()


def test_canaries_never_reach_page_status_or_stream(console_gate, world):
    g, c = console_gate(enrolled=True)
    p = person(world, "red-contact")
    view = g.decide(world.health_code(p))
    ev = [e for e in g.events("decision") if e["seq"] == view["seq"]][0]["payload"]
    sub = world.sub(p.key)
    pid = make_pid(PID_KEY, "SUB", sub)
    assert ev["subject"]["pid"] == pid and ev["credential"]["kid"] == world.keys["issuer"].keyid
    seen = c.c.get("/").text + c.c.get("/api/status").text
    with c.c.stream("GET", "/api/events/stream") as r:
        seen += json.dumps(read_events(r, 2), ensure_ascii=False)
    canaries = [pid, sub, world.keys["issuer"].keyid, world.keys["venue"].keyid, world.badge_text,
                world.code_hash(world.badge_text), PID_KEY.hex(), "pid_kid", "revocation_hash"]
    for canary in canaries:
        assert canary not in seen, canary
    assert "王*" in seen
    c.close()
