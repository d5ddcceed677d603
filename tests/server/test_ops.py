"""Webhooks with signatures and retries, periodic jobs, retention and /metrics (sync.md §5.5-5.7)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.server.jobs import run_checks, run_retention
from sync.server.webhooks import WebhookWorker
from tests.server.harness import ServerHarness, decision, fever

REPO = Path(__file__).resolve().parents[2]


class Receiver:
    """A webhook receiver on loopback that records what it got and answers from a script."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.got: list[dict[str, Any]] = []
        self.answers = list(answers or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append({"headers": dict(self.headers), "body": body})
                code = outer.answers.pop(0) if outer.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


SECRET = "a-webhook-secret-of-some-length"


def _hook(h: ServerHarness, url: str, **kw: Any) -> int:
    r = h.admin("POST", "/v1/admin/webhooks", json={"url": url, "secret": SECRET, **kw})
    assert r.status_code == 201, r.text
    assert "secret" not in r.json()
    return int(r.json()["id"])


def _fever_upload(h: ServerHarness) -> Any:
    gate = h.gate()
    gate.chain.append("decision", decision("deny", temp=3790))
    gate.chain.append("temp_alert", fever(1))
    assert gate.upload_range(1, 2).status_code == 200
    return gate


def test_webhook_is_signed_and_delivered(server: ServerHarness, receiver: Receiver) -> None:
    _hook(server, receiver.url, kinds=["fever", "chain_conflict"], min_severity="warning")
    _hook(server, receiver.url + "/info-only", kinds=[], min_severity="critical")
    _fever_upload(server)
    assert server.rows("SELECT count(*) AS n FROM alert_deliveries WHERE status = 'pending'")[0].n == 2
    worker = WebhookWorker(server.state)
    try:
        assert worker.run_once() == 2
    finally:
        worker.close()
    assert len(receiver.got) == 2
    req = receiver.got[0]
    ts = req["headers"]["X-Checkpoint-Webhook-Time"]
    want = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + req["body"], hashlib.sha256).hexdigest()
    assert req["headers"]["X-Checkpoint-Webhook-Signature"] == want
    doc = json.loads(req["body"])
    assert req["headers"]["X-Checkpoint-Webhook-Id"] == str(doc["alert_id"])
    assert (doc["kind"], doc["severity"], doc["provisional"], doc["device_id"]) == (
        "fever", "critical", False, "gate-fc-0007")
    assert doc["event"] == {"seq": 2, "at": "2022-04-12T00:31:06.004Z", "clock": "synced"}
    assert doc["venue"]["venue_id"] == "411322-0031-01" and "37.90" in doc["summary"]
    rows = server.rows("SELECT status, attempts, last_status FROM alert_deliveries")
    assert {(r.status, r.attempts, r.last_status) for r in rows} == {("delivered", 1, 200)}
    assert server.admin("GET", "/v1/admin/webhooks").json()[0]["kinds"] == ["chain_conflict", "fever"]


def test_webhook_retries_with_backoff_then_gives_up(server: ServerHarness, receiver: Receiver) -> None:
    import random

    receiver.answers = [500, 503]
    _hook(server, receiver.url)
    _fever_upload(server)
    worker = WebhookWorker(server.state, rng=random.Random(7))
    try:
        assert worker.run_once() == 1  # 500
        row = server.rows("SELECT status, attempts, next_attempt_ms, last_status FROM alert_deliveries")[0]
        assert (row.status, row.attempts, row.last_status) == ("pending", 1, 500)
        assert server.clock() <= row.next_attempt_ms <= server.clock() + 2000  # uniform(0, 2) s
        assert worker.run_once() == 0  # not due yet... unless the jitter drew 0
        server.clock.advance(3)
        assert worker.run_once() == 1  # 503
        server.clock.advance(5)
        assert worker.run_once() == 1  # 200
        assert server.rows("SELECT status, attempts FROM alert_deliveries")[0] == ("delivered", 3)
        # A receiver that is down for more than webhook_give_up_h: failed, counted.
        receiver.close()
        gate = server.gate("gate-fc-0008")
        gate.chain.append("temp_alert", fever(None))  # type: ignore[arg-type]
        assert gate.upload_range(1, 1).status_code == 200
        for _ in range(300):
            server.clock.advance(601)
            worker.run_once()
            status = server.rows("SELECT status FROM alert_deliveries ORDER BY alert_id DESC")[0].status
            if status != "pending":
                break
        assert status == "failed"
    finally:
        worker.close()
    metrics = server.client.get("/metrics").text
    assert 'checkpoint_webhook_deliveries_total{result="failed"} 1.0' in metrics
    assert 'checkpoint_webhook_deliveries_total{result="ok"} 1.0' in metrics


def test_a_crash_after_the_post_delivers_again(server: ServerHarness, receiver: Receiver, db_url: str,
                                               tmp_path: Path) -> None:
    """Crash point server.webhook_after_post: at least once, never lost (§5.5 step 3)."""
    _hook(server, receiver.url)
    _fever_upload(server)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sync.server.config import ServerConfig\n"
        "from sync.server.state import open_state\n"
        "from sync.server.webhooks import WebhookWorker\n"
        "from tests.server.harness import key_from_seed, FakeClock\n"
        "cfg = ServerConfig(data_dir=Path(sys.argv[2]), database=sys.argv[1])\n"
        "st = open_state(cfg, clock=FakeClock(int(sys.argv[3])), publisher_keys=[],\n"
        "                server_key=key_from_seed('server', 'checkpoint test server key v1'))\n"
        "WebhookWorker(st).run_once()\n"
    )
    env = {**os.environ, "CHECKPOINT_CRASHPOINTS": "server.webhook_after_post:1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", script, db_url, str(tmp_path / "w"), str(server.clock())],
                         env=env, cwd=REPO, capture_output=True, timeout=120)
    assert res.returncode == -9, res.stderr.decode()[-2000:]
    assert len(receiver.got) == 1
    assert server.rows("SELECT status FROM alert_deliveries")[0].status == "pending"  # leased, not delivered
    worker = WebhookWorker(server.state)
    try:
        assert worker.run_once() == 0  # the lease holds
        server.clock.advance(121)
        assert worker.run_once() == 1
    finally:
        worker.close()
    assert len(receiver.got) == 2 and receiver.got[0]["body"] == receiver.got[1]["body"]
    assert server.rows("SELECT status FROM alert_deliveries")[0].status == "delivered"


def test_offline_and_unconfirmed_hole_alerts(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(4):
        gate.chain.append("decision", decision())
    skip = {"from_seq": 1, "to_seq": 2, "cause": "corrupt", "last_hash": gate.chain.hash_of(2), "gap_seq": 9}
    assert gate.upload(gate.batch(1, 4, skip=skip)).status_code == 200
    run_checks(server.state)
    assert not server.rows("SELECT id FROM alerts WHERE kind IN ('device_offline', 'hole_unconfirmed')")
    for _ in range(5):
        gate.chain.append("decision", decision())
    assert gate.upload_range(5, 9).status_code == 200  # seq 9 is not the gap event it promised
    server.clock.advance(3601)
    run_checks(server.state)
    run_checks(server.state)  # idempotent
    kinds = sorted(r.kind for r in server.rows("SELECT kind FROM alerts WHERE status = 'open'"))
    assert kinds == ["data_lost", "device_offline", "hole_unconfirmed"]
    gate.request("POST", "heartbeat", b"{}")
    assert server.rows("SELECT status FROM alerts WHERE kind = 'device_offline'")[0].status == "resolved"


def test_retention_deletes_old_rows_and_keeps_the_chain_head(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(3):
        gate.chain.append("decision", decision())
    assert gate.upload_range(1, 3).status_code == 200
    gate.request("POST", "heartbeat", b"{}")
    server.clock.advance(31 * 86_400)
    gate.chain.append("decision", decision(), wall_ms=server.clock())
    assert gate.upload_range(1, 4).status_code == 200  # 1..3 duplicates, 4 new
    deleted = run_retention(server.state)
    assert deleted["events"] == 3 and deleted["heartbeats"] == 1 and deleted["request_nonces"] == 2
    assert [r.seq for r in server.rows("SELECT seq FROM events")] == [4]
    dev = server.rows("SELECT acked_seq, acked_hash FROM devices")[0]
    assert (dev.acked_seq, dev.acked_hash) == (4, gate.chain.hash_of(4))
    # Rows no longer present count as duplicates; the chain goes on.
    gate.chain.append("decision", decision(), wall_ms=server.clock())
    r = gate.upload_range(2, 5)
    assert r.status_code == 200 and (r.json()["duplicates"], r.json()["stored"]) == (3, 1)
    assert run_retention(server.state)["events"] == 0


def test_metrics_from_loopback(server: ServerHarness) -> None:
    _fever_upload(server)
    gate = server.gate("gate-fc-0009")
    gate.request("POST", "heartbeat", json.dumps({"clock": {"state": "floor"}, "backlog": {"events": 7}}).encode())
    r = server.client.get("/metrics")
    assert r.status_code == 200
    body = r.text
    for line in ('checkpoint_ingest_events_total{result="stored"} 2.0', 'checkpoint_ingest_batches_total{code="200"}',
                 'checkpoint_alerts_total{kind="fever",severity="critical"} 1.0', 'checkpoint_devices{health="online"} 2.0',
                 'checkpoint_devices_clock{state="floor"} 1.0', 'checkpoint_device_backlog_events{device_id="gate-fc-0009"} 7.0',
                 "checkpoint_ingest_batch_seconds_bucket", 'checkpoint_device_requests_total{code="200",route="events"}',
                 'checkpoint_alerts_open{severity="critical"} 1.0'):
        assert line in body, line
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").json() == {"status": "ready"}


def test_pending_webhook_gauge_and_db_check(server: ServerHarness, receiver: Receiver) -> None:
    _hook(server, receiver.url)
    _fever_upload(server)
    with server.state.db.read() as conn:
        n = conn.execute(text("SELECT count(*) FROM alert_deliveries WHERE status = 'pending'")).scalar()
    assert n == 1
    assert "checkpoint_webhook_pending 1.0" in server.client.get("/metrics").text
