"""``verify``: the ten ordered checks of credentials.md §3.2 for CK1 and HC1 texts.

| # | check | runs when | true means (CK1 / HC1 differences in ``cose``, ``ck1``, ``hc1``) |
|---|---|---|---|
| 1 | prefix | always | ``CK1:`` or ``HC1:`` |
| 2 | base45 | prefix | text <= 8,192 characters, strict base45 |
| 3 | zlib | base45 | one complete zlib stream, no dictionary, no trailing bytes, inflated <= 64 KiB |
| 4 | cose | zlib | a COSE_Sign1 of the profile (strict CBOR, §3.3) |
| 5 | cwt | cose | the payload's claim types and ranges |
| 6 | kid | cose | a trust entry with the kid allows the kind (§4.3) |
| 7 | signature | kid | one of those entries, in file order, verifies the signature |
| 8 | schema | cwt | the field rules (CK1 §2.2-2.3, HC1 §5.2) |
| 9 | not_expired | cwt, exp | at <= exp + skew, and exp <= the signing certificate's notAfter |
| 10 | valid_from | cwt, iat or nbf | at + skew >= iat and >= nbf, and iat >= the certificate's notBefore |

Every check that can run runs; a check that cannot is ``None``. The work per scan is
one base45 decode, one bounded inflate, one CBOR decode per layer and one signature
verification per candidate key; trust is indexed by kid when it is loaded.

``verify`` never raises, whatever ``text`` holds: hostile input yields false checks.
Log lines carry the checks and the revocation hash, never the text (§9, §7.3).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from edge.credentials import base45, ck1, hc1
from edge.credentials.cbor_strict import loads
from edge.credentials.cose import (
    HEADER_ALG,
    HEADER_KID,
    alg_name,
    parse_sign1,
    sig_structure,
    verify_signature,
)
from edge.credentials.errors import DecodeError, TrustError
from edge.credentials.trust import Trust, TrustEntry, load_trust

__all__ = ["CHECKS", "ERRORS", "MAX_INFLATED_BYTES", "MAX_TEXT_CHARS", "Verification", "verify"]

log = logging.getLogger(__name__)

CHECKS = ("prefix", "base45", "zlib", "cose", "cwt", "kid", "signature", "schema", "not_expired", "valid_from")
MAX_TEXT_CHARS = 8192
MAX_INFLATED_BYTES = 65536

# §3.4: (when false, when null) for the first check that is not true.
ERRORS: dict[str, tuple[str, str | None]] = {
    "prefix": ("无法识别的二维码 / Unrecognised code", None),
    "base45": ("编码错误 / Bad encoding", None),
    "zlib": ("压缩数据错误 / Bad compression", None),
    "cose": ("签名结构错误 / Bad signature envelope", None),
    "cwt": ("凭证内容错误 / Bad credential content", None),
    "kid": ("签发方未知或无权签发 / Unknown or unauthorised issuer", None),
    "signature": ("签名无效 / Invalid signature", None),
    "schema": ("字段缺失或错误 / Missing or invalid fields", None),
    "not_expired": ("凭证已过期 / Expired", "凭证无有效期 / No expiry time"),
    "valid_from": ("凭证尚未生效 / Not yet valid", "凭证无签发时间 / No issue time"),
}
# sync.md §1.5 credential.status of the first check that is not true.
_STATUS = {
    "kid": "unknown_kid",
    "signature": "bad_signature",
    "not_expired": "expired",
    "valid_from": "not_yet_valid",
}


@dataclass(frozen=True)
class Verification:
    """The outcome of ``verify`` (§3.1). ``claims`` are unverified unless ``ok``.

    ``kid`` is the key id read from the header (lowercase hex, None when there is none),
    kept apart from ``claims`` so a decision event can name the issuer even when the
    claims could not be read. It is not part of the JSON form.
    """

    ok: bool
    kind: str | None
    checks: dict[str, bool | None]
    error: str | None
    claims: dict[str, Any] | None
    kid: str | None = field(default=None, compare=False)

    @property
    def first_failure(self) -> str | None:
        """Name of the first check, in table order, that is not true; None when ``ok``."""
        return next((name for name in CHECKS if self.checks.get(name) is not True), None)

    @property
    def status(self) -> str:
        """``credential.status`` of sync.md §1.5: valid, expired, not_yet_valid,
        bad_signature, unknown_kid or unreadable.

        ``revoked``, ``not_found`` and ``none`` are the policy's to decide. A time check
        that could not run (an HC1 without ``exp`` or ``iat``) is ``unreadable``: the
        credential is not expired, it lacks a field the gate needs.
        """
        name = self.first_failure
        if name is None:
            return "valid"
        if name in _STATUS and self.checks.get(name) is False:
            return _STATUS[name]
        return "unreadable"

    @property
    def revocation_hash(self) -> str | None:
        return self.claims.get("revocation_hash") if self.claims else None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of §3.1 (``checkpoint verify --json``)."""
        return {
            "ok": self.ok,
            "kind": self.kind,
            "checks": dict(self.checks),
            "error": self.error,
            "claims": self.claims,
        }


def _at_us(at: datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _us(seconds: int | float) -> int | Fraction:
    """Exact microseconds of a CWT time (floats compared exactly, §3.2 notes)."""
    if type(seconds) is int:
        return seconds * 1_000_000
    return Fraction(seconds) * 1_000_000


def _inflate(data: bytes) -> bytes:
    """§3.2 check 3: exactly one complete zlib stream, inflated size capped (§3.3)."""
    if len(data) < 2:
        raise DecodeError("too short for a zlib stream")
    cmf, flg = data[0], data[1]
    if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flg) % 31:
        raise DecodeError("not a zlib header")
    if flg & 0x20:
        raise DecodeError("zlib preset dictionary")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise DecodeError(f"zlib: {exc}") from None
    if len(out) > MAX_INFLATED_BYTES:
        raise DecodeError("inflated size above 65,536 bytes")
    if not inflater.eof:
        raise DecodeError("incomplete zlib stream")
    if inflater.unused_data or inflater.unconsumed_tail:
        raise DecodeError("bytes after the zlib stream")
    return out


def verify(
    text: str,
    trust: Trust | dict[str, Any],
    at: datetime,
    *,
    skew: timedelta = timedelta(seconds=300),
) -> Verification:
    """Run the ten checks of §3.2 on a scanned text.

    Args:
        text: the decoded QR text, as read.
        trust: the trust in force (``load_trust`` once per bundle), or a trust document.
        at: the trusted time (aware; naive is taken as UTC).
        skew: tolerance for ``exp``, ``nbf`` and ``iat`` (gate config ``credentials.clock_skew_s``).

    Returns:
        A ``Verification``; never raises.
    """
    try:
        return _verify(text, trust, at, skew)
    except Exception as exc:  # the contract is "never raises"; a bug must not stop a gate
        log.exception("verify failed unexpectedly (a bug; the text is not logged): %s", type(exc).__name__)
        checks: dict[str, bool | None] = dict.fromkeys(CHECKS)
        checks["prefix"] = False
        return Verification(False, None, checks, ERRORS["prefix"][0], None)


def _verify(text: Any, trust_in: Trust | dict[str, Any], at: datetime, skew: timedelta) -> Verification:
    checks: dict[str, bool | None] = dict.fromkeys(CHECKS)
    if not isinstance(text, str):
        checks["prefix"] = False
        return _result(checks, None, None, None)
    profile = text[:4]
    hc = profile == "HC1:"
    checks["prefix"] = hc or profile == "CK1:"
    if not checks["prefix"]:
        return _result(checks, None, None, None)

    # 2. base45
    try:
        if len(text) > MAX_TEXT_CHARS:
            raise DecodeError("text longer than 8,192 characters")
        compressed = base45.decode(text[4:])
        checks["base45"] = True
    except DecodeError:
        checks["base45"] = False
        return _result(checks, None, None, None)

    # 3. zlib
    try:
        cose_bytes = _inflate(compressed)
        checks["zlib"] = True
    except DecodeError:
        checks["zlib"] = False
        return _result(checks, None, None, None)

    # 4. cose
    try:
        sign1 = parse_sign1(cose_bytes, hc1=hc)
        checks["cose"] = True
    except DecodeError:
        checks["cose"] = False
        return _result(checks, None, None, None)

    # 5. cwt
    try:
        cwt: Any = loads(sign1.payload)
    except DecodeError:
        cwt = None
    checks["cwt"] = hc1.check_cwt(cwt) if hc else ck1.check_cwt(cwt)

    # The kind, for the kid restriction (§4.3) and the result.
    kind: str | None = None
    restrict: str | None = None  # None: restriction skipped (cwt false)
    if checks["cwt"]:
        if hc:
            kind = restrict = "dcc"
        else:
            kind = ck1.kind_of(cwt)
            restrict = kind or ""  # an unknown kind matches no restricted entry

    # 6. kid: CK1 from the protected header only; HC1 protected, else unprotected.
    protected, unprotected = sign1.protected, sign1.unprotected
    if HEADER_KID in protected:
        kid_value = protected[HEADER_KID]
    elif hc:
        kid_value = unprotected.get(HEADER_KID)
    else:
        kid_value = None
    kid = kid_value if isinstance(kid_value, bytes) else None
    kid_hex = kid.hex() if kid is not None else None
    if hc:
        kid_ok = kid is not None and len(kid) >= 1
    else:
        kid_ok = kid is not None and len(kid) == 8
    try:
        trust = trust_in if isinstance(trust_in, Trust) else load_trust(trust_in)
    except TrustError:
        trust = Trust.empty()
    candidates: tuple[TrustEntry, ...] = ()
    if kid_ok and kid is not None:
        candidates = tuple(e for e in trust.lookup(kid) if e.allows(restrict))
    checks["kid"] = bool(candidates)

    # 7. signature: alg from the protected header (HC1: else unprotected).
    if HEADER_ALG in protected:
        alg = protected[HEADER_ALG]
    elif hc:
        alg = unprotected.get(HEADER_ALG)
    else:
        alg = None
    signer: TrustEntry | None = None
    if checks["kid"]:
        message = sig_structure(sign1.protected_raw, sign1.payload)
        for entry in candidates:
            if verify_signature(entry, alg, message, sign1.signature, hc1=hc):
                signer = entry
                break
        checks["signature"] = signer is not None

    if not checks["cwt"]:
        return _result(checks, None, None, kid_hex)

    # 8. schema
    claims: dict[str, Any] | None = None
    if hc:
        dcc, _why = hc1.check_schema(cwt)
        checks["schema"] = dcc is not None
        if dcc is not None:
            claims = hc1.normalise(cwt, dcc, kid=kid_hex, alg=alg_name(alg), signer=signer)
    else:
        checks["schema"] = ck1.check_schema(cwt) is None
        if checks["schema"] and kind is not None:
            claims = ck1.normalise(cwt, kind=kind, kid=kid_hex, alg=alg_name(alg))

    # 9-10. times, exact (§3.2 notes); certificate bounds only from the signing entry.
    at_us = _at_us(at)
    skew_us = skew.days * 86_400_000_000 + skew.seconds * 1_000_000 + skew.microseconds
    exp = cwt.get(hc1.CLAIM_EXP)
    if exp is not None:
        ok = at_us <= _us(exp) + skew_us
        if ok and signer is not None and signer.not_after_s is not None:
            ok = _us(exp) <= signer.not_after_s * 1_000_000
        checks["not_expired"] = ok
    iat, nbf = cwt.get(hc1.CLAIM_IAT), cwt.get(hc1.CLAIM_NBF)
    if iat is not None or nbf is not None:
        ok = all(at_us + skew_us >= _us(t) for t in (iat, nbf) if t is not None)
        if ok and iat is not None and signer is not None and signer.not_before_s is not None:
            ok = _us(iat) >= signer.not_before_s * 1_000_000
        checks["valid_from"] = ok
    return _result(checks, kind, claims, kid_hex)


def _result(
    checks: dict[str, bool | None], kind: str | None, claims: dict[str, Any] | None, kid_hex: str | None
) -> Verification:
    first = next((name for name in CHECKS if checks[name] is not True), None)
    if first is None:
        error = None
    else:
        when_false, when_null = ERRORS[first]
        error = when_false if checks[first] is False or when_null is None else when_null
    result = Verification(first is None, kind, checks, error, claims if checks["schema"] else None, kid_hex)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "verify kind=%s ok=%s first_failure=%s revocation_hash=%s checks=%s",
            kind, result.ok, first, result.revocation_hash,
            ",".join(f"{k}={'T' if v else 'F' if v is False else '-'}" for k, v in checks.items()),
        )
    return result
