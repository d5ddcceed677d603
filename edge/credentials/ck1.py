"""CK1 claims: the CWT rules, the ``ck`` field tables and the normalised claims
(credentials.md §2.2, §2.3, §3.2 checks 5 and 8, §3.5).

``check_cwt`` is check 5 (types and ranges that every CK1 payload must have before
anything else is read). ``check_schema`` is check 8: it returns the first broken rule
as a message naming the field, so the same code serves the gate (a boolean) and
``checkpoint admin mint`` (exit 1 naming the field). ``normalise`` builds the claims
of §3.5 from a payload that passed both.

The field tables below are the one description of the ``ck`` map: the verifier, the
normaliser and the minting tool all read them.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from sync.timefmt import format_ms

__all__ = [
    "CK_CLAIM",
    "COLOURS",
    "FIELDS",
    "FLAGS",
    "KIND_CODES",
    "LIFETIME_S",
    "ROLES",
    "Field",
    "check_cwt",
    "check_schema",
    "kind_of",
    "normalise",
]

CK_CLAIM = -65537
CLAIM_ISS, CLAIM_SUB, CLAIM_EXP, CLAIM_NBF, CLAIM_IAT = 1, 2, 4, 5, 6
TIME_LIMIT_S = 253_402_300_800  # 10000-01-01: the cwt range of §3.2 check 5
SCHEMA_MIN_S = 946_684_800  # 2000-01-01: every schema time lies in [2000, 2100) (§2.2)
SCHEMA_MAX_S = 4_102_444_800  # 2100-01-01

KIND_CODES = {"h": "health", "p": "pass", "v": "venue", "m": "material"}
KIND_LETTER = {v: k for k, v in KIND_CODES.items()}
COLOURS = {"g": "green", "y": "yellow", "r": "red"}
FLAGS = (
    "positive",
    "close_contact",
    "secondary_contact",
    "risk_area_travel",
    "itinerary_star",
    "medicine_purchase",
    "unreported_arrival",
)
ROLES = ("staff", "closed_loop", "logistics", "sales", "essential", "visitor")
# §1.1: lifetimes issuers should use (the gate does not enforce them); pass: its own window.
LIFETIME_S = {"health": 24 * 3600, "venue": 365 * 86400, "material": 90 * 86400}
_ROLE_RE = re.compile(r"[a-z_]+")
_SUB_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Field:
    """One key of the ``ck`` map: short key, claim name, type, length bounds, required."""

    key: str
    name: str
    type: str  # "text" | "uint" | "time" | "colour" | "flags"
    min_len: int = 1
    max_len: int = 0
    required: bool = False


def _t(key: str, name: str, max_len: int, required: bool = False, min_len: int = 1) -> Field:
    return Field(key, name, "text", min_len, max_len, required)


# §2.3, in table order; "f" sits where each kind's table has it.
FIELDS: dict[str, tuple[Field, ...]] = {
    "health": (
        _t("f", "firm", 32),
        _t("n", "name", 32, True),
        _t("r", "role", 16, True),
        Field("c", "colour", "colour", required=True),
        Field("x", "flags", "flags"),
        Field("t", "last_test", "time"),
    ),
    "pass": (
        _t("p", "pass_id", 32, True),
        _t("pl", "plate", 16, True),
        _t("f", "firm", 32, True),
        _t("o", "origin", 64),
        _t("d", "destination", 64),
        _t("rt", "route", 128),
    ),
    "venue": (
        _t("vi", "venue_id", 32, True),
        _t("vn", "venue_name", 64, True),
        _t("z", "zone", 32, True),
        _t("dr", "door", 32),
        _t("f", "firm", 32, True),
    ),
    "material": (
        _t("g", "goods_code", 64, True),
        _t("gn", "goods_name", 64),
        _t("b", "batch", 32),
        _t("q", "quantity", 32),
        _t("o", "origin", 64),
        _t("f", "firm", 32),
    ),
}
NEEDS_SUB = frozenset({"health", "pass"})


def _is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def check_cwt(claims: Any) -> bool:
    """Check 5: a map; iss/sub text; exp/nbf/iat integers in [0, 10000-01-01); ``ck`` a map."""
    if not isinstance(claims, dict):
        return False
    for key in (CLAIM_ISS, CLAIM_SUB):
        if key in claims and not isinstance(claims[key], str):
            return False
    for key in (CLAIM_EXP, CLAIM_NBF, CLAIM_IAT):
        if key in claims:
            v = claims[key]
            if type(v) is not int or not 0 <= v < TIME_LIMIT_S:
                return False
    return isinstance(claims.get(CK_CLAIM), dict)


def kind_of(claims: dict[Any, Any]) -> str | None:
    """The CK1 kind named by ``ck.k`` (claims passed check 5); None when unknown."""
    k = claims[CK_CLAIM].get("k")
    return KIND_CODES.get(k) if isinstance(k, str) else None


def _text_ok(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, str) and lo <= len(v) <= hi  # len() counts code points (§2.3)


def _time_ok(v: Any) -> bool:
    return _is_uint(v) and SCHEMA_MIN_S <= v < SCHEMA_MAX_S


def check_schema(claims: dict[Any, Any]) -> str | None:
    """Check 8 for a payload that passed check 5: None when valid, else the broken rule."""
    ck = claims[CK_CLAIM]
    if not all(isinstance(k, str) for k in ck):
        return "ck: keys must be text"
    kind = kind_of(claims)
    if kind is None:
        return "k: kind must be one of h, p, v, m"
    if not _text_ok(claims.get(CLAIM_ISS), 1, 32):
        return "iss: required, 1-32 characters"
    if kind in NEEDS_SUB:
        sub = claims.get(CLAIM_SUB)
        if not isinstance(sub, str) or not _SUB_RE.fullmatch(sub):
            return "sub: required, 32 lowercase hex characters"
    for key, name in ((CLAIM_EXP, "exp"), (CLAIM_IAT, "iat")):
        if key not in claims:
            return f"{name}: required"
    if kind == "pass" and CLAIM_NBF not in claims:
        return "nbf: required for a pass"
    for key, name in ((CLAIM_EXP, "exp"), (CLAIM_NBF, "nbf"), (CLAIM_IAT, "iat")):
        if key in claims and not _time_ok(claims[key]):
            return f"{name}: must lie in [2000-01-01, 2100-01-01)"
    exp = claims[CLAIM_EXP]
    if claims[CLAIM_IAT] > exp:
        return "iat: must not be after exp"
    if CLAIM_NBF in claims and claims[CLAIM_NBF] > exp:
        return "nbf: must not be after exp"
    cid = ck.get("id")
    if not isinstance(cid, bytes) or len(cid) != 8:
        return "id: required, exactly 8 bytes"
    for f in FIELDS[kind]:
        if f.key not in ck:
            if f.required:
                return f"{f.name}: required for {kind}"
            continue
        v = ck[f.key]
        if f.type == "text":
            if not _text_ok(v, f.min_len, f.max_len):
                return f"{f.name}: text of {f.min_len}-{f.max_len} characters"
        elif f.type == "colour":
            if not isinstance(v, str) or v not in COLOURS:
                return f"{f.name}: one of g, y, r"
        elif f.type == "flags":
            if not _is_uint(v) or v > 127:
                return f"{f.name}: integer 0-127 (bits 7 and above are reserved)"
        elif f.type == "time" and not _time_ok(v):
            return f"{f.name}: time in [2000-01-01, 2100-01-01)"
    if kind == "health":
        if "*" not in ck["n"]:
            return "name: must be masked (contain '*', credentials.md §7.2)"
        if not _ROLE_RE.fullmatch(ck["r"]):
            return "role: lowercase letters and '_' only"
    return None


def revocation_hash_of_id(cid: bytes) -> str:
    """§4.6: SHA-256 of the 8 ``id`` bytes, first 16 bytes, hex."""
    return hashlib.sha256(cid).digest()[:16].hex()


def format_millis(ms: int) -> str:
    """The JSON time format of epoch milliseconds: ``sync.timefmt.format_ms``, faster.

    ``time.gmtime`` is about ten times quicker than datetime arithmetic (this runs for
    every time claim of every scan); outside years 1970-9999 the general formatter is used.
    """
    seconds, millis = divmod(ms, 1000)
    if 0 <= seconds < TIME_LIMIT_S:
        t = time.gmtime(seconds)
        return (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
        )
    return format_ms(ms)


def format_seconds(seconds: int) -> str:
    """The JSON time format of whole epoch seconds."""
    return format_millis(seconds * 1000)


_time = format_seconds


def normalise(claims: dict[Any, Any], *, kind: str, kid: str | None, alg: str | None) -> dict[str, Any]:
    """The claims of §3.5 for a payload that passed checks 5 and 8."""
    ck = claims[CK_CLAIM]
    out: dict[str, Any] = {"iss": claims[CLAIM_ISS]}
    if kind in NEEDS_SUB:
        out["sub"] = claims[CLAIM_SUB]
    out["iat"] = _time(claims[CLAIM_IAT])
    if CLAIM_NBF in claims:
        out["nbf"] = _time(claims[CLAIM_NBF])
    out["exp"] = _time(claims[CLAIM_EXP])
    out["kid"] = kid
    out["alg"] = alg
    out["id"] = ck["id"].hex()
    out["revocation_hash"] = revocation_hash_of_id(ck["id"])
    for f in FIELDS[kind]:
        if f.type == "flags":
            bits = ck.get("x", 0)
            out["flags"] = [name for i, name in enumerate(FLAGS) if bits >> i & 1]
        elif f.key in ck:
            v = ck[f.key]
            if f.type == "colour":
                v = COLOURS[v]
            elif f.type == "time":
                v = _time(v)
            out[f.name] = v
    return out
