"""Heartbeats from real status (sync.md §4.2, bundles.md §5.5).

Telemetry, not events: nothing here is hashed, measures may be floats. Every
block is read from where its truth lives:

| block         | source                                                                 |
|---------------|------------------------------------------------------------------------|
| `at`, `clock` | the shared trusted clock (``clock`` row of ``state.db``)               |
| `bundle`      | the ``bundle`` and ``keys`` rows of ``state.db`` (freshness: bundles.md §4.1) |
| `backlog`     | ``events.db`` meta and outbox                                          |
| `storage`     | ``StorageKeeper`` (sync.md §1.8)                                       |
| `thermometer`, `camera`, `decisions_today`, `software.gate` | the gate's ``gate_status`` (``gate_status.py``) |
| `host`        | ``/sys`` thermal zone, load average, ``vcgencmd get_throttled`` on a Pi |

When the gate process is not reporting, ``gate.running`` is false and the
thermometer and camera say ``unknown``: never a stale ``ok``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import __version__
from edge.clock import ClockReading, TrustedClock
from edge.store.outbox import Outbox
from edge.store.state import StateDB
from sync.agent.gate_status import GateStatusRead, read_gate_status
from sync.agent.storage import StorageReport
from sync.timefmt import format_ms, parse_ms

__all__ = ["DEFAULT_STALE_AFTER_S", "bundle_summary", "build_heartbeat", "host_status"]

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 86_400  # bundles.md §1.6 freshness.stale_after_s, used when the settings say nothing


def _manifest_fields(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
        signed = doc.get("signed", doc)
        return signed if isinstance(signed, dict) else {}
    except (ValueError, AttributeError):
        return {}


def bundle_summary(
    state: StateDB, reading: ClockReading, *, stale_after_s: Callable[[], int | None] | None = None
) -> dict[str, Any]:
    """The heartbeat's ``bundle`` block, freshness by bundles.md §4.1 (first state that holds).

    ``none``: no manifest in force; ``expired``: now ≥ expires, or signer revoked, or
    corrupt; ``stale``: age ≥ ``stale_after_s`` or the clock is not ``synced`` (age
    unproven); ``fresh`` otherwise. Age = now − last confirmed.
    """
    keys = state.read_row("keys")
    row = state.read_row("bundle")
    keys_version = int(keys["version"]) if keys else None
    if row is None:
        return {"version": 0, "sha256": None, "keys_version": keys_version, "state": "none",
                "issued_at": None, "last_check_ok_at": None}
    # The pointer row carries the manifest's times, the stale threshold and the mode
    # (bundles.md §3.6); older rows only the manifest bytes, from which they are read.
    m = _manifest_fields(row.get("manifest"))
    now = reading.now_ms
    expires = row.get("expires_ms")
    if expires is None:
        try:
            expires = parse_ms(str(m.get("expires")))
        except ValueError:
            expires = None
    issued = row.get("issued_at_ms")
    issued_at = format_ms(int(issued)) if issued is not None else m.get("issued_at")
    last_confirmed = row.get("last_confirmed_ms")
    limit = row.get("stale_after_s") or (stale_after_s() if stale_after_s else None) or DEFAULT_STALE_AFTER_S
    if row.get("signer_revoked") or row.get("corrupt") or expires is None or now >= int(expires):
        fresh = "expired"
    elif not reading.trusted or last_confirmed is None or now - int(last_confirmed) >= int(limit) * 1000:
        fresh = "stale"
    else:
        fresh = "fresh"
    out = {
        "version": int(row["version"]),
        "sha256": row.get("manifest_id"),
        "keys_version": int(row["keys_version"]),
        "state": fresh,
        "issued_at": issued_at,
        "last_check_ok_at": format_ms(int(last_confirmed)) if last_confirmed is not None else None,
    }
    if row.get("mode"):
        out["mode"] = row["mode"]
    return out


def host_status(*, thermal: Path = Path("/sys/class/thermal/thermal_zone0/temp")) -> dict[str, Any]:
    """CPU temperature (hundredths of °C), load, and the Pi's throttle flags where they exist."""
    cpu: int | None = None
    try:
        cpu = int(thermal.read_text().strip()) // 10  # millidegrees -> hundredths
    except (OSError, ValueError):
        cpu = None
    try:
        load1: float | None = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    throttled: str | None = None
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd:
        try:
            out = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=2,
                                 check=False)
            if out.returncode == 0 and "=" in out.stdout:
                throttled = out.stdout.strip().split("=", 1)[1]
        except (OSError, subprocess.SubprocessError):
            throttled = None
    return {"cpu_temp_centi_c": cpu, "load1": load1, "throttled": throttled}


def _backlog(outbox: Outbox, upload_state: str) -> dict[str, Any]:
    ob = outbox.state()
    head = outbox.head_seq()
    oldest = None
    if head > ob.acked_seq:
        row = outbox.execute("SELECT wall FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (ob.acked_seq,)).fetchone()
        oldest = row[0] if row else None
    return {"events": max(0, head - ob.acked_seq), "head_seq": head, "acked_seq": ob.acked_seq,
            "oldest_unacked_at": oldest, "upload_state": upload_state or ob.state,
            "last_upload_ok_at": ob.last_ok_wall}


def build_heartbeat(
    *,
    outbox: Outbox,
    state: StateDB,
    clock: TrustedClock,
    storage: StorageReport,
    gate: GateStatusRead | None = None,
    stale_after_s: Callable[[], int | None] | None = None,
    host: dict[str, Any] | None = None,
    bundle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One heartbeat body (sync.md §4.2) from the current state of every part.

    ``bundle`` is the bundle updater's own status when the agent runs one (bundles.md
    §5.5); without it the block is read from the pointer row here.
    """
    reading = clock.read()
    b = reading.boottime_ms
    if gate is None:
        gate = read_gate_status(state, boot=clock.boot, boottime_ms=b)
    gs = gate.status
    bundle = dict(bundle) if bundle is not None else bundle_summary(state, reading, stale_after_s=stale_after_s)
    if gs is not None and gs.mode is not None and "mode" not in bundle:
        bundle["mode"] = gs.mode
    doc: dict[str, Any] = {
        "at": reading.at(),
        "software": {"gate": gs.software if gs else None, "agent": __version__},
        "uptime_s": b // 1000,
        "bundle": bundle,
        "clock": {"state": reading.state, "ntp_synced": reading.ntp, "offset_ms": reading.offset_ms,
                  "floor": format_ms(reading.floor_ms)},
        "backlog": _backlog(outbox, outbox.state().state),
        "storage": storage.heartbeat(),
        "thermometer": (gs.thermometer.model_dump(exclude={"last_error"}) if gs
                        else {"status": "unknown", "protocol": None, "last_reading_age_s": None}),
        "camera": gs.camera.model_dump() if gs else {"status": "unknown", "fps": None},
        "host": host if host is not None else host_status(),
        "decisions_today": gs.decisions_today if gs else None,
        "gate": {"running": gate.running, "status_age_s": None if gate.age_s is None else round(gate.age_s, 1),
                 "pid": gs.pid if gs else None, "held_events": gs.held_events if gs else None,
                 "uptime_s": ((b - gs.started_boottime_ms) // 1000) if gs and gs.started_boottime_ms else None},
    }
    if gs is not None and gs.thermometer.last_error:
        doc["thermometer"]["last_error"] = gs.thermometer.last_error[:200]
    return doc

