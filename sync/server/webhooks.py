"""Webhook delivery (sync.md §5.5): the outbox worker.

Rows of ``alert_deliveries`` are written with the alert, in its transaction.
A worker in each server process claims due rows (``SKIP LOCKED`` on
PostgreSQL) by pushing their ``next_attempt_ms`` one lease ahead in a short
transaction, POSTs outside any transaction, then records the result. A process
killed between the POST and the record sends it again after the lease: delivery
is at least once and unordered; receivers deduplicate on ``alert_id``.

Signature: ``X-Checkpoint-Webhook-Signature: sha256=<hex HMAC-SHA-256(secret,
time + "." + body)>`` with ``X-Checkpoint-Webhook-Time`` the unix seconds used.
Retries: full jitter, ``uniform(0, min(600, 2 × 2^(attempts−1)))`` s, until
``webhook_give_up_h`` after the first attempt, then ``failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
from typing import Any

import httpx
from sqlalchemy import select, update

from sync.crashpoints import crashpoint
from sync.server import tables as t
from sync.server.alerts import alert_json

__all__ = ["WebhookWorker", "sign_webhook"]

log = logging.getLogger(__name__)

LEASE_MS = 120_000
BATCH = 20


def sign_webhook(secret: str, time_s: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), str(time_s).encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_body(alert: Any) -> bytes:
    a = alert_json(alert)
    doc = {"alert_id": a["id"], "kind": a["kind"], "severity": a["severity"], "provisional": a["provisional"],
           "created_at": a["created_at"], "device_id": a["device_id"], "site_id": a["site_id"],
           "venue": a["venue"], "event": a["event"], "summary": a["summary"]}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WebhookWorker:
    """Claims and sends due deliveries; ``run_once`` is the whole step (tests call it directly)."""

    def __init__(self, st: Any, *, transport: httpx.BaseTransport | None = None, rng: random.Random | None = None):
        self.st = st
        self._client = httpx.Client(timeout=st.config.webhook_timeout_s, transport=transport,
                                    follow_redirects=False, headers={"User-Agent": "checkpoint-server"})
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _claim(self, now: int) -> list[Any]:
        d = t.alert_deliveries.c
        with self.st.db.write() as conn:
            q = (select(d.alert_id, d.webhook_id).where(d.status == "pending", d.next_attempt_ms <= now)
                 .order_by(d.next_attempt_ms).limit(BATCH))
            rows = conn.execute(self.st.db.for_update(q, skip_locked=True)).all()
            for r in rows:
                conn.execute(update(t.alert_deliveries).where(d.alert_id == r.alert_id, d.webhook_id == r.webhook_id)
                             .values(next_attempt_ms=now + LEASE_MS))
        return list(rows)

    def run_once(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        now = self.st.now_ms()
        claimed = self._claim(now)
        for r in claimed:
            self._deliver(r.alert_id, r.webhook_id)
        return len(claimed)

    def _deliver(self, alert_id: int, webhook_id: int) -> None:
        st = self.st
        with st.db.read() as conn:
            alert = conn.execute(select(t.alerts).where(t.alerts.c.id == alert_id)).first()
            hook = conn.execute(select(t.webhooks).where(t.webhooks.c.id == webhook_id)).first()
            dl = conn.execute(select(t.alert_deliveries).where(
                t.alert_deliveries.c.alert_id == alert_id, t.alert_deliveries.c.webhook_id == webhook_id)).first()
        if alert is None or hook is None or dl is None:
            return
        body = webhook_body(alert)
        now = st.now_ms()
        ts = now // 1000
        status: int | None = None
        error: str | None = None
        try:
            resp = self._client.post(hook.url, content=body, headers={
                "Content-Type": "application/json",
                "X-Checkpoint-Webhook-Id": str(alert_id),
                "X-Checkpoint-Webhook-Time": str(ts),
                "X-Checkpoint-Webhook-Signature": sign_webhook(hook.secret, ts, body),
            })
            status = resp.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        crashpoint("server.webhook_after_post")
        d = t.alert_deliveries.c
        where = (d.alert_id == alert_id) & (d.webhook_id == webhook_id)
        attempts = int(dl.attempts) + 1
        with st.db.write() as conn:
            if status is not None and 200 <= status < 300:
                conn.execute(update(t.alert_deliveries).where(where).values(
                    status="delivered", attempts=attempts, last_status=status, last_error=None, delivered_ms=now))
                st.metrics.webhook_deliveries.labels("ok").inc()
                log.info("webhook delivered alert=%d hook=%d status=%d", alert_id, webhook_id, status)
                return
            give_up = now - int(dl.created_ms) >= st.config.webhook_give_up_h * 3_600_000
            delay_s = self._rng.uniform(0, min(600.0, 2.0 * 2 ** (attempts - 1)))
            conn.execute(update(t.alert_deliveries).where(where).values(
                status="failed" if give_up else "pending", attempts=attempts, last_status=status,
                last_error=error or f"HTTP {status}", next_attempt_ms=now + int(delay_s * 1000)))
        st.metrics.webhook_deliveries.labels("failed" if give_up else "retry").inc()
        log.warning("webhook %s alert=%d hook=%d attempts=%d status=%s error=%s",
                    "failed" if give_up else "retry", alert_id, webhook_id, attempts, status, error)

    # -- thread ----------------------------------------------------------------------------------------------

    def start(self, interval_s: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    while self.run_once() >= BATCH and not self._stop.is_set():
                        pass
                except Exception:  # the worker must outlive a database hiccup
                    log.exception("webhook worker step failed")

        self._thread = threading.Thread(target=loop, name="server:webhooks", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._client.close()
