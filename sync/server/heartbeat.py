"""Heartbeats (sync.md §4.2) and the device state answer (§3.7).

A heartbeat is telemetry, not an event: the server keeps every one in
``heartbeats`` (7 days), copies the newest into the ``devices`` row for the
dashboard, and opens or resolves the state alerts it shows (§5.5: offline,
backlog, storage, thermometer, clock, bundle behind). Its answer carries the
device's ack (the agent treats it like ``/state``) and ``poll_bundle_now``
when the device reports an older bundle than the current one of its scope.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import select, update

from sync.canonical import loads_strict
from sync.errors import CanonicalError, TimeFormatError
from sync.server import tables as t
from sync.server.alerts import DeviceInfo, open_state_alert, resolve_alerts
from sync.server.auth import DeviceRequest, claim_nonce
from sync.server.errors import ApiError
from sync.timefmt import parse_ms

__all__ = ["device_state", "heartbeat"]

log = logging.getLogger(__name__)

MAX_HEARTBEAT_BYTES = 64 * 1024
BACKLOG_EVENTS = 10_000
BACKLOG_AGE_MS = 3_600_000
_STORAGE_SEVERITY = {"warn": "warning", "prune": "warning", "full": "high", "error": "high"}


def _get(doc: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(p)
    return doc


def _str(v: Any, n: int = 16) -> str | None:
    return v[:n] if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float) and abs(v) < 2**53:
        return int(v)
    return None


def _time(v: Any) -> int | None:
    try:
        return parse_ms(v) if isinstance(v, str) else None
    except TimeFormatError:
        return None


def heartbeat(st: Any, req: DeviceRequest) -> dict[str, Any]:
    if len(req.body) > MAX_HEARTBEAT_BYTES:
        raise ApiError(413, "too_large", f"heartbeat over {MAX_HEARTBEAT_BYTES} bytes",
                       max_events=0, max_bytes=MAX_HEARTBEAT_BYTES)
    try:
        doc = loads_strict(req.body, allow_floats=True)
    except CanonicalError as exc:
        raise ApiError(400, "bad_request", f"heartbeat is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", "heartbeat must be a JSON object")
    from sync.server.publish import current_manifest_for, manifest_known

    now = st.now_ms()
    device_id = req.device_id
    sw = _get(doc, "software")
    software = " ".join(f"{k}={v}" for k, v in sw.items() if isinstance(v, str))[:64] if isinstance(sw, dict) else None
    version = _int(_get(doc, "bundle", "version"))
    sha = _str(_get(doc, "bundle", "sha256"), 64)
    backlog = _int(_get(doc, "backlog", "events"))
    oldest = _time(_get(doc, "backlog", "oldest_unacked_at"))
    storage = _str(_get(doc, "storage", "level"))
    thermo = _str(_get(doc, "thermometer", "status"))
    clock = _str(_get(doc, "clock", "state"))
    values = dict(
        last_heartbeat_ms=now, last_seen_ms=now, hb_software=software, hb_bundle_version=version,
        hb_bundle_sha256=sha, hb_bundle_state=_str(_get(doc, "bundle", "state")),
        hb_mode=_str(_get(doc, "bundle", "mode")) or _str(_get(doc, "mode")), hb_clock=clock,
        hb_clock_offset_ms=_int(_get(doc, "clock", "offset_ms")), hb_backlog=backlog, hb_oldest_unacked_ms=oldest,
        hb_upload_state=_str(_get(doc, "backlog", "upload_state")), hb_storage_level=storage,
        hb_thermometer=thermo, hb_camera=_str(_get(doc, "camera", "status")),
    )
    with st.db.write() as conn:
        dev = conn.execute(st.db.for_update(select(t.devices).where(t.devices.c.device_id == device_id))).first()
        claim_nonce(conn, st, device_id, req.nonce, now)
        info = DeviceInfo(device_id, dev.site_id, {"venue_id": dev.venue_id, "zone": dev.zone, "door": dev.door})
        conn.execute(t.heartbeats.insert().values(device_id=device_id, received_ms=now,
                                                  body=req.body.decode("utf-8")))
        current = current_manifest_for(conn, dev.site_id)
        poll_now = False
        resolve = ["device_offline"]
        if current is not None and version is not None and (version < current.version):
            poll_now = True
            if dev.bundle_behind_since_ms is None:
                values["bundle_behind_since_ms"] = now
        else:
            values["bundle_behind_since_ms"] = None
            resolve.append("bundle_behind")
        if current is not None and version is None:
            poll_now = True
        if sha is not None and not manifest_known(conn, sha):
            # bundles.md §2.3: a manifest id the server never published means a stolen publisher key.
            open_state_alert(conn, st, info, "unknown_manifest", "critical",
                             f"未知规则包 / device applied a manifest this server never published: {sha[:16]}…",
                             now, sha256=sha, version=version)
        if (backlog or 0) > BACKLOG_EVENTS or (oldest is not None and now - oldest > BACKLOG_AGE_MS):
            open_state_alert(conn, st, info, "backlog", "warning",
                             f"积压 / upload backlog: {backlog} events", now, events=backlog)
        else:
            resolve.append("backlog")
        if storage in _STORAGE_SEVERITY:
            open_state_alert(conn, st, info, "storage", _STORAGE_SEVERITY[storage],
                             f"存储 / storage level {storage}", now, level=storage)
        elif storage == "ok":
            resolve.append("storage")
        if thermo == "ok":
            resolve.append("sensor_fault")
        if clock == "synced":
            resolve.append("clock")
        resolve_alerts(conn, device_id, tuple(resolve), now)
        conn.execute(update(t.devices).where(t.devices.c.device_id == device_id).values(**values))
        c, h = int(dev.acked_seq), str(dev.acked_hash)
    log.info("heartbeat device=%s bundle=%s backlog=%s poll_now=%s", device_id, version, backlog, poll_now)
    return {"poll_bundle_now": poll_now, **st.signed_ack(device_id, req.nonce, c, h)}


def device_state(st: Any, req: DeviceRequest) -> dict[str, Any]:
    """§3.7: the server's view of the device's chain; GETs are not nonce-checked (§2.4 step 5)."""
    with st.db.read() as conn:
        dev = conn.execute(select(t.devices).where(t.devices.c.device_id == req.device_id)).first()
    return {"device_id": dev.device_id, "status": dev.status,
            **st.signed_ack(req.device_id, req.nonce, int(dev.acked_seq), str(dev.acked_hash)),
            "conflict": bool(dev.conflict), "conflict_seq": dev.conflict_seq, "holes": int(dev.holes)}


def heartbeat_summary(body: str) -> dict[str, Any]:
    """A heartbeat row for the device page (parsed leniently: it was stored as sent)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
