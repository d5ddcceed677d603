"""One pure module per wire protocol: bytes in, :class:`Sample` values out (hardware.md §1.3-1.5).

Parsers share one shape: ``feed(data) -> list[...]`` returns what became complete
with these bytes, ``stats`` holds cumulative counters named exactly as in the
vectors file (``thermometer_frames.json``), ``pending`` is the number of bytes still
buffered, ``reset()`` drops the buffer but keeps the counters.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROTOCOLS", "Sample"]

PROTOCOLS = ("gy-mcu90614", "modbus-rtu", "ascii")


@dataclass(frozen=True, slots=True)
class Sample:
    """One decoded value pair from a frame, reply or line; °C rounded to 0.01."""

    object_c: float
    ambient_c: float | None
