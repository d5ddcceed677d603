"""The gate process's status, as the sync agent reads it for heartbeats (sync.md §4.2).

**Contract with the gate process** (``edge``; writer) **and the sync agent** (reader):

- The gate writes one JSON document, the model ``GateStatus`` below, into the
  ``kv`` table of ``state.db`` under the key ``gate_status`` with
  ``write_gate_status(state, status)``: at start, at least every 10 s, and at once
  when a part's status changes (thermometer, camera, storage). ``kv`` is the cache
  connection (``synchronous=NORMAL``): one small row write, no fsync per update.
- ``boot`` and ``boottime_ms`` say when it was written (CLOCK_BOOTTIME, never the
  wall clock, so clock steps cannot make it look fresh or stale). The agent treats
  a document from another boot, or older than ``STALE_AFTER_S`` (30 s), as "the
  gate process is not running": the heartbeat then reports ``gate.running =
  false`` and the thermometer and camera as ``unknown``, never a stale ``ok``.
- Values are the project's own vocabularies: ``thermometer.status`` of
  hardware.md §1.7 (``ok|stale|fault|absent``), ``camera.status`` of hardware.md
  §2.2 (``ok|no_frames|absent``), ``storage_level`` of sync.md §1.8 as the gate's
  store sees it (``full`` and ``error`` happen inside the gate's appends, so only
  the gate can report them).
- Unknown keys are ignored by the reader (``extra="ignore"``) so either side can
  be upgraded first; a document that does not validate counts as absent.

This module imports nothing heavy: the gate process imports it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sync.timefmt import format_ms, utc_now_ms

__all__ = [
    "GATE_STATUS_KEY",
    "STALE_AFTER_S",
    "CameraStatus",
    "GateStatus",
    "GateStatusRead",
    "ThermometerStatus",
    "read_gate_status",
    "write_gate_status",
]

log = logging.getLogger(__name__)

GATE_STATUS_KEY = "gate_status"
STALE_AFTER_S = 30.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ThermometerStatus(_Model):
    status: Literal["ok", "stale", "fault", "absent"]
    protocol: str | None = None
    last_reading_age_s: float | None = Field(None, ge=0)
    last_error: str | None = Field(None, max_length=200)


class CameraStatus(_Model):
    status: Literal["ok", "no_frames", "absent"]
    fps: float | None = Field(None, ge=0)


class GateStatus(_Model):
    """What the gate process publishes for the agent's heartbeat."""

    v: Literal[1] = 1
    pid: int = Field(ge=1)
    boot: str = Field(min_length=1, max_length=64)
    boottime_ms: int = Field(ge=0, description="CLOCK_BOOTTIME when written.")
    started_boottime_ms: int | None = Field(None, ge=0, description="CLOCK_BOOTTIME when the gate process started.")
    software: str = Field(max_length=64)
    thermometer: ThermometerStatus
    camera: CameraStatus
    storage_level: Literal["ok", "warn", "prune", "full", "error"] | None = None
    held_events: int = Field(0, ge=0, description="Events waiting in the memory queue (sync.md §1.6).")
    decisions_today: int | None = Field(None, ge=0, description="Decisions since local midnight (site tz).")
    mode: Literal["normal", "emergency"] | None = None


@dataclass(frozen=True)
class GateStatusRead:
    """The status as read by the agent: ``status`` is None when absent, invalid or stale."""

    status: GateStatus | None
    age_s: float | None
    reason: str

    @property
    def running(self) -> bool:
        return self.status is not None


class _KV:
    """The two ``StateDB`` methods used here (keeps this module free of the store's imports)."""

    def kv_get(self, key: str, default: str | None = None) -> str | None: ...  # pragma: no cover

    def kv_set(self, key: str, value: str) -> None: ...  # pragma: no cover


def write_gate_status(state: _KV, status: GateStatus) -> None:
    """Publish the gate's status (gate process side)."""
    state.kv_set(GATE_STATUS_KEY, status.model_dump_json())


def read_gate_status(state: _KV, *, boot: str, boottime_ms: int) -> GateStatusRead:
    """Read the gate's status (agent side) and judge its freshness by boot and boottime."""
    raw = state.kv_get(GATE_STATUS_KEY)
    if raw is None:
        return GateStatusRead(None, None, "absent")
    try:
        status = GateStatus.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        log.warning("gate status unreadable: %s", str(exc).splitlines()[0][:200])
        return GateStatusRead(None, None, "invalid")
    if status.boot != boot:
        return GateStatusRead(None, None, "other_boot")
    age = max(0.0, (boottime_ms - status.boottime_ms) / 1000)
    if age > STALE_AFTER_S:
        return GateStatusRead(None, age, "stale")
    return GateStatusRead(status, age, "ok")


def describe(read: GateStatusRead) -> str:
    """One line for ``checkpoint sync status``."""
    if read.status is None:
        return f"gate process: not reporting ({read.reason}" + (
            f", last {read.age_s:.0f} s ago)" if read.age_s is not None else ")"
        )
    s = read.status
    return (f"gate process: running (pid {s.pid}, {s.software}), thermometer {s.thermometer.status}, "
            f"camera {s.camera.status}, status {read.age_s:.0f} s old at {format_ms(utc_now_ms())}")
