"""COSE_Sign1 (RFC 9052) as CK1 and HC1 use it (credentials.md §2.1, §3.2 checks 4 and 7).

Structure rules (check ``cose``), in order:

1. one CBOR item, nothing after it (strict decoder, §3.3 limits);
2. CK1: tag 18 around the array; HC1: tag 18, untagged, or tag 61 around tag 18;
3. a 4-array ``[protected: bstr, unprotected: map, payload: bstr, signature: bstr]``
   (a nil, detached payload is refused);
4. the protected bstr is empty or decodes to one map, without ``crit`` (label 2).

Signatures (check ``signature``) are over ``["Signature1", protected, h'', payload]``
with the protected bytes exactly as received. A pairing of alg and key that is not
listed below, a signature of the wrong length or a failed verification is simply
``False``; nothing here raises on a hostile signature.

| alg | key | signature |
|---|---|---|
| -8 EdDSA | Ed25519 | 64 bytes (RFC 8032) |
| -7 ES256 | EC P-256 (HC1 also P-384, P-521; hash SHA-256) | raw r‖s, each the curve's size |
| -37 PS256 (HC1 only) | RSA >= 2048 | RSASSA-PSS, MGF1-SHA-256, salt length auto-detected |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edge.credentials.cbor_strict import Tag, loads
from edge.credentials.errors import DecodeError
from edge.credentials.trust import TrustEntry

__all__ = ["ALG_EDDSA", "ALG_ES256", "ALG_NAMES", "ALG_PS256", "Sign1", "alg_name", "parse_sign1",
           "sig_structure", "verify_signature"]

ALG_EDDSA = -8
ALG_ES256 = -7
ALG_PS256 = -37
ALG_NAMES = {ALG_EDDSA: "EdDSA", ALG_ES256: "ES256", ALG_PS256: "PS256"}
HEADER_ALG = 1
HEADER_CRIT = 2
HEADER_KID = 4
TAG_SIGN1 = 18
TAG_CWT = 61

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
_SHA256 = hashes.SHA256()
_SIG1_PREFIX = b"\x84\x6aSignature1"


@dataclass(frozen=True, slots=True)
class Sign1:
    """A structurally valid COSE_Sign1 (its signature not yet checked)."""

    protected_raw: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes


def parse_sign1(data: bytes, *, hc1: bool) -> Sign1:
    """Check the envelope rules above.

    Raises:
        DecodeError: the bytes are not a COSE_Sign1 of the profile.
    """
    item = loads(data)
    if isinstance(item, Tag):
        if item.tag == TAG_CWT and hc1:
            item = item.value
            if not isinstance(item, Tag) or item.tag != TAG_SIGN1:
                raise DecodeError("tag 61 must wrap tag 18")
        if item.tag != TAG_SIGN1:
            raise DecodeError(f"tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    elif not hc1:
        raise DecodeError("CK1 requires tag 18 around the COSE_Sign1")
    if not isinstance(item, list) or len(item) != 4:
        raise DecodeError("COSE_Sign1 is a 4-element array")
    protected_raw, unprotected, payload, signature = item
    if not isinstance(protected_raw, bytes) or not isinstance(unprotected, dict):
        raise DecodeError("COSE_Sign1 headers must be a bstr and a map")
    if not isinstance(payload, bytes):
        raise DecodeError("COSE_Sign1 payload must be a bstr (no detached payload)")
    if not isinstance(signature, bytes):
        raise DecodeError("COSE_Sign1 signature must be a bstr")
    if protected_raw:
        protected = loads(protected_raw)
        if not isinstance(protected, dict):
            raise DecodeError("protected header is not a map")
    else:
        protected = {}
    if HEADER_CRIT in protected:
        raise DecodeError("crit header parameters are not supported")
    return Sign1(protected_raw, protected, unprotected, payload, signature)


def _bstr_head(n: int) -> bytes:
    if n < 24:
        return bytes([0x40 | n])
    if n < 0x100:
        return bytes([0x58, n])
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    return b"\x5a" + n.to_bytes(4, "big")


def sig_structure(protected_raw: bytes, payload: bytes) -> bytes:
    """CBOR of ``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4), the bytes signed."""
    return b"".join(
        (_SIG1_PREFIX, _bstr_head(len(protected_raw)), protected_raw, b"\x40", _bstr_head(len(payload)), payload)
    )


def alg_name(alg: Any) -> str | None:
    """The ``alg`` claim of §3.5: a known name, any other label as text, None when absent."""
    if alg is None:
        return None
    if type(alg) is int:
        return ALG_NAMES.get(alg, str(alg))
    if isinstance(alg, str):
        return alg
    return None


def verify_signature(entry: TrustEntry, alg: Any, message: bytes, signature: bytes, *, hc1: bool) -> bool:
    """True when ``entry``'s key verifies ``signature`` over ``message`` with ``alg``."""
    try:
        if alg == ALG_EDDSA and type(alg) is int and not hc1:
            if entry.key_type != "ed25519" or len(signature) != 64:
                return False
            entry.key.verify(signature, message)
            return True
        if alg == ALG_ES256 and type(alg) is int:
            if entry.key_type != "ec" or (not hc1 and entry.curve_bytes != 32):
                return False
            size = entry.curve_bytes
            if len(signature) != 2 * size:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
            entry.key.verify(der, message, _ECDSA_SHA256)
            return True
        if alg == ALG_PS256 and type(alg) is int and hc1:
            if entry.key_type != "rsa" or len(signature) != (entry.key.key_size + 7) // 8:
                return False
            entry.key.verify(signature, message, _PSS, _SHA256)
            return True
    except (InvalidSignature, ValueError, TypeError, OverflowError):
        return False
    return False
