"""Errors of ``firmware_bridge`` (imports nothing of ours).

BridgeError
├── PortLost (also ConnectionError)   the serial port vanished or failed: reconnect
├── PortBusy (also OSError)           another process holds the port (exclusive lock)
├── NoReply (also TimeoutError)       a request got no reply within its timeout
└── ProtocolConfigError (ValueError)  options that do not describe a usable device
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised on purpose by ``firmware_bridge``."""


class PortLost(BridgeError, ConnectionError):
    """The serial port raised an I/O error or disappeared."""


class PortBusy(BridgeError, OSError):
    """The serial port is exclusively locked by another process."""


class NoReply(BridgeError, TimeoutError):
    """A request to the device got no complete reply in time."""


class ProtocolConfigError(BridgeError, ValueError):
    """Thermometer options that cannot work (unknown protocol, bad register map, bad pattern)."""
