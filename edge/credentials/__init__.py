"""Credentials a gate reads and how it verifies them (specs/credentials.md).

``classify`` sorts a decoded text into ``CK1`` (our signed offline credential), ``HC1``
(EU DCC) or ``opaque`` (looked up in the roster by ``code_hash``). ``verify`` runs the
ten ordered checks of §3.2 against the trust in force (``load_trust``, parsed and indexed
once per bundle) and never raises. ``mint`` issues CK1 credentials for issuers, tools,
the demo and tests. Masking (§7.2) is here too, the one definition of the project.
"""

from __future__ import annotations

from edge.credentials.errors import ClaimsError, CredentialError, MintError, TrustError
from edge.credentials.masking import looks_masked, mask_id, mask_name, mask_phone
from edge.credentials.mint import mint
from edge.credentials.opaque import classify, code_hash, revocation_hash
from edge.credentials.trust import Trust, TrustEntry, load_trust
from edge.credentials.verifier import CHECKS, Verification, verify

__all__ = [
    "CHECKS",
    "ClaimsError",
    "CredentialError",
    "MintError",
    "Trust",
    "TrustEntry",
    "TrustError",
    "Verification",
    "classify",
    "code_hash",
    "load_trust",
    "looks_masked",
    "mask_id",
    "mask_name",
    "mask_phone",
    "mint",
    "revocation_hash",
    "verify",
]
