"""Issuer keys a gate trusts (credentials.md §4).

A trust document is ``{"keys": [entry, ...]}`` (the ``--trust`` file and the bundle's
``trust`` part, the same JSON). ``load_trust`` parses it once, when the bundle loads, and
indexes the entries by kid; ``verify`` then does one dict lookup per scan.

Rules, in the order they are applied to each entry (§4.1-4.4):

1. exactly one of ``certificate`` / ``public_key``, standard base64 with padding;
2. a certificate is parsed with ``cryptography``; when that refuses it (real DCC signing
   certificates carry DER quirks such as an encoded default in BasicConstraints), the DER
   is walked by hand for the SPKI, ``notBefore``/``notAfter`` and the EKU extension;
3. the key must be Ed25519, EC P-256/P-384/P-521 (named, or with those curves'
   parameters spelled out, as some real signing keys have) or RSA >= 2048 bits;
4. ``kid``: base64 as given, else SHA-256 over the certificate DER (DCC rule) or over the
   SPKI DER (our key-id rule, bundles.md §1.2), first 8 bytes;
5. ``kinds``: absent = any kind; names outside the vocabulary are dropped with a warning.

An entry that breaks a rule is skipped and reported in ``Trust.warnings``; it never makes
``load_trust`` or ``verify`` fail. Only a document that is not a trust document at all
raises ``TrustError``. Entries keep file order: several may share a kid (§4.2) and the
signature check tries them in that order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning

from edge.credentials.errors import TrustError

__all__ = ["KINDS", "Trust", "TrustEntry", "load_public_key", "load_trust", "walk_certificate"]

log = logging.getLogger(__name__)

KINDS = ("health", "pass", "venue", "material", "dcc")
OID_EKU = "2.5.29.37"
_CURVE_BYTES = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}
MAX_TRUST_BYTES = 16 * 1024 * 1024  # a real EU DCC list is a few MiB; bundles cap the part at 1 MiB


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One usable trust entry.

    ``not_before_s``/``not_after_s``/``eku`` are set for certificates only; ``eku`` is
    None when the certificate has no EKU extension (then it signs every DCC type).
    """

    index: int
    kid: bytes
    key: Any
    key_type: str  # "ed25519" | "ec" | "rsa"
    curve_bytes: int  # EC: 32, 48 or 66; else 0
    kinds: frozenset[str] | None
    certificate: bool = False
    not_before_s: int | None = None
    not_after_s: int | None = None
    eku: tuple[str, ...] | None = None

    def allows(self, kind: str | None) -> bool:
        """§4.3: a restricted entry matches only its kinds.

        ``kind`` None means the kind cannot be known (``cwt`` false): the restriction is
        skipped. An unknown CK1 kind is passed as ``""``, which no restricted entry lists.
        """
        if self.kinds is None or kind is None:
            return True
        return kind in self.kinds


class Trust:
    """Trust entries indexed by kid, with the warnings of the load."""

    __slots__ = ("_by_kid", "entries", "warnings")

    def __init__(self, entries: tuple[TrustEntry, ...] = (), warnings: tuple[str, ...] = ()) -> None:
        self.entries = tuple(entries)
        self.warnings = tuple(warnings)
        by_kid: dict[bytes, list[TrustEntry]] = {}
        for entry in self.entries:
            by_kid.setdefault(entry.kid, []).append(entry)
        self._by_kid: dict[bytes, tuple[TrustEntry, ...]] = {k: tuple(v) for k, v in by_kid.items()}

    @classmethod
    def empty(cls) -> Trust:
        """No keys: every ``kid`` check is false (the CLI without ``--trust`` and no bundle)."""
        return cls()

    def lookup(self, kid: bytes) -> tuple[TrustEntry, ...]:
        """Entries with exactly this kid, in file order."""
        return self._by_kid.get(kid, ())

    def kids(self) -> list[str]:
        """Distinct kids, lowercase hex, in file order (for status pages and logs)."""
        return list(dict.fromkeys(e.kid.hex() for e in self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Trust(entries={len(self.entries)}, warnings={len(self.warnings)})"


def load_trust(obj_or_path: Trust | Mapping[str, Any] | str | os.PathLike[str]) -> Trust:
    """Parse a trust document (a parsed JSON object, or the path of a JSON file).

    Returns:
        The entries that could be used; ``.warnings`` names every skipped entry and why.

    Raises:
        TrustError: the file cannot be read or is not JSON, the document is not an object,
            or ``keys`` is missing or not a list.
    """
    if isinstance(obj_or_path, Trust):
        return obj_or_path
    if isinstance(obj_or_path, (str, os.PathLike)):
        doc = _read_file(Path(obj_or_path))
    else:
        doc = obj_or_path
    if not isinstance(doc, Mapping):
        raise TrustError("a trust document is a JSON object with a 'keys' list (credentials.md §4.1)")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise TrustError("the trust document has no 'keys' list (credentials.md §4.1)")
    entries: list[TrustEntry] = []
    warnings: list[str] = []
    for index, raw in enumerate(keys):
        try:
            entry, notes = _parse_entry(index, raw)
        except _Skip as exc:
            warnings.append(f"trust entry {index}: skipped: {exc}")
            continue
        warnings.extend(f"trust entry {index}: {n}" for n in notes)
        entries.append(entry)
    for w in warnings:
        log.warning("trust %s", w)
    log.info("trust loaded entries=%d skipped_or_noted=%d", len(entries), len(warnings))
    return Trust(tuple(entries), tuple(warnings))


def _read_file(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TRUST_BYTES + 1)
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the trust file: {exc.strerror or exc}") from exc
    if len(data) > MAX_TRUST_BYTES:
        raise TrustError(f"{path}: trust file larger than {MAX_TRUST_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TrustError(f"{path}: not a JSON trust file: {exc}") from exc


class _Skip(Exception):  # internal control flow: this entry is skipped
    pass


def _b64(value: Any, member: str) -> bytes:
    if not isinstance(value, str):
        raise _Skip(f"'{member}' is not a base64 string")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _Skip(f"'{member}' is not standard base64 with padding") from None


def _parse_entry(index: int, raw: Any) -> tuple[TrustEntry, list[str]]:
    if not isinstance(raw, Mapping):
        raise _Skip("not a JSON object")
    notes: list[str] = []
    has_cert, has_key = "certificate" in raw, "public_key" in raw
    if has_cert == has_key:
        raise _Skip("needs exactly one of 'certificate' and 'public_key'")
    not_before = not_after = None
    eku: tuple[str, ...] | None = None
    if has_cert:
        der = _b64(raw["certificate"], "certificate")
        key, not_before, not_after, eku, note = _parse_certificate(der)
        if note:
            notes.append(note)
    else:
        der = _b64(raw["public_key"], "public_key")
        try:
            key = load_public_key(der)
        except ValueError as exc:
            raise _Skip(f"public_key is not a DER SubjectPublicKeyInfo: {exc}") from None
    key_type, curve_bytes = _classify_key(key)

    if "kid" in raw:
        kid = _b64(raw["kid"], "kid")
        if not kid:
            raise _Skip("'kid' is empty")
    else:
        kid = hashlib.sha256(der).digest()[:8]

    kinds: frozenset[str] | None = None
    if "kinds" in raw:
        listed = raw["kinds"]
        if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
            raise _Skip("'kinds' is not a list of names")
        unknown = [k for k in listed if k not in KINDS]
        if unknown:
            notes.append(f"unknown kinds ignored: {', '.join(sorted(set(unknown)))}")
        kinds = frozenset(k for k in listed if k in KINDS)
    return (
        TrustEntry(index, kid, key, key_type, curve_bytes, kinds, has_cert, not_before, not_after, eku),
        notes,
    )


def _classify_key(key: Any) -> tuple[str, int]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", 0
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = _CURVE_BYTES.get(key.curve.name)
        if size is None:
            raise _Skip(f"EC curve {key.curve.name} is not P-256, P-384 or P-521")
        return "ec", size
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise _Skip(f"RSA key of {key.key_size} bits; at least 2048 are required")
        return "rsa", 0
    raise _Skip(f"unsupported key type {type(key).__name__}")


# Named curves by their explicit parameters (SEC 2 / FIPS 186): prime p, b, order n (a = p - 3).
_EXPLICIT_CURVES: tuple[tuple[ec.EllipticCurve, int, int, int], ...] = (
    (ec.SECP256R1(),
     0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
     0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
     0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    (ec.SECP384R1(),
     2**384 - 2**128 - 2**96 + 2**32 - 1,
     0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
     0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973),
    (ec.SECP521R1(),
     2**521 - 1,
     0x51953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00,
     0x1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409),
)
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_PRIME_FIELD = "1.2.840.10045.1.1"


def load_public_key(spki_der: bytes) -> Any:
    """A public key from DER SubjectPublicKeyInfo, also when an EC key spells its curve out.

    Some real DCC signing keys carry explicit EC parameters instead of a named-curve OID,
    which ``cryptography`` refuses; when the parameters are exactly those of P-256, P-384
    or P-521, the key is that curve's.

    Raises:
        ValueError: not a key ``cryptography`` loads, nor an EC key on one of those curves.
    """
    try:
        return serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        key = _explicit_ec_key(spki_der)
        if key is None:
            raise ValueError(str(exc)) from None
        return key


def _explicit_ec_key(der: bytes) -> Any:
    try:
        _tag, cs, ce = _tlv(der, 0, len(der))
        alg, bits = _children(der, cs, ce)
        alg_parts = _children(der, alg[2], alg[3])
        if len(alg_parts) != 2 or _oid(der[alg_parts[0][2] : alg_parts[0][3]]) != OID_EC_PUBLIC_KEY:
            return None
        if alg_parts[1][0] != 0x30 or bits[0] != 0x03:
            return None
        params = _children(der, alg_parts[1][2], alg_parts[1][3])
        field = _children(der, params[1][2], params[1][3])
        if _oid(der[field[0][2] : field[0][3]]) != OID_PRIME_FIELD:
            return None
        p = int.from_bytes(der[field[1][2] : field[1][3]], "big")
        curve_parts = _children(der, params[2][2], params[2][3])
        a = int.from_bytes(der[curve_parts[0][2] : curve_parts[0][3]], "big")
        b = int.from_bytes(der[curve_parts[1][2] : curve_parts[1][3]], "big")
        n = int.from_bytes(der[params[4][2] : params[4][3]], "big")
        point = der[bits[2] + 1 : bits[3]]  # skip the unused-bits byte
    except (_DerError, IndexError, ValueError):
        return None
    for curve, cp, cb, cn in _EXPLICIT_CURVES:
        if (p, a, b, n) == (cp, cp - 3, cb, cn):
            try:
                return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            except ValueError:
                return None
    return None


def _epoch(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _parse_certificate(der: bytes) -> tuple[Any, int, int, tuple[str, ...] | None, str | None]:
    """Key, notBefore, notAfter (epoch s), EKU OIDs (None: no extension), and a note."""
    try:
        with warnings.catch_warnings():
            # A negative serial number is only a deprecation warning today; make it a refusal
            # now so such certificates always take the same road (the DER walk).
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
        not_before = _epoch(cert.not_valid_before_utc)
        not_after = _epoch(cert.not_valid_after_utc)
        try:
            ext = cert.extensions.get_extension_for_oid(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
            eku: tuple[str, ...] | None = tuple(oid.dotted_string for oid in ext.value)  # type: ignore[attr-defined]
        except x509.ExtensionNotFound:
            eku = None
        return key, not_before, not_after, eku, None
    except Exception as exc:  # any parser refusal falls back to the DER walk (§4.4)
        reason = f"{type(exc).__name__}: {exc}"
    try:
        spki, not_before, not_after, eku = walk_certificate(der)
        walked: Any = load_public_key(spki)
    except (_DerError, ValueError, TypeError) as exc:
        raise _Skip(f"certificate unreadable ({reason}; DER walk: {exc})") from None
    return walked, not_before, not_after, eku, f"certificate read by the DER walk ({reason})"


# --- the hand DER walk of §4.4 ------------------------------------------------------------


class _DerError(ValueError):
    pass


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    if pos + 2 > end:
        raise _DerError("truncated element")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _DerError("high tag numbers do not occur in a certificate")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _DerError("bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _DerError("element runs past its parent")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, content end) of each element in [start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = _tlv(buf, pos, end)
        out.append((tag, pos, cs, ce))
        pos = ce
    return out


def _oid(raw: bytes) -> str:
    if not raw:
        raise _DerError("empty OID")
    arcs: list[int] = []
    value = 0
    for b in raw:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    if raw[-1] & 0x80:
        raise _DerError("OID ends inside an arc")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def _time(tag: int, raw: bytes) -> int:
    text = raw.decode("ascii", "strict")
    if tag == 0x17:  # UTCTime: YYMMDDHHMM[SS](Z|+hhmm|-hhmm)
        yy = int(text[:2])
        text = ("19" if yy >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime
        raise _DerError("validity time is neither UTCTime nor GeneralizedTime")
    body, zone = text, "Z"
    for sign in ("Z", "+", "-"):
        at = text.find(sign, 10)
        if at != -1:
            body, zone = text[:at], text[at:]
            break
    body = body.split(".")[0].split(",")[0]
    fmt = {12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(body))
    if fmt is None:
        raise _DerError(f"bad time {text!r}")
    dt = datetime.strptime(body, fmt).replace(tzinfo=UTC)
    seconds = int(dt.timestamp())
    if zone != "Z":
        offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60
        seconds += -offset if zone[0] == "+" else offset
    return seconds


def walk_certificate(der: bytes) -> tuple[bytes, int, int, tuple[str, ...] | None]:
    """SPKI DER, notBefore, notAfter (epoch s) and EKU OIDs of a certificate, by hand (§4.4).

    Certificate -> tbsCertificate -> [0] version?, serial, signature, issuer, validity,
    subject, subjectPublicKeyInfo, [1]?, [2]?, [3] extensions?.

    Raises:
        ValueError: the structure is not that of an X.509 certificate.
    """
    try:
        tag, cs, ce = _tlv(der, 0, len(der))
        if tag != 0x30:
            raise _DerError("not a SEQUENCE")
        tbs_tag, tcs, tce = _tlv(der, cs, ce)
        if tbs_tag != 0x30:
            raise _DerError("tbsCertificate is not a SEQUENCE")
        items = _children(der, tcs, tce)
        if items and items[0][0] == 0xA0:
            items = items[1:]
        if len(items) < 6:
            raise _DerError("tbsCertificate too short")
        serial, signature, issuer, validity, subject, spki = items[:6]
        if serial[0] != 0x02 or any(x[0] != 0x30 for x in (signature, issuer, validity, subject, spki)):
            raise _DerError("unexpected element in tbsCertificate")
        times = _children(der, validity[2], validity[3])
        if len(times) != 2:
            raise _DerError("validity needs two times")
        not_before = _time(times[0][0], der[times[0][2] : times[0][3]])
        not_after = _time(times[1][0], der[times[1][2] : times[1][3]])
        spki_der = der[spki[1] : spki[3]]
        eku: tuple[str, ...] | None = None
        for tag_x, _s, xcs, xce in items[6:]:
            if tag_x != 0xA3:
                continue
            seq = _children(der, xcs, xce)
            if len(seq) != 1 or seq[0][0] != 0x30:
                raise _DerError("extensions are not a SEQUENCE")
            for ext_tag, _es, ecs, ece in _children(der, seq[0][2], seq[0][3]):
                if ext_tag != 0x30:
                    raise _DerError("extension is not a SEQUENCE")
                parts = _children(der, ecs, ece)
                if not parts or parts[0][0] != 0x06 or parts[-1][0] != 0x04:
                    raise _DerError("malformed extension")
                if _oid(der[parts[0][2] : parts[0][3]]) != OID_EKU:
                    continue
                inner = _children(der, parts[-1][2], parts[-1][3])
                if len(inner) != 1 or inner[0][0] != 0x30:
                    raise _DerError("EKU is not a SEQUENCE")
                eku = tuple(
                    _oid(der[ocs:oce]) for otag, _o, ocs, oce in _children(der, inner[0][2], inner[0][3])
                    if otag == 0x06
                )
        return spki_der, not_before, not_after, eku
    except (_DerError, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise _DerError(str(exc) or type(exc).__name__) from None
