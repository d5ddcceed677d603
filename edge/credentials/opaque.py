"""Opaque codes and the keyed hashes of credentials.md §6 and §4.6.

A text without a known prefix (badge number, the URL of the online-only provincial
health code, ``CK2:``...) cannot be verified offline. The gate looks its keyed hash up in
the roster; the text itself is never stored, logged or opened.
"""

from __future__ import annotations

import hashlib
import hmac

from edge.credentials.ck1 import revocation_hash_of_id
from edge.credentials.hc1 import revocation_hash_of_ci

__all__ = ["classify", "code_hash", "revocation_hash"]


def classify(text: str) -> str:
    """``"CK1"``, ``"HC1"`` or ``"opaque"`` from the first four characters, case-sensitive (§1)."""
    if not isinstance(text, str):
        return "opaque"
    head = text[:4]
    if head == "CK1:":
        return "CK1"
    if head == "HC1:":
        return "HC1"
    return "opaque"


def code_hash(text: str, roster_key: bytes) -> str:
    """§6: ``hex(HMAC-SHA-256(roster_key, "CODE:" + text)[0:16])``, the roster's code index key."""
    if not isinstance(roster_key, (bytes, bytearray)) or not roster_key:
        raise ValueError("roster_key must be non-empty bytes")
    return hmac.new(bytes(roster_key), ("CODE:" + text).encode("utf-8"), hashlib.sha256).digest()[:16].hex()


def revocation_hash(credential_id: bytes | str) -> str:
    """§4.6 revocation identifier, 32 lowercase hex characters.

    Args:
        credential_id: a CK1 credential's 8 ``id`` bytes (``bytes.fromhex(claims["id"])``),
            or an EU DCC's unique certificate identifier ``ci`` as text.

    Raises:
        ValueError: bytes that are not exactly 8 long, or an empty ``ci``.
    """
    if isinstance(credential_id, (bytes, bytearray)):
        if len(credential_id) != 8:
            raise ValueError("a CK1 credential id has exactly 8 bytes")
        return revocation_hash_of_id(bytes(credential_id))
    if isinstance(credential_id, str) and credential_id:
        return revocation_hash_of_ci(credential_id)
    raise ValueError("revocation_hash takes the 8 id bytes of a CK1 or the ci text of a DCC")
