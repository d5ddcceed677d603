"""Serial thermometers: parsers, a reconnecting reader and a pty simulator. Imports nothing of ours.

Public API (hardware.md §1.1)::

    with open_thermometer("/dev/serial/by-id/usb-...", "gy-mcu90614", **options) as t:
        t.read(timeout=1.0)      # next raw Reading, or None
        t.measure(at=time.monotonic(), max_age_s=20, wait_s=3.0)   # one Measurement per person
        t.status()               # ThermometerStatus: ok | stale | fault | absent
"""

from firmware_bridge.errors import BridgeError, NoReply, PortBusy, PortLost, ProtocolConfigError
from firmware_bridge.reader import Thermometer, open_thermometer
from firmware_bridge.records import Counters, Measurement, Reading, ThermometerStatus
from firmware_bridge.simulator import ThermometerSim

__all__ = [
    "BridgeError",
    "Counters",
    "Measurement",
    "NoReply",
    "PortBusy",
    "PortLost",
    "ProtocolConfigError",
    "Reading",
    "Thermometer",
    "ThermometerSim",
    "ThermometerStatus",
    "open_thermometer",
]
