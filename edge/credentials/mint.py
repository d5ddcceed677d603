"""Issuing CK1 credentials (credentials.md §2.4): ``mint`` and the claims mapping.

Rules, in order:

1. the claims arrive under the long names of §2.2-2.3/§3.5 (``colour`` as a word,
   ``flags`` as names, times in the JSON time format); they are mapped to the short keys
   and CBOR values. ``iat``, ``kid``, ``alg``, ``id`` and ``revocation_hash`` (output-only
   members of §3.5) are ignored, so the claims of a verified credential can be re-issued;
   any other unknown member is an error naming it;
2. ``iat`` = now; ``exp`` = ``iat`` + ``expires_in_s`` (default: the kind's lifetime of
   §1.1), or the claims' ``exp`` when no ``expires_in_s`` is given; a pass takes ``nbf``
   and ``exp`` from its claims;
3. ``id`` = 8 bytes from ``os.urandom``; ``name`` goes through ``mask_name`` unless it
   already holds ``*``;
4. the CWT passes the gate's own schema check (else ``ClaimsError`` naming the field);
5. deterministic CBOR, sign (Ed25519, or ES256 with RFC 6979 nonces), tag 18,
   ``zlib.compress(cose, 9)``, base45, ``CK1:``;
6. the text is verified with the gate's ``verify`` (inside its validity window) before
   it is returned.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any

from edge.credentials import base45, ck1
from edge.credentials.cbor_strict import Tag, dumps
from edge.credentials.cose import ALG_EDDSA, ALG_ES256, HEADER_ALG, HEADER_KID, TAG_SIGN1, sig_structure
from edge.credentials.errors import ClaimsError, MintError
from edge.credentials.masking import mask_name
from edge.credentials.trust import Trust, TrustEntry
from sync.errors import TimeFormatError
from sync.keys import KeyFile
from sync.timefmt import from_ms, parse_ms

__all__ = ["KINDS", "build_cwt", "mint", "trust_for_key"]

log = logging.getLogger(__name__)

KINDS = ("health", "pass", "venue", "material")
_OUTPUT_ONLY = frozenset({"iat", "kid", "alg", "id", "revocation_hash"})
_TOP = {"iss", "sub", "nbf", "exp"}
_COLOUR_CODE = {v: k for k, v in ck1.COLOURS.items()}


def _seconds(value: Any, name: str) -> int:
    if not isinstance(value, str):
        raise ClaimsError(f"{name}: a time in the form YYYY-MM-DDTHH:MM:SS.mmmZ")
    try:
        return parse_ms(value) // 1000
    except TimeFormatError as exc:
        raise ClaimsError(f"{name}: {exc}") from None


def build_cwt(
    kind: str, claims: dict[str, Any], *, now_ms: int, expires_in_s: int | None, cid: bytes
) -> dict[Any, Any]:
    """The CWT claims map (short keys, CBOR values) for ``claims`` (rules 1-4).

    Raises:
        ClaimsError: an unknown kind or member, a value of the wrong form, or a breach of
            §2.2-2.3, naming the field.
    """
    if kind not in KINDS:
        raise ClaimsError(f"kind: one of {', '.join(KINDS)}")
    if not isinstance(claims, dict):
        raise ClaimsError("claims: a JSON object")
    fields = {f.name: f for f in ck1.FIELDS[kind]}
    for name in claims:
        if name not in fields and name not in _TOP and name not in _OUTPUT_ONLY:
            raise ClaimsError(f"{name}: not a claim of a {kind} credential")
    if expires_in_s is not None and (type(expires_in_s) is not int or expires_in_s <= 0):
        raise ClaimsError("expires_in: a positive number of seconds")

    iat = now_ms // 1000
    cwt: dict[Any, Any] = {}
    if "iss" in claims:
        cwt[ck1.CLAIM_ISS] = claims["iss"]
    if kind in ck1.NEEDS_SUB and "sub" in claims:
        cwt[ck1.CLAIM_SUB] = claims["sub"]
    cwt[ck1.CLAIM_IAT] = iat
    nbf = _seconds(claims["nbf"], "nbf") if "nbf" in claims else None
    if nbf is not None:
        cwt[ck1.CLAIM_NBF] = nbf
    if kind == "pass":
        if nbf is None:
            raise ClaimsError("nbf: required for a pass (valid from)")
        if "exp" in claims:
            exp = _seconds(claims["exp"], "exp")
        elif expires_in_s is not None:
            exp = nbf + expires_in_s
        else:
            raise ClaimsError("exp: required for a pass (valid until)")
    elif expires_in_s is None and "exp" in claims:
        exp = _seconds(claims["exp"], "exp")
    else:
        exp = iat + (expires_in_s if expires_in_s is not None else ck1.LIFETIME_S[kind])
    cwt[ck1.CLAIM_EXP] = exp

    ck: dict[str, Any] = {"k": ck1.KIND_LETTER[kind], "id": cid}
    for name, f in fields.items():
        if name not in claims:
            continue
        value = claims[name]
        if f.type == "colour":
            if not isinstance(value, str) or value not in _COLOUR_CODE:
                raise ClaimsError(f"colour: one of {', '.join(_COLOUR_CODE)}")
            value = _COLOUR_CODE[value]
        elif f.type == "flags":
            value = _flag_bits(value)
            if value == 0:
                continue  # absent = 0 (§2.3): two bytes fewer in the QR code
        elif f.type == "time":
            value = _seconds(value, name)
        elif name == "name" and isinstance(value, str) and "*" not in value:
            value = mask_name(value)
        ck[f.key] = value
    cwt[ck1.CK_CLAIM] = ck

    if not ck1.check_cwt(cwt):
        raise ClaimsError("iss/sub: text; times: between 1970 and 9999")
    problem = ck1.check_schema(cwt)
    if problem is not None:
        raise ClaimsError(problem)
    return cwt


def _flag_bits(value: Any) -> int:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClaimsError("flags: a list of flag names")
    bits = 0
    for name in value:
        if name not in ck1.FLAGS:
            raise ClaimsError(f"flags: unknown flag {name!r}; known: {', '.join(ck1.FLAGS)}")
        bits |= 1 << ck1.FLAGS.index(name)
    return bits


def trust_for_key(key: KeyFile) -> Trust:
    """A one-entry trust holding ``key`` (any kind), for checking what it signs."""
    pub = key.public_key()
    entry = TrustEntry(0, bytes.fromhex(key.keyid), pub, "ed25519" if key.alg == "ed25519" else "ec",
                       0 if key.alg == "ed25519" else 32, None)
    return Trust((entry,))


def encode(cwt: dict[Any, Any], key: KeyFile) -> tuple[str, bytes]:
    """Sign ``cwt`` with ``key``: (the CK1 text, the COSE bytes)."""
    alg = ALG_EDDSA if key.alg == "ed25519" else ALG_ES256
    protected = dumps({HEADER_ALG: alg, HEADER_KID: bytes.fromhex(key.keyid)})
    payload = dumps(cwt)
    signature = key.sign(sig_structure(protected, payload))
    cose = dumps(Tag(TAG_SIGN1, [protected, {}, payload, signature]))
    return "CK1:" + base45.encode(zlib.compress(cose, 9)), cose


def mint(kind: str, claims: dict[str, Any], key: KeyFile, *, now_ms: int, expires_in_s: int | None = None) -> str:
    """Issue a CK1 credential and return its QR text (§2.4).

    Args:
        kind: ``health``, ``pass``, ``venue`` or ``material``.
        claims: long-name claims (rule 1).
        key: an issuer key file with its private half (``sync.keys``); its ``keyid`` is the kid.
        now_ms: the issue time (epoch ms); ``iat`` is its second.
        expires_in_s: lifetime from ``iat`` (rule 2).

    Raises:
        ClaimsError: the claims break §2.2-2.3 (the message names the field).
        MintError: the result does not verify (never expected; a key file that lies).
        sync.errors.KeyFileError: the key has no private half.
    """
    from edge.credentials.verifier import verify

    cwt = build_cwt(kind, claims, now_ms=now_ms, expires_in_s=expires_in_s, cid=os.urandom(8))
    text, _cose = encode(cwt, key)
    check_at = max(cwt[ck1.CLAIM_IAT], cwt.get(ck1.CLAIM_NBF, 0))
    result = verify(text, trust_for_key(key), from_ms(check_at * 1000))
    if not result.ok:
        raise MintError(f"minted credential failed verification at its check '{result.first_failure}'")
    log.info("minted kind=%s kid=%s revocation_hash=%s", kind, key.keyid, result.revocation_hash)
    return text
