"""Errors of ``edge.credentials`` (credentials.md).

EdgeError
└── CredentialError                    anything this package raises on purpose
    ├── TrustError (also ValueError)   the trust document as a whole is unusable (not an object,
    │                                  ``keys`` not a list, unreadable file): refuse it, keep the
    │                                  trust in force. Single bad entries are warnings, not errors.
    ├── ClaimsError (also ValueError)  ``mint``: the claims break credentials.md §2.2-2.3; the
    │                                  message names the field. Fix the claims file.
    └── MintError                      ``mint``: the minted text did not verify with the gate's own
                                       ``verify`` (a bug or a key that is not what it says).

``verify`` never raises: every problem with a scanned text is a check that is false or null.
The decoders below raise ``DecodeError`` (a ``ValueError``, internal to the package); the
verifier turns each into the check of the layer that failed.
"""

from __future__ import annotations

from edge.errors import EdgeError

__all__ = ["ClaimsError", "CredentialError", "DecodeError", "MintError", "TrustError"]


class CredentialError(EdgeError):
    """Base of the errors raised on purpose by ``edge.credentials``."""


class TrustError(CredentialError, ValueError):
    """The trust document cannot be used at all (credentials.md §4.1)."""


class ClaimsError(CredentialError, ValueError):
    """Claims given to ``mint`` break the field rules of credentials.md §2.2-2.3."""


class MintError(CredentialError):
    """A freshly minted credential failed the gate's own verification (§2.4 rule 4)."""


class DecodeError(ValueError):
    """One transport layer (base45, zlib, CBOR) is malformed or breaks a limit of §3.3."""
