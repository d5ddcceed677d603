"""The fleet view (sync.md §5.8): one row per gate, worst first, and one gate's details.

Health from the last contact: ``online`` ≤ 180 s, ``stale`` ≤ ``offline_after_s``
(900 s), else ``offline``; revoked, retired and pending devices say so.
Worst first: conflict, offline, data lost, storage, clock not synced, bundle
behind, backlog — then by ``device_id``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select

from sync.server import tables as t
from sync.server.heartbeat import heartbeat_summary
from sync.server.publish import current_manifest_for, manifest_mode
from sync.timefmt import format_ms

__all__ = ["device_detail", "fleet_devices", "health_of"]

ONLINE_S = 180


def health_of(row: Any, now_ms: int, offline_after_s: int) -> str:
    if row.status in ("revoked", "retired", "pending"):
        return str(row.status)
    seen = row.last_seen_ms
    if seen is None:
        return "offline"
    age = (now_ms - seen) / 1000
    return "online" if age <= ONLINE_S else "stale" if age <= offline_after_s else "offline"


def _open_alerts(conn: Connection, device_ids: list[str] | None = None) -> dict[str, dict[str, int]]:
    a = t.alerts.c
    q = select(a.device_id, a.severity, func.count()).where(a.status == "open").group_by(a.device_id, a.severity)
    out: dict[str, dict[str, int]] = {}
    for dev, sev, n in conn.execute(q).all():
        if dev is not None and (device_ids is None or dev in device_ids):
            out.setdefault(dev, {})[sev] = int(n)
    return out


def _row(conn: Connection, r: Any, now_ms: int, offline_after_s: int, currents: dict[str | None, Any],
         alerts: dict[str, dict[str, int]], modes: dict[str, str | None]) -> dict[str, Any]:
    if r.site_id not in currents:
        currents[r.site_id] = current_manifest_for(conn, r.site_id)
    cur = currents[r.site_id]
    behind = cur is not None and (r.hb_bundle_version is None or r.hb_bundle_version < cur.version)
    mode = r.hb_mode
    sha = r.hb_bundle_sha256
    if sha is None and cur is not None and r.hb_bundle_version is not None:
        m = t.manifests.c  # a heartbeat without the id: the scope's manifest of that version
        sha = conn.execute(select(m.sha256).where(m.scope == cur.scope, m.version == r.hb_bundle_version)
                           .order_by(m.keys_version.desc()).limit(1)).scalar()
    if mode is None and sha:
        if sha not in modes:
            modes[sha] = manifest_mode(conn, sha)
        mode = modes[sha]
    health = health_of(r, now_ms, offline_after_s)
    open_alerts = alerts.get(r.device_id, {})
    return {
        "device_id": r.device_id, "status": r.status, "health": health, "site_id": r.site_id, "label": r.label,
        "venue": {"venue_id": r.venue_id, "zone": r.zone, "door": r.door}, "firm_id": r.firm_id, "keyid": r.keyid,
        "last_seen_at": format_ms(r.last_seen_ms) if r.last_seen_ms else None,
        "last_seen_age_s": (now_ms - r.last_seen_ms) // 1000 if r.last_seen_ms else None,
        "backlog": r.hb_backlog,
        "oldest_unacked_age_s": (now_ms - r.hb_oldest_unacked_ms) // 1000 if r.hb_oldest_unacked_ms else None,
        "upload_state": r.hb_upload_state, "acked_seq": r.acked_seq, "holes": r.holes, "conflict": bool(r.conflict),
        "conflict_seq": r.conflict_seq, "bundle_version": r.hb_bundle_version, "bundle_state": r.hb_bundle_state,
        "current_version": cur.version if cur else None, "bundle_behind": behind, "mode": mode,
        "clock": r.hb_clock, "clock_offset_ms": r.hb_clock_offset_ms, "storage": r.hb_storage_level,
        "thermometer": r.hb_thermometer, "camera": r.hb_camera, "software": r.hb_software,
        "open_alerts": open_alerts,
        "_rank": (
            0 if r.conflict else 1,
            0 if health == "offline" else 1,
            0 if (r.holes or open_alerts.get("high")) else 1,
            0 if r.hb_storage_level not in (None, "ok") else 1,
            0 if r.hb_clock not in (None, "synced") else 1,
            0 if behind else 1,
            -(r.hb_backlog or 0),
            r.device_id,
        ),
    }


def fleet_devices(conn: Connection, now_ms: int, offline_after_s: int, site_id: str | None = None) -> list[dict[str, Any]]:
    q = select(t.devices)
    if site_id:
        q = q.where(t.devices.c.site_id == site_id)
    rows = conn.execute(q).all()
    alerts = _open_alerts(conn)
    currents: dict[str | None, Any] = {}
    modes: dict[str, str | None] = {}
    out = [_row(conn, r, now_ms, offline_after_s, currents, alerts, modes) for r in rows]
    out.sort(key=lambda d: d["_rank"])
    for d in out:
        del d["_rank"]
    return out


def device_detail(conn: Connection, device_id: str, now_ms: int, offline_after_s: int) -> dict[str, Any] | None:
    r = conn.execute(select(t.devices).where(t.devices.c.device_id == device_id)).first()
    if r is None:
        return None
    row = _row(conn, r, now_ms, offline_after_s, {}, _open_alerts(conn, [device_id]), {})
    del row["_rank"]
    hb = t.heartbeats.c
    beats = conn.execute(select(hb.received_ms, hb.body).where(hb.device_id == device_id)
                         .order_by(hb.received_ms.desc()).limit(50)).all()
    h = t.event_holes.c
    holes = conn.execute(select(t.event_holes).where(h.device_id == device_id).order_by(h.from_seq)).all()
    c = t.event_conflicts.c
    conflicts = conn.execute(select(c.seq, c.hash, c.received_ms).where(c.device_id == device_id)
                             .order_by(c.id).limit(200)).all()
    a = t.alerts.c
    alerts = conn.execute(select(t.alerts).where(a.device_id == device_id, a.status != "resolved")
                          .order_by(a.created_ms.desc()).limit(200)).all()
    from sync.server.alerts import alert_json

    row.update(
        heartbeats=[{"received_at": format_ms(b.received_ms), "body": heartbeat_summary(b.body)} for b in beats],
        holes_list=[{"from_seq": x.from_seq, "to_seq": x.to_seq, "cause": x.cause, "gap_seq": x.gap_seq,
                     "confirmed": bool(x.confirmed), "declared_at": format_ms(x.declared_ms)} for x in holes],
        conflicts=[{"seq": x.seq, "hash": x.hash, "received_at": format_ms(x.received_ms)} for x in conflicts],
        alerts=[alert_json(x) for x in alerts],
    )
    return row


def fleet_summary_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False)
