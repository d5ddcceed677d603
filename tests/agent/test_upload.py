"""The upload loop against the in-memory server: the response table of sync.md §3.4."""

from __future__ import annotations

import json

import httpx
import pytest

from edge.store.state import StateDB
from sync.events import genesis
from tests.agent.conftest import fill, seeded_key
from tests.agent.fakeserver import FakeServer


class LoseReplies(httpx.BaseTransport):
    """The server commits, the gate never hears back (STYLE.md §3.1)."""

    def __init__(self, inner: httpx.BaseTransport, every: int, route: str = "/events") -> None:
        self.inner, self.every, self.route, self.sent, self.lost = inner, every, route, 0, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith(self.route):
            self.sent += 1
            if self.sent % self.every == 0:
                response.close()
                self.lost += 1
                raise httpx.ReadTimeout("injected: reply lost", request=request)
        return response


def _writer(gate):
    state = StateDB(gate.data_dir)
    store = gate.writer()
    return state, store, gate.clock(state)


def test_drain_to_head_and_chain_verifies(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 1234)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained, timeout_s=60)
    head = agent.outbox.head_seq()
    assert server.acked_seq == head == agent.outbox.state().acked_seq
    server.verify_chain()
    # 1234 decisions + the venue_bound event of the binding, in batches of at most 500
    posts = [s.request for s in server.requests("events") if s.status == 200]
    assert all(len(p["events"]) <= 500 for p in posts)
    assert len(posts) == 3 and agent.uploader.batches_ok == 3
    # acks row with the signed server time, for retention
    acks = agent.outbox.execute("SELECT acked_seq, server_time FROM acks ORDER BY acked_seq").fetchall()
    assert acks[-1][0] == head
    store.close()
    state.close()


def test_lost_replies_become_duplicates_never_double_stored(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 1600)
    server = gate.fake_server()
    lossy = LoseReplies(server.transport(), every=2)
    agent = make_agent(lossy)
    agent.uploader.backoff.base_s = 0.01  # the rhythm itself is tested in test_timing.py
    assert agent.run_until(agent.drained, timeout_s=120)
    assert lossy.lost >= 2
    assert server.duplicates > 0          # the re-sent batches were recognised
    assert server.acked_seq == agent.outbox.head_seq()
    assert len(server.events) == server.acked_seq  # nothing stored twice, nothing missing
    server.verify_chain()
    store.close()
    state.close()


def test_resent_batch_is_a_noop_on_the_server(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 10)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    before = dict(server.events)
    # the gate forgets the ack (a power cut before the NORMAL-synced ack was durable)
    agent.outbox.rewind(0, genesis(gate.identity.device_id))
    assert agent.run_until(agent.drained)
    assert server.events == before
    last = server.requests("events")[-1]
    assert last.status == 200 and last.body["stored"] == 0 and last.body["duplicates"] > 0
    store.close()
    state.close()


def test_start_adopts_a_lost_ack_from_state(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 30)
    server = gate.fake_server()
    a1 = make_agent(server.transport())
    assert a1.run_until(a1.drained)
    a1.outbox.rewind(5, a1.uploader.local_hash(5))
    a1.close()
    a2 = make_agent(server.transport())
    a2.start()
    assert a2.outbox.state().acked_seq == server.acked_seq  # adopted from GET …/state, nothing re-sent
    store.close()
    state.close()


def test_seq_gap_rewinds_and_resends(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 700)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    server.lose_after(200)          # restored from a backup
    fill(store, clock, 5, start=700)
    assert agent.run_until(lambda: agent.drained() and server.acked_seq == agent.outbox.head_seq())
    assert any(s.status == 409 and s.body["error"] == "seq_gap" for s in server.seen)
    server.verify_chain()
    assert len(server.events) == agent.outbox.head_seq()
    store.close()
    state.close()


def test_seq_gap_after_local_pruning_sends_server_lost_skip(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 300)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    # retention pruned everything acked (ack older than 0 days)
    agent.outbox.execute("UPDATE acks SET server_time = '2000-01-01T00:00:00.000Z'")
    assert agent.outbox.prune_retention(clock.now(), 0) > 0
    pruned = agent.outbox.state().pruned_through
    server.lose_after(100)
    fill(store, clock, 3, start=300)
    assert agent.run_until(lambda: server.acked_seq == agent.outbox.head_seq())
    hole = server.holes[101]
    assert hole["cause"] == "server_lost" and hole["to_seq"] == pruned and hole["gap_seq"] is None
    server.verify_chain()
    store.close()
    state.close()


def test_tampered_batch_rejected_then_isolated_and_blocked(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 40)
    server = gate.fake_server()
    inner = server.transport()

    class Tamper(httpx.BaseTransport):
        """A proxy that rewrites one event's payload in flight (the signature no longer matches the hash)."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/events"):
                import gzip
                raw = request.read()
                gz = request.headers.get("content-encoding") == "gzip"
                doc = json.loads(gzip.decompress(raw) if gz else raw)
                for ev in doc["events"]:
                    if ev["seq"] == 20:
                        ev["payload"]["outcome"] = "deny"
                return server._bad(request.headers["x-checkpoint-nonce"], 20, "hash mismatch") \
                    if any(e["seq"] == 20 for e in doc["events"]) else inner.handle_request(request)
            return inner.handle_request(request)

    agent = make_agent(Tamper())
    agent.run_until(lambda: agent.outbox.state().state == "blocked", timeout_s=30)
    ob = agent.outbox.state()
    assert ob.state == "blocked" and ob.acked_seq == 19 and "400" in (ob.last_error or "")
    # halving isolated the item: batches shrank to one event
    sent = [s for s in server.seen if s.path.endswith("/events")]
    assert sent[-1].body["acked_seq"] == 19
    store.close()
    state.close()


def test_conflict_stops_upload_and_probes(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 20)
    server = gate.fake_server()
    server.conflict, server.conflict_seq = True, 3
    agent = make_agent(server.transport())
    agent.start()
    assert agent.outbox.state().state == "conflict"
    r = agent.uploader.step()
    assert r.outcome == "conflict" and r.delay_s == 600
    # an admin clears the conflict: the next probe resumes
    server.conflict = False
    r = agent.uploader.step()
    assert r.outcome == "retry"
    assert agent.run_until(agent.drained)
    store.close()
    state.close()


def test_clock_skew_recovers_with_the_signed_time(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 5)
    server = gate.fake_server()
    offset_ms = 3_600_000  # the server's clock is an hour ahead of the gate's system clock
    base = server.now_ms
    server.now_ms = lambda: base() + offset_ms
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    skews = [s for s in server.seen if s.status == 401 and s.body["error"] == "clock_skew"]
    assert len(skews) == 1  # one 401, then the estimate from the signed time is right
    assert abs(agent.server_clock.now_ms() - server.now_ms()) < 5000
    store.close()
    state.close()


def test_forged_ack_never_moves_the_cursor(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 5)
    server = gate.fake_server()
    server.server_key = seeded_key("server", "attacker")  # acks signed by a key the gate does not know
    agent = make_agent(server.transport())
    agent.run_until(lambda: agent.uploader.backoff.failures >= 2, timeout_s=20)
    assert agent.outbox.state().acked_seq == 0
    assert agent.outbox.state().state == "backoff"
    store.close()
    state.close()


@pytest.mark.parametrize("status,code", [(403, "device_revoked"), (401, "bad_signature"), (401, "unknown_device")])
def test_revoked_stops_and_probes(gate, make_agent, status, code):
    state, store, clock = _writer(gate)
    fill(store, clock, 3)
    server = gate.fake_server()
    server.refuse = lambda req, doc: server._err(status, code) if req.url.path.endswith("/events") else None
    agent = make_agent(server.transport())
    agent.start()
    r = agent.uploader.step()
    assert r.outcome == "revoked" and r.delay_s == 600
    assert agent.outbox.state().state == "revoked"
    server.refuse = None
    assert agent.uploader.step().outcome == "retry"   # the probe finds the device active again
    assert agent.run_until(agent.drained)
    store.close()
    state.close()


def test_server_errors_back_off_with_retry_after(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 3)
    server = gate.fake_server()
    calls = {"n": 0}

    def busy(req: httpx.Request, doc: object) -> httpx.Response | None:
        if req.url.path.endswith("/events") and calls["n"] < 3:
            calls["n"] += 1
            return httpx.Response([429, 503, 500][calls["n"] - 1], json={"error": "rate_limited"},
                                  headers={"Retry-After": "7"})
        return None

    server.refuse = busy
    agent = make_agent(server.transport())
    agent.start()
    delays = [agent.uploader.step() for _ in range(3)]
    assert [d.outcome for d in delays] == ["backoff"] * 3
    assert all(d.delay_s >= 7 for d in delays)
    assert agent.uploader.backoff.failures == 3
    assert agent.uploader.step().outcome == "sent"
    assert agent.uploader.backoff.failures == 0
    store.close()
    state.close()


def test_too_large_halves_down_to_what_fits(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 100)
    server = gate.fake_server(max_events=30)
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    sizes = [s for s in server.seen if s.path.endswith("/events")]
    assert any(s.status == 413 for s in sizes)
    server.verify_chain()
    store.close()
    state.close()


def test_replayed_nonce_retried_at_once(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 3)
    server = gate.fake_server()
    n = {"c": 0}

    def replay(req: httpx.Request, doc: object) -> httpx.Response | None:
        if req.url.path.endswith("/events") and n["c"] == 0:
            n["c"] += 1
            return server._err(401, "replayed_nonce", req.headers["x-checkpoint-nonce"])
        return None

    server.refuse = replay
    agent = make_agent(server.transport())
    agent.start()
    assert agent.uploader.step().outcome == "sent"
    nonces = [s.headers["x-checkpoint-nonce"] for s in server.requests("events")]
    assert len(nonces) == 2 and nonces[0] != nonces[1]
    store.close()
    state.close()


def test_gzip_over_4k_and_signed_over_the_json(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 50)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    ev = server.requests("events")[0]
    assert ev.headers.get("content-encoding") == "gzip"
    hb = server.requests("heartbeat")[0]
    assert hb.headers.get("content-encoding") in (None, "gzip")
    store.close()
    state.close()


def test_unreachable_server_backs_off_and_keeps_everything(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 20)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    agent = make_agent(httpx.MockTransport(down))
    agent.start()
    for _ in range(4):
        r = agent.uploader.step()
        assert r.outcome == "backoff"
    ob = agent.outbox.state()
    assert ob.acked_seq == 0 and ob.state == "backoff" and ob.failures == 4
    assert agent.outbox.head_seq() == 21
    store.close()
    state.close()


def test_conflicting_ack_hash_enters_conflict(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 10)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    # the server claims a different hash for our head: the gate's database is older than its view
    server.acked_hash = "ab" * 32
    agent.outbox.rewind(5, agent.uploader.local_hash(5))
    agent.uploader.start()
    assert agent.outbox.state().state == "conflict"
    store.close()
    state.close()


def test_server_ahead_of_local_head_is_conflict(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 3)
    server: FakeServer = gate.fake_server()
    server.acked_seq = 50
    agent = make_agent(server.transport())
    agent.start()
    assert agent.outbox.state().state == "conflict"
    assert agent.outbox.state().acked_seq == 0
    store.close()
    state.close()
