"""Periodic jobs of the server: state alerts every minute, retention every hour (sync.md §5.5-5.6).

On PostgreSQL only the process holding the advisory lock runs them (any number
of server processes share one database); on SQLite there is one process.

Every minute: ``device_offline`` for active gates silent for ``offline_after_s``,
``bundle_behind`` for gates an hour behind their scope's current manifest,
``hole_unconfirmed`` for holes whose gap event has not come an hour after the
ack passed it, and re-signing of current manifests that are older than their
``resign_after_s`` (bundles.md §1.4). Every hour: retention (§5.6), each table
in transactions of at most 10 000 rows.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_

from sync.server import tables as t
from sync.server.alerts import DeviceInfo, NewAlert, open_state_alert, raise_alert
from sync.server.derive import zone

__all__ = ["Jobs", "run_checks", "run_retention"]

log = logging.getLogger(__name__)

CHUNK = 10_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def _info(r: Any) -> DeviceInfo:
    return DeviceInfo(r.device_id, r.site_id, {"venue_id": r.venue_id, "zone": r.zone, "door": r.door})


def run_checks(st: Any) -> None:
    """The minute job: offline, bundle behind, unconfirmed holes, re-signing."""
    now = st.now_ms()
    d = t.devices.c
    with st.db.write() as conn:
        offline_before = now - st.config.offline_after_s * 1000
        for r in conn.execute(select(t.devices).where(d.status == "active", d.last_seen_ms < offline_before)).all():
            open_state_alert(conn, st, _info(r), "device_offline", "warning",
                             f"离线 / offline since {(now - r.last_seen_ms) // 60_000} min", now)
        for r in conn.execute(select(t.devices).where(d.status == "active",
                                                      d.bundle_behind_since_ms < now - HOUR_MS)).all():
            open_state_alert(conn, st, _info(r), "bundle_behind", "warning",
                             f"规则包落后 / bundle v{r.hb_bundle_version} behind the current one for over 1 h", now)
        h = t.event_holes.c
        rows = conn.execute(select(t.event_holes, d.site_id, d.venue_id, d.zone, d.door).join(
            t.devices, d.device_id == h.device_id).where(
            h.confirmed.is_(False), h.gap_seq.isnot(None), d.acked_seq >= h.gap_seq,
            h.declared_ms < now - HOUR_MS)).all()
        for r in rows:
            raise_alert(conn, st, _info(r), NewAlert(
                kind="hole_unconfirmed", severity="high", seq=r.from_seq,
                summary=f"缺口未被确认 / hole seq {r.from_seq}–{r.to_seq}: no matching gap event {r.gap_seq}",
                venue={"venue_id": r.venue_id, "zone": r.zone, "door": r.door},
                detail={"from_seq": r.from_seq, "to_seq": r.to_seq, "gap_seq": r.gap_seq}), now)
    try:
        from sync.server.publish import resign_due

        resign_due(st)
    except Exception:  # a signing problem must not stop the other checks; it is logged loudly
        log.exception("re-signing current manifests failed")


def _chunked_delete(st: Any, table: Any, key_cols: list[Any], where: Any) -> int:
    total = 0
    while True:
        with st.db.write() as conn:
            sub = select(*key_cols).where(where).limit(CHUNK)
            if len(key_cols) == 1:
                res = conn.execute(delete(table).where(key_cols[0].in_(sub)))
            else:
                res = conn.execute(delete(table).where(tuple_(*key_cols).in_(sub)))
            n = int(res.rowcount or 0)
        total += n
        if n < CHUNK:
            break
    if total:
        st.metrics.retention_deleted.labels(table.name).inc(total)
        log.info("retention table=%s deleted=%d", table.name, total)
    return total


def run_retention(st: Any) -> dict[str, int]:
    """§5.6: delete what is older than its retention period; the devices rows keep acked_seq/hash."""
    c = st.config
    now = st.now_ms()
    out: dict[str, int] = {}
    e = t.events.c
    with st.db.read() as conn:
        sites = conn.execute(select(t.sites.c.site_id, t.sites.c.tz)).all()
    n = 0
    for s in sites:
        today = datetime.fromtimestamp(now / 1000, zone(s.tz)).date()
        cutoff = (today - timedelta(days=c.events_retention_days)).isoformat()
        n += _chunked_delete(st, t.events, [e.device_id, e.seq], (e.site_id == s.site_id) & (e.day < cutoff))
    out["events"] = n
    out["event_conflicts"] = _chunked_delete(st, t.event_conflicts, [t.event_conflicts.c.id],
                                             t.event_conflicts.c.received_ms < now - c.holes_retention_days * DAY_MS)
    h = t.event_holes.c
    out["event_holes"] = _chunked_delete(st, t.event_holes, [h.device_id, h.from_seq],
                                         h.declared_ms < now - c.holes_retention_days * DAY_MS)
    out["heartbeats"] = _chunked_delete(st, t.heartbeats, [t.heartbeats.c.id],
                                        t.heartbeats.c.received_ms < now - c.heartbeats_retention_days * DAY_MS)
    old_alert = t.alerts.c.created_ms < now - c.alerts_retention_days * DAY_MS
    dl = t.alert_deliveries.c
    out["alert_deliveries"] = _chunked_delete(st, t.alert_deliveries, [dl.alert_id, dl.webhook_id],
                                              dl.created_ms < now - c.alerts_retention_days * DAY_MS)
    out["alerts"] = _chunked_delete(st, t.alerts, [t.alerts.c.id], old_alert)
    n_ = t.request_nonces.c
    out["request_nonces"] = _chunked_delete(st, t.request_nonces, [n_.device_id, n_.nonce], n_.expires_ms < now)
    out["audit_log"] = _chunked_delete(st, t.audit_log, [t.audit_log.c.id],
                                       t.audit_log.c.at_ms < now - c.audit_retention_days * DAY_MS)
    return out


class Jobs:
    """The thread that runs the periodic jobs (named ``server:jobs``)."""

    def __init__(self, st: Any, *, checks_s: float = 60.0, retention_s: float = 3600.0) -> None:
        self.st = st
        self.checks_s, self.retention_s = checks_s, retention_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, *, retention: bool) -> bool:
        with self.st.db.job_lock() as mine:
            if not mine:
                return False
            run_checks(self.st)
            if retention:
                run_retention(self.st)
        return True

    def start(self) -> None:
        def loop() -> None:
            last_retention = -1e18
            while not self._stop.wait(self.checks_s):
                try:
                    due = time.monotonic() - last_retention >= self.retention_s
                    if self.run_once(retention=due) and due:
                        last_retention = time.monotonic()
                except Exception:  # a failed run is retried at the next tick
                    log.exception("periodic jobs failed")

        self._thread = threading.Thread(target=loop, name="server:jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
