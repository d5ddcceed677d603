"""Errors of the ``edge`` package (the gate process).

EdgeError
├── DataDirError (also FileNotFoundError)  the data directory is missing or unusable: fix config
├── StoreError                             the local event store
│   ├── StoreUnavailable (also OSError)    an append failed (not a full disk): keep the event in
│   │                                      memory, retry, show a storage error (sync.md §1.6)
│   ├── WrongDevice (also ValueError)      the store belongs to another device id
│   └── StoreCorrupt                       the file cannot be opened or its meta row is unreadable
├── ClockError                             the state database's clock row cannot be used
├── PinClash (also ValueError)             two parts of the gate were given the same GPIO pin
└── HardwareError (also OSError)           a device the gate needs is missing or failing

Packages add subclasses next to the code that raises them (credentials, policy,
camera, console) and derive them from one of these.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error raised on purpose by ``edge``."""


class DataDirError(EdgeError, FileNotFoundError):
    """The configured data directory does not exist or cannot be written."""


class StoreError(EdgeError):
    """The local event store failed."""


class StoreUnavailable(StoreError, OSError):
    """An append could not be committed for a reason other than a full disk."""


class WrongDevice(StoreError, ValueError):
    """``events.db`` was created for another device id."""


class StoreCorrupt(StoreError):
    """``events.db`` cannot be opened or its ``meta`` row is unreadable."""


class ClockError(EdgeError):
    """The trusted clock cannot read or write its row in ``state.db``."""


class PinClash(EdgeError, ValueError):
    """Two parts of the gate were given the same GPIO pin."""


class HardwareError(EdgeError, OSError):
    """A device the gate needs is missing or failing."""
