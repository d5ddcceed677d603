"""Errors of the ``sync`` package: wire formats, agent and server.

SyncError
├── ConfigError (also ValueError)       a config file is unreadable or invalid: fix it, do not retry
├── FormatError (also ValueError)       bytes that are not what a wire format allows
│   ├── CanonicalError                  outside the canonical JSON profile (sync.md §1.3)
│   └── TimeFormatError                 not the JSON time format (sync.md §0)
├── KeyFileError (also ValueError)      a key file that cannot be used (bundles.md §1.2)
├── Unreachable (also ConnectionError)  network, timeout, 408/429/5xx: back off, try again
└── Rejected                            the server answered no: never resend unchanged

Further subclasses live next to the code that raises them (the agent, the
server, the bundle verifier) but always derive from one of these.
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every error raised on purpose by ``sync``."""


class ConfigError(SyncError, ValueError):
    """A configuration file is missing, malformed or names an unknown key.

    The message is one line that names the file and the key; the CLI prints it
    as is and exits 78 (systemd: configuration error, do not restart).
    """


class FormatError(SyncError, ValueError):
    """Input that a wire format of ours does not allow."""


class CanonicalError(FormatError):
    """A value outside the canonical JSON profile, or JSON that a strict parser refuses."""


class TimeFormatError(FormatError):
    """A time string that is not ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""


class KeyFileError(SyncError, ValueError):
    """A key file that is unreadable, malformed, of the wrong role, or lacks its private half."""


class Unreachable(SyncError, ConnectionError):
    """The other end could not be reached or answered with a retryable status."""


class Rejected(SyncError):
    """The other end understood the request and refused it."""
