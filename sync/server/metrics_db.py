"""The database gauges of ``/metrics`` (sync.md §5.7), read at scrape time and cached 15 s."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import Metric
from sqlalchemy import func, select

from sync.server import tables as t
from sync.server.fleet import health_of
from sync.server.metrics import gauge
from sync.server.publish import current_manifest_for

__all__ = ["fleet_gauges"]


def fleet_gauges(st: Any) -> list[Metric]:
    now = st.now_ms()
    d = t.devices.c
    health: dict[str, int] = {"online": 0, "stale": 0, "offline": 0, "revoked": 0}
    clocks: dict[str, int] = {}
    behind = 0
    per_backlog: list[tuple[list[str], float]] = []
    per_seen: list[tuple[list[str], float]] = []
    with st.db.read() as conn:
        rows = conn.execute(select(d.device_id, d.status, d.site_id, d.last_seen_ms, d.hb_clock, d.hb_backlog,
                                   d.hb_bundle_version).where(d.status.in_(("active", "revoked")))).all()
        currents: dict[Any, Any] = {}
        for r in rows:
            h = health_of(r, now, st.config.offline_after_s)
            health[h] = health.get(h, 0) + 1
            if r.status != "active":
                continue
            clocks[r.hb_clock or "unknown"] = clocks.get(r.hb_clock or "unknown", 0) + 1
            if r.site_id not in currents:
                currents[r.site_id] = current_manifest_for(conn, r.site_id)
            cur = currents[r.site_id]
            if cur is not None and (r.hb_bundle_version or 0) < cur.version:
                behind += 1
            if st.config.metrics_per_device:
                per_backlog.append(([r.device_id], float(r.hb_backlog or 0)))
                if r.last_seen_ms is not None:
                    per_seen.append(([r.device_id], (now - r.last_seen_ms) / 1000))
        a = t.alerts.c
        open_alerts = conn.execute(select(a.severity, func.count()).where(a.status == "open")
                                   .group_by(a.severity)).all()
        pending = conn.execute(select(func.count()).where(t.alert_deliveries.c.status == "pending")).scalar() or 0
    out: list[Metric] = [
        gauge("checkpoint_devices", "Devices by health.", ["health"], [([k], v) for k, v in health.items()]),
        gauge("checkpoint_devices_clock", "Active devices by clock state.", ["state"],
              [([k], v) for k, v in clocks.items()]),
        gauge("checkpoint_devices_bundle_behind", "Devices on an older bundle than their scope's.", [],
              [([], behind)]),
        gauge("checkpoint_alerts_open", "Open alerts by severity.", ["severity"],
              [([s], n) for s, n in open_alerts]),
        gauge("checkpoint_webhook_pending", "Webhook deliveries waiting.", [], [([], pending)]),
    ]
    if st.config.metrics_per_device:
        out.append(gauge("checkpoint_device_backlog_events", "Unsent events at the last heartbeat.", ["device_id"],
                         per_backlog))
        out.append(gauge("checkpoint_device_last_seen_seconds", "Seconds since the device was last seen.",
                         ["device_id"], per_seen))
    return out
