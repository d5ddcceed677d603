"""The records the thermometer API hands out (hardware.md §1.1, §1.7, §1.8).

Frozen dataclasses, no behaviour. Temperatures are floats in °C here (two decimals,
body estimates one); outside ``firmware_bridge`` the gate passes ``body_centi_c``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["Counters", "Measurement", "Reading", "State", "ThermometerStatus"]

State = Literal["ok", "stale", "fault", "absent"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One valid frame / line / reply (§1.1)."""

    object_c: float  # sensor's object temperature, 0.01 °C
    ambient_c: float | None
    body_c: float  # §1.9 estimate for this single reading, 0.1 °C
    at: datetime  # aware UTC, from the injected clock
    mono: float  # time.monotonic() when the frame completed
    protocol: str


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value per person (§1.8).

    ``body_centi_c`` is set only when ``status == "measured"``: it is what the gate
    passes on, so a rejected value (``implausible_low``) carries ``body_c`` for the
    log but never a ``body_centi_c`` that could be mistaken for a measurement.
    ``spread_c`` and ``last_sample_mono`` describe the window (the vectors'
    ``spread_c`` and ``last_sample_t``).
    """

    status: Literal["measured", "no_measurement", "stale", "fault"]
    reason: str | None = None  # no_measurement: no_subject | too_few_samples | unstable | implausible_low
    object_c: float | None = None
    ambient_c: float | None = None
    body_c: float | None = None
    body_centi_c: int | None = None
    measured_at: datetime | None = None
    samples: int = 0
    spread_c: float | None = None
    last_sample_mono: float | None = None

    @property
    def measured(self) -> bool:
        return self.status == "measured"


@dataclass(frozen=True, slots=True)
class Counters:
    """Cumulative since open (§1.7). ``bad_frames`` = bad checksum/CRC + bad headers + bad
    lines + implausible values; ``timeouts`` = Modbus requests without a reply."""

    frames: int = 0
    bad_frames: int = 0
    garbage_bytes: int = 0
    reconnects: int = 0
    timeouts: int = 0
    reopens: int = 0  # close/reopen after reopen_after_s of silence (not counted in reconnects)
    exceptions: int = 0  # Modbus exception replies
    implausible: int = 0  # well-formed frames with values no sensor reports (also in bad_frames)
    ignored: int = 0  # well-formed input without a reading: ASCII banners/debug lines, GY other frame types

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ThermometerStatus:
    """``Thermometer.status()`` (§1.7); ``state`` is the heartbeat's ``thermometer.status``."""

    state: State
    protocol: str
    port: str
    last_reading_age_s: float | None
    since: float  # time.monotonic() of the last state change
    last_error: str | None
    counters: Counters
    bad_frames_per_min: int

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counters"] = self.counters.as_dict()
        return d
