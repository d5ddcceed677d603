"""Gate store → agent → the real server (uvicorn on loopback) → trace query, on SQLite and PostgreSQL.

Every test enrols a gate with a real one-time code, appends through a real
``EventStore`` (as the gate process does) and lets the real agent upload; the
server's own tables are the evidence.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.clock import TrustedClock
from edge.config import GateConfig
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.agent.core import Agent
from sync.agent.enroll import enroll, load_device_key
from sync.agent.notify import Notifier
from sync.events import build_event
from sync.signing import request_text
from sync.timefmt import format_ms, utc_now_ms
from tests.agent.conftest import HOST, decision, fever, fill
from tests.pg import db_url, pg_url  # noqa: F401  (fixtures)
from tests.server.harness import ServerHarness

DEVICE = "gate-fc-0007"
VENUE_ID = "411322-0031-01"


class RealClock:
    """The server's clock: real time, optionally off by ``offset_ms``."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return utc_now_ms() + self.offset_ms

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)


class E2E:
    def __init__(self, h: ServerHarness, tmp: Path) -> None:
        self.h = h
        data = tmp / "gate"
        self.cfg = GateConfig.model_validate({
            "gate": {"device_id": DEVICE, "data_dir": str(data)},
            "store": {"reserve_mb": 0},
            "sync": {"server_url": h.url},
        })
        code = h.add_device(DEVICE)
        self.enrolled = enroll(self.cfg, server_url=h.url, code=code)
        self.state = StateDB(data)
        self.clock = TrustedClock(self.state, ntp=lambda: True)
        self.store = EventStore(data, DEVICE)
        self.agents: list[Agent] = []

    def agent(self, transport: httpx.BaseTransport | None = None, **kw: Any) -> Agent:
        kw.setdefault("bundle_update", None)
        a = Agent(self.cfg, transport=transport, notifier=Notifier(env={}), ntp=lambda: True, host=HOST,
                  rng=random.Random(3), **kw)
        self.agents.append(a)
        return a

    def close(self) -> None:
        for a in self.agents:
            a.close()
        self.store.close()
        self.state.close()

    def server_rows(self) -> list[tuple[int, str]]:
        return [(r.seq, r.hash) for r in self.h.rows(
            "SELECT seq, hash FROM events WHERE device_id = :d ORDER BY seq", d=DEVICE)]

    def device(self) -> Any:
        return self.h.rows("SELECT * FROM devices WHERE device_id = :d", d=DEVICE)[0]

    def alerts(self) -> list[Any]:
        return self.h.rows("SELECT kind, severity, seq, provisional FROM alerts WHERE device_id = :d ORDER BY id",
                           d=DEVICE)

    def local_rows(self) -> list[tuple[int, str]]:
        return [(e.seq, e.hash) for e in self.store.iter_all()]


@pytest.fixture
def e2e(db_url: str, tmp_path: Path) -> Iterator[E2E]:  # noqa: F811
    clock = RealClock()
    h = ServerHarness(db_url, tmp_path, clock=clock)  # type: ignore[arg-type]
    env = E2E(h, tmp_path)
    yield env
    env.close()
    h.close()


def _window() -> dict[str, str]:
    now = utc_now_ms()
    return {"from": format_ms(now - 3_600_000), "to": format_ms(now + 3_600_000)}


def test_event_reaches_the_trace_query_and_a_resent_batch_is_a_noop(e2e: E2E):
    d = e2e.store.append("decision", {**decision(1), "outcome": "deny", "reasons": ["fever"]}, e2e.clock.read().at())
    fill(e2e.store, e2e.clock, 40, start=10)
    agent = e2e.agent()
    assert agent.run_until(agent.drained, timeout_s=60)
    assert e2e.server_rows() == e2e.local_rows()
    r = e2e.h.auditor("GET", "/v1/trace/venue", params={"venue_id": VENUE_ID, **_window()})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    hit = [i for i in items if i["seq"] == d.seq]
    assert hit and hit[0]["result"] == "deny" and hit[0]["pid"] == f"{1:032x}" and hit[0]["name_m"] == "张*三"
    assert len([i for i in items if i["kind"] == "decision"]) == 41
    # person trace by pid (POST: the id never appears in a URL)
    r = e2e.h.auditor("POST", "/v1/trace/person", json={"pid": f"{1:032x}", **_window()})
    assert r.status_code == 200 and [i["seq"] for i in r.json()["items"]] == [d.seq]
    # the gate forgets its ack: everything is sent again and nothing changes on the server
    before = e2e.server_rows()
    agent.outbox.rewind(0, agent.uploader.genesis)
    assert agent.run_until(agent.drained, timeout_s=60)
    assert e2e.server_rows() == before
    dev = e2e.device()
    assert dev.acked_seq == agent.outbox.head_seq()


def test_gap_gives_409_and_the_agent_recovers(e2e: E2E):
    fill(e2e.store, e2e.clock, 600)
    agent = e2e.agent()
    assert agent.run_until(agent.drained, timeout_s=60)
    # the server is restored from a backup that ends at seq 250
    h250 = dict(e2e.local_rows())[250]
    from sqlalchemy import text
    with e2e.h.state.db.write() as conn:
        conn.execute(text("DELETE FROM events WHERE device_id = :d AND seq > 250"), {"d": DEVICE})
        conn.execute(text("UPDATE devices SET acked_seq = 250, acked_hash = :h WHERE device_id = :d"),
                     {"h": h250, "d": DEVICE})
    fill(e2e.store, e2e.clock, 3, start=600)
    seen: list[int] = []
    inner = httpx.HTTPTransport()

    class Watch(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            resp = inner.handle_request(request)
            seen.append(resp.status_code)
            return resp

    agent.close()
    a = e2e.agent(Watch())
    assert a.run_until(lambda: a.drained() and e2e.device().acked_seq == a.outbox.head_seq(), timeout_s=60)
    assert 409 in seen
    assert e2e.server_rows() == e2e.local_rows()


def test_lost_replies_become_duplicates_never_lost_or_doubled(e2e: E2E):
    fill(e2e.store, e2e.clock, 1600)
    inner = httpx.HTTPTransport()

    class LoseReplies(httpx.BaseTransport):
        def __init__(self) -> None:
            self.n = self.lost = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)     # the server committed
            if request.url.path.endswith("/events"):
                self.n += 1
                if self.n % 2 == 1:
                    response.read()
                    response.close()
                    self.lost += 1
                    raise httpx.ReadTimeout("injected: reply lost", request=request)
            return response

    t = LoseReplies()
    agent = e2e.agent(t)
    agent.uploader.backoff.base_s = 0.01   # keep the test short; the rhythm itself is tested elsewhere
    assert agent.run_until(agent.drained, timeout_s=120)
    assert t.lost >= 3
    assert e2e.server_rows() == e2e.local_rows()       # every event once, same hashes
    n = e2e.h.rows("SELECT count(*) AS n, count(DISTINCT hash) AS h FROM events WHERE device_id = :d", d=DEVICE)[0]
    assert n.n == n.h == agent.outbox.head_seq()


def test_tampered_history_is_refused_with_409_and_a_chain_conflict_alert(e2e: E2E):
    fill(e2e.store, e2e.clock, 50)
    agent = e2e.agent()
    assert agent.run_until(agent.drained, timeout_s=60)
    # someone rewrites seqs 30.. on the gate (a consistent, re-hashed fork) and makes it resend them
    import sqlite3
    c = sqlite3.connect(e2e.store.path, isolation_level=None)
    rows = c.execute("SELECT seq, kind, body FROM events WHERE seq >= 30 ORDER BY seq").fetchall()
    prev = c.execute("SELECT hash FROM events WHERE seq = 29").fetchone()[0]
    c.execute("BEGIN IMMEDIATE")
    for seq, kind, body in rows:
        ev = json.loads(body)
        if ev["kind"] == "decision":
            ev["payload"]["outcome"] = "admit" if ev["payload"]["outcome"] != "admit" else "deny"
        _, nb, nh = build_event(device_id=DEVICE, seq=seq, kind=kind, at=ev["at"], payload=ev["payload"],
                                prev_hash=prev)
        c.execute("UPDATE events SET body = ?, hash = ? WHERE seq = ?", (nb.decode(), nh, seq))
        prev = nh
    c.execute("UPDATE meta SET head_hash = ?", (prev,))
    c.execute("UPDATE outbox SET acked_seq = 29, acked_hash = (SELECT hash FROM events WHERE seq = 29)")
    c.execute("COMMIT")
    c.close()
    agent.uploader.step()
    assert agent.outbox.state().state == "conflict"
    kinds = {(a.kind, a.severity) for a in e2e.alerts()}
    assert ("chain_conflict", "critical") in kinds
    assert e2e.device().conflict


def test_tampered_in_flight_is_refused_and_nothing_is_stored(e2e: E2E):
    fill(e2e.store, e2e.clock, 20)
    inner = httpx.HTTPTransport()

    class Tamper(httpx.BaseTransport):
        """Changes one decision's outcome in flight after the gate signed the request."""

        def __init__(self) -> None:
            self.on = True
            self.codes: list[int] = []

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if self.on and request.url.path.endswith("/events"):
                raw = request.read()
                gz = request.headers.get("content-encoding") == "gzip"
                doc = json.loads(gzip.decompress(raw) if gz else raw)
                doc["events"][-1]["payload"]["outcome"] = "deny"
                body = json.dumps(doc).encode()
                headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length",
                                                                                          "content-encoding")}
                request = httpx.Request("POST", request.url, headers=headers, content=body)
            resp = inner.handle_request(request)
            if request.url.path.endswith("/events"):
                self.codes.append(resp.status_code)
            return resp

    t = Tamper()
    agent = e2e.agent(t)
    agent.start()
    agent.uploader.step()
    assert t.codes and 400 <= t.codes[-1] < 500
    assert e2e.server_rows() == []
    assert agent.outbox.state().acked_seq == 0 and agent.outbox.state().state == "revoked"
    t.on = False
    agent.due.upload = 0
    assert agent.uploader.step().outcome == "retry"   # the probe finds the device fine
    assert agent.run_until(agent.drained, timeout_s=60)


def test_event_that_does_not_hash_is_isolated_blocked_and_reported(e2e: E2E):
    """A software fault that sends a bad event: 400 bad_batch, halving down to it, state blocked."""
    fill(e2e.store, e2e.clock, 60)
    inner = httpx.HTTPTransport()
    key = load_device_key(e2e.cfg.identity_dir)

    class Corrupting(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/events"):
                raw = request.read()
                doc = json.loads(gzip.decompress(raw) if request.headers.get("content-encoding") == "gzip" else raw)
                for ev in doc["events"]:
                    if ev["seq"] == 40:
                        ev["payload"]["reasons"] = ["tampered"]
                body = json.dumps(doc).encode()
                h = dict(request.headers)
                sig = key.sign(request_text("POST", request.url.path, DEVICE, int(h["x-checkpoint-time"]),
                                            h["x-checkpoint-nonce"], body)).hex()
                h = {k: v for k, v in h.items() if k not in ("content-length", "content-encoding")}
                h["x-checkpoint-signature"] = sig
                request = httpx.Request("POST", request.url, headers=h, content=body)
            return inner.handle_request(request)

    agent = e2e.agent(Corrupting())
    assert agent.run_until(lambda: agent.outbox.state().state == "blocked", timeout_s=60)
    assert agent.outbox.state().acked_seq == 39
    assert "bad_batch" in (agent.outbox.state().last_error or "")
    agent.heartbeat()
    assert e2e.device().hb_upload_state == "blocked"
    assert agent.outbox.state().state == "blocked"   # the heartbeat's ack does not clear it


def test_clock_skew_is_corrected_from_the_signed_time(e2e: E2E):
    e2e.h.clock.advance(3600)     # the server is an hour ahead of the gate's system clock
    fill(e2e.store, e2e.clock, 5)
    seen: list[tuple[int, str]] = []
    inner = httpx.HTTPTransport()

    class Watch(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            resp = inner.handle_request(request)
            if resp.status_code == 401:
                resp.read()
                seen.append((401, resp.json().get("error")))
            return resp

    agent = e2e.agent(Watch())
    assert agent.run_until(agent.drained, timeout_s=60)
    assert seen.count((401, "clock_skew")) == 1
    assert abs(agent.server_clock.now_ms() - e2e.h.clock()) < 10_000


def test_flash_copy_arrives_ahead_of_the_backlog(e2e: E2E):
    fill(e2e.store, e2e.clock, 1200)
    agent = e2e.agent()
    agent.start()
    agent.tick()
    d = e2e.store.append("decision", decision(7, alert="urgent"), e2e.clock.read().at())
    f = e2e.store.append("temp_alert", fever(d.seq), e2e.clock.read().at())
    agent.flasher._next_scan = 0
    agent.tick()
    assert e2e.device().acked_seq < d.seq
    provisional = {(a.kind, a.seq): a.provisional for a in e2e.alerts()}
    assert provisional.get(("fever", f.seq)) and provisional.get(("decision_alert", d.seq))
    assert agent.run_until(agent.drained, timeout_s=120)
    final = {(a.kind, a.seq): a.provisional for a in e2e.alerts()}
    assert not final[("fever", f.seq)] and len([k for k in final if k == ("fever", f.seq)]) == 1


def test_restart_resumes_from_the_outbox(e2e: E2E):
    fill(e2e.store, e2e.clock, 1200)
    a1 = e2e.agent()
    a1.start()
    a1.tick()
    a1.tick()
    mid = a1.outbox.state().acked_seq
    assert 0 < mid < a1.outbox.head_seq()
    a1.close()
    a2 = e2e.agent()
    assert a2.run_until(a2.drained, timeout_s=60)
    assert e2e.server_rows() == e2e.local_rows()
    posts = e2e.h.rows("SELECT count(*) AS n FROM request_nonces WHERE device_id = :d", d=DEVICE)[0].n
    assert posts >= 3


# -- bundles: the agent's poller runs the gate-side update against the real server ---------------

def _sources(mode: str) -> dict[str, bytes]:
    repo = Path(__file__).resolve().parents[2]
    return {
        "rules.json": (repo / "config/rules/rules.json").read_bytes(),
        "settings.json": (repo / "config/rules/settings.json").read_bytes(),
        "trust.json": json.dumps({"keys": []}).encode(),
        "roster.json": json.dumps({"roster_key": "ab" * 32, "staff": [], "teams": []}).encode(),
        "firms.json": b"[]", "preregistrations.json": b"[]", "revocations.json": b"[]",
        "mode.json": json.dumps({"mode": mode, "since": format_ms(utc_now_ms() - 60_000), "reason": "",
                                 "set_by": "admin"}).encode(),
    }


@pytest.fixture
def fleet_e2e(db_url: str, tmp_path: Path) -> Iterator[tuple[E2E, Any]]:  # noqa: F811
    from sync.bundle.publish import keys_body, sign_document
    from sync.keys import generate_key
    from tests.server.harness import key_from_seed

    root = generate_key("root", "root-1")
    publisher = generate_key("publisher", "publisher-1")
    server_key = key_from_seed("server", "checkpoint test server key v1")
    keys1 = sign_document("keys", keys_body(previous=None, fleet="test-fleet", root=[root], publisher=[publisher],
                                            server=[server_key.public_only()],
                                            issued_at_ms=utc_now_ms() - 86_400_000), [root])
    h = ServerHarness(db_url, tmp_path, clock=RealClock(), server_key=server_key,  # type: ignore[arg-type]
                      publisher_keys=[publisher])
    r = h.admin("POST", "/v1/admin/keys", content=keys1, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    r = h.admin("POST", "/v1/admin/sources", data={"site": "", "note": "first rules"},
                files=[("files", (n, d)) for n, d in _sources("normal").items()])
    assert r.status_code == 201, r.text
    env = E2E(h, tmp_path)
    yield env, keys1
    env.close()
    h.close()


def test_bundle_polling_reaches_a_new_mode_at_the_next_poll(fleet_e2e: tuple[E2E, Any]) -> None:
    import threading

    env, keys1 = fleet_e2e
    assert env.enrolled.anchor.startswith("keys version 1 of fleet test-fleet")  # anchor fetched at enrolment
    env.cfg.sync.poll_bundle_s = 2.0
    agent = env.agent(bundle_update="auto")
    assert agent.poller is not None
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    worker.start()
    try:
        def mode() -> str | None:
            row = env.state.read_row("bundle")
            return None if row is None else row["mode"]

        end = utc_now_ms() + 60_000
        while mode() != "normal" and utc_now_ms() < end:
            stop.wait(0.05)
        assert mode() == "normal"
        polls_before = agent.poller.polls
        r = env.h.admin("POST", "/v1/admin/mode", json={"site": None, "mode": "emergency", "reason": "drill"})
        assert r.status_code == 201, r.text
        while mode() != "emergency" and utc_now_ms() < end:
            stop.wait(0.05)
        assert mode() == "emergency"
        # the switch came with the first poll after publishing (each wait ≤ poll_bundle_s, test_timing.py)
        assert agent.poller.polls - polls_before <= 2
        assert agent.poller.failed_polls == 0
        # the event follows the switch (state row first, then the event, bundles.md §3.6)
        while [e.kind for e in env.store.iter_all()].count("bundle_applied") < 2 and utc_now_ms() < end:
            stop.wait(0.05)
        kinds = [e.kind for e in env.store.iter_all()]
        assert kinds.count("bundle_applied") == 2 and "keys_applied" in kinds
        # the next heartbeat reports the new bundle and mode
        agent.due.heartbeat = 0
        stop.wait(1.5)
        dev = env.device()
        assert dev.hb_bundle_version == 2 and dev.hb_mode == "emergency"
    finally:
        stop.set()
        worker.join(10)
