"""EU DCC (HC1) payload rules (credentials.md §5, §3.2 checks 5 and 8, §5.3 claims).

Check 5 (``check_cwt``): the payload is a map; ``iss``/``sub`` text where present;
``exp``/``nbf``/``iat`` integers or finite floats in [0, 10000-01-01); claim -260 is a map
whose key 1 is a map (the DCC payload).

Check 8 (``check_schema``), in order (§5.2):

1. the DCC payload converts to JSON: text, integers, finite floats, booleans, null,
   arrays, maps with text keys as they are; tag 0 and tag 1004 around text give the text;
   tag 1 gives the JSON time format; byte strings, other tags, non-text keys, NaN and
   infinities fail;
2. the JSON validates against the DCC combined schema, release 1.3.3, whatever ``ver``
   says (later releases relaxed earlier patterns). ``format`` is not asserted, and
   ``pattern`` follows ECMA-262 as JSON Schema requires (``$`` is the end of the text,
   ``\\d`` is ASCII, ``.`` stops at line terminators), not Python's ``re`` dialect;
3. ``ver`` is ``1.x.y``; exactly one of ``v``/``t``/``r``, holding exactly one entry.

Value-set membership is business rules, not schema.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import cache
from importlib import resources
from typing import Any

from edge.credentials.cbor_strict import Tag
from edge.credentials.ck1 import format_millis
from edge.credentials.schema_check import UnsupportedSchema, compile_schema, ecma_regex
from edge.credentials.trust import TrustEntry

__all__ = ["EKU_OIDS", "check_cwt", "check_schema", "dcc_schema", "key_usage", "normalise", "time_ms"]

log = logging.getLogger(__name__)

CLAIM_ISS, CLAIM_SUB, CLAIM_EXP, CLAIM_NBF, CLAIM_IAT = 1, 2, 4, 5, 6
CLAIM_HCERT = -260
TIME_LIMIT_S = 253_402_300_800
_MIN_TAG1_S = -62_135_596_800  # 0001-01-01, the first instant the JSON time format can write
_VER_RE = re.compile(r"1\.[0-9]+\.[0-9]+", re.ASCII)
GROUPS = ("v", "t", "r")
# §5.3: EKU OIDs per DCC type, with the mistyped arc some issuers used.
EKU_OIDS = {
    group: (f"1.3.6.1.4.1.1847.2021.1.{n}", f"1.3.6.1.4.1.0.1847.2021.1.{n}")
    for group, n in (("t", 1), ("v", 2), ("r", 3))
}
_ALL_DCC_EKU = frozenset(oid for pair in EKU_OIDS.values() for oid in pair)


def _time_ok(v: Any) -> bool:
    if type(v) is int:
        return 0 <= v < TIME_LIMIT_S
    if type(v) is float:
        return math.isfinite(v) and 0 <= v < TIME_LIMIT_S
    return False


def check_cwt(claims: Any) -> bool:
    """Check 5 for HC1."""
    if not isinstance(claims, dict):
        return False
    for key in (CLAIM_ISS, CLAIM_SUB):
        if key in claims and not isinstance(claims[key], str):
            return False
    for key in (CLAIM_EXP, CLAIM_NBF, CLAIM_IAT):
        if key in claims and not _time_ok(claims[key]):
            return False
    hcert = claims.get(CLAIM_HCERT)
    return isinstance(hcert, dict) and isinstance(hcert.get(1), dict)


def time_ms(v: int | float) -> int:
    """Epoch milliseconds of a CWT time, floored (§3.5: an HC1 float time is floored)."""
    if type(v) is int:
        return v * 1000
    return math.floor(Fraction(v) * 1000)


class _NotJson(ValueError):
    pass


def to_json(value: Any) -> Any:
    """Step 1 of §5.2. Raises ``ValueError`` for anything JSON cannot hold as-is."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if t is float:
        if not math.isfinite(value):
            raise _NotJson("NaN or infinity")
        return value
    if t is list:
        return [to_json(v) for v in value]
    if t is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NotJson("non-text map key")
            out[k] = to_json(v)
        return out
    if t is Tag:
        if value.tag in (0, 1004) and type(value.value) is str:
            return value.value
        if value.tag == 1 and _tag1_ok(value.value):
            return format_millis(time_ms(value.value))
        raise _NotJson(f"tag {value.tag}")
    raise _NotJson(f"{t.__name__} is not JSON")


def _tag1_ok(v: Any) -> bool:
    if type(v) is int:
        return _MIN_TAG1_S <= v < TIME_LIMIT_S
    return type(v) is float and math.isfinite(v) and _MIN_TAG1_S <= v < TIME_LIMIT_S


# --- the JSON schema ----------------------------------------------------------------------


@cache
def dcc_schema() -> dict[str, Any]:
    """The DCC combined schema release 1.3.3 shipped in this package (see ``schema/NOTICE``)."""
    text = resources.files("edge.credentials").joinpath("schema/DCC.combined-schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def reference_validator() -> Any:
    """The DCC schema as a ``jsonschema`` validator with ECMA-262 patterns (the reference)."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    patterns: dict[str, re.Pattern[str]] = {}

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
        if not validator.is_type(instance, "string"):
            return
        compiled = patterns.get(patrn)
        if compiled is None:
            compiled = patterns[patrn] = ecma_regex(patrn)
        if not compiled.search(instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    cls = validators.extend(Draft202012Validator, {"pattern": pattern})
    schema = dcc_schema()
    cls.check_schema(schema)
    return cls(schema)  # no format_checker: "format" is not asserted (§5.2)


@cache
def schema_predicate() -> Callable[[Any], bool]:
    """True when a DCC payload (as JSON) validates: compiled once; ``jsonschema`` if the
    schema ever uses a keyword the compiled checker does not implement."""
    try:
        return compile_schema(dcc_schema())
    except UnsupportedSchema as exc:
        log.warning("DCC schema: compiled checker unavailable (%s); using jsonschema", exc)
        return reference_validator().is_valid  # type: ignore[no-any-return]


def check_schema(claims: dict[Any, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Check 8 for a payload that passed check 5: (the DCC as JSON, None) or (None, why)."""
    try:
        dcc = to_json(claims[CLAIM_HCERT][1])
    except _NotJson as exc:
        return None, f"payload is not JSON: {exc}"
    if not schema_predicate()(dcc):
        return None, "does not validate against the DCC schema 1.3.3"
    ver = dcc.get("ver")
    if not isinstance(ver, str) or not _VER_RE.fullmatch(ver):
        return None, "ver: must be 1.x.y"
    groups = [g for g in GROUPS if g in dcc]
    if len(groups) != 1 or not isinstance(dcc[groups[0]], list) or len(dcc[groups[0]]) != 1:
        return None, "exactly one of v, t, r with exactly one entry"
    return dcc, None


def dcc_type(dcc: dict[str, Any]) -> str:
    return next(g for g in GROUPS if g in dcc)


def key_usage(entry: TrustEntry | None, group: str) -> bool | None:
    """§5.3 ``key_usage``: may the signing entry sign this DCC type?

    No signer: None. A bare key, or a certificate whose EKU lists none of the DCC type
    OIDs: True. Otherwise True only when the type's OID (either arc) is listed.
    """
    if entry is None:
        return None
    if not entry.certificate or not entry.eku:
        return True
    listed = _ALL_DCC_EKU.intersection(entry.eku)
    if not listed:
        return True
    return any(oid in listed for oid in EKU_OIDS[group])


def revocation_hash_of_ci(ci: str) -> str:
    """§4.6: SHA-256 of the UTF-8 UCI, first 16 bytes, hex (the EU "UCI" hash type)."""
    return hashlib.sha256(ci.encode("utf-8")).digest()[:16].hex()


def normalise(
    claims: dict[Any, Any], dcc: dict[str, Any], *, kid: str | None, alg: str | None, signer: TrustEntry | None
) -> dict[str, Any]:
    """The claims of §5.3."""
    out: dict[str, Any] = {}
    if CLAIM_ISS in claims:
        out["iss"] = claims[CLAIM_ISS]
    if CLAIM_IAT in claims:
        out["iat"] = format_millis(time_ms(claims[CLAIM_IAT]))
    if CLAIM_EXP in claims:
        out["exp"] = format_millis(time_ms(claims[CLAIM_EXP]))
    group = dcc_type(dcc)
    entry = dcc[group][0]
    out["kid"] = kid
    out["alg"] = alg
    ci = entry.get("ci") if isinstance(entry, dict) else None
    out["revocation_hash"] = revocation_hash_of_ci(ci) if isinstance(ci, str) else None
    out["key_usage"] = key_usage(signer, group)
    out["dcc_type"] = group
    out["dcc"] = dcc
    return out
