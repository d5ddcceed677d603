"""Helpers for the credentials tests: the published TEST keys of credentials.md §8, DCC
signing certificates made on the fly, and an HC1 encoder that can break every rule."""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from edge.credentials import base45
from edge.credentials.cose import sig_structure
from sync.keys import KeyFile, generate_key
from tests.conftest import load_vector

AT = datetime(2022, 5, 10, 8, 0, tzinfo=UTC)


def vectors() -> list[dict[str, Any]]:
    return load_vector("credentials.json")  # type: ignore[no-any-return]


def vector(name: str) -> dict[str, Any]:
    return next(c for c in vectors() if c["name"] == name)


def key_of_signer(signer: dict[str, Any]) -> KeyFile:
    """The published TEST key of a vector's signer, as an issuer key file."""
    if signer["alg"] == "EdDSA":
        return generate_key("issuer", signer["key"][:64], "ed25519", seed=bytes.fromhex(signer["ed25519_seed_hex"]))
    return generate_key("issuer", signer["key"][:64], "es256", seed=bytes.fromhex(signer["p256_private_scalar_hex"]))


@pytest.fixture
def county_key() -> KeyFile:
    return key_of_signer(vector("health_green")["signer"])


@pytest.fixture
def province_key() -> KeyFile:
    return key_of_signer(vector("pass_valid")["signer"])


@pytest.fixture
def vector_trust() -> dict[str, Any]:
    return vector("health_green")["trust"]  # type: ignore[no-any-return]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- DCC signing certificates -----------------------------------------------------------


@dataclass
class Dsc:
    private: Any
    der: bytes

    @property
    def kid(self) -> bytes:
        return hashlib.sha256(self.der).digest()[:8]

    def trust_entry(self, **extra: Any) -> dict[str, Any]:
        return {"certificate": b64(self.der), **extra}


def make_dsc(
    private: Any | None = None,
    *,
    not_before: datetime = datetime(2022, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC),
    eku: list[str] | None = None,
) -> Dsc:
    """A self-signed DSC (the hcert spec allows CSCA = DSC)."""
    private = private or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "checkpoint test DSC")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
    )
    if eku is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in eku]), critical=False
        )
    cert = builder.sign(private, hashes.SHA256())
    return Dsc(private, cert.public_bytes(serialization.Encoding.DER))


# --- an HC1 encoder that can break every rule -----------------------------------------------


def dcc_test_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ver": "1.3.0",
        "nam": {"fn": "Test", "fnt": "TEST", "gn": "Anna Maria", "gnt": "ANNA<MARIA"},
        "dob": "1990-01-31",
        "t": [{"tg": "840539006", "tt": "LP6464-4", "nm": "TEST PCR kit", "sc": "2022-05-08T09:30:00Z",
               "tr": "260415000", "tc": "TEST testing centre", "co": "XA", "is": "checkpoint TEST issuer",
               "ci": "URN:UVCI:01:XA:TEST0000000000000001#X"}],
    }
    payload.update(overrides)
    return payload


def dcc_vaccination_payload() -> dict[str, Any]:
    return {
        "ver": "1.3.0", "nam": {"fnt": "MUSTERMANN", "gnt": "ERIKA"}, "dob": "1964-08",
        "v": [{"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528", "ma": "ORG-100030215",
               "dn": 2, "sd": 2, "dt": "2021-05-29", "co": "DE", "is": "Robert Koch-Institut",
               "ci": "URN:UVCI:01DE/IZ12345A/5CWLU12RNOB9RXSEOP6FG8#W"}],
    }


def dcc_recovery_payload() -> dict[str, Any]:
    return {
        "ver": "1.3.0", "nam": {"fn": "Musterfrau", "gnt": "ERIKA"}, "dob": "",
        "r": [{"tg": "840539006", "fr": "2022-03-01", "co": "DE", "is": "Robert Koch-Institut",
               "df": "2022-03-29", "du": "2022-08-29", "ci": "URN:UVCI:01DE/5CWLU12RNOB9RXSEOP6FG8#R"}],
    }


def sign_raw(private: Any, message: bytes, alg: int) -> bytes:
    """Sign as the key's type does (the ``alg`` label may lie: tests of mismatches)."""
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                            hashes.SHA256())
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(message)
    der = private.sign(message, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    size = (private.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def make_hc1(
    private: Any,
    kid: bytes | None,
    payload: Any = None,
    *,
    alg: int = -7,
    iat: Any = 1652004000,
    exp: Any = 1652263200,
    iss: Any = "XA",
    kid_unprotected: bool = False,
    alg_unprotected: bool = False,
    envelope: str = "18",  # "18" | "untagged" | "61"
    claims: dict[Any, Any] | None = None,
    raw_payload: bytes | None = None,
    prefix: str = "HC1:",
) -> str:
    """An HC1 text; every member can be set to something a real issuer got wrong."""
    protected_map: dict[int, Any] = {}
    unprotected: dict[int, Any] = {}
    (unprotected if alg_unprotected else protected_map)[1] = alg
    if kid is not None:
        (unprotected if kid_unprotected else protected_map)[4] = kid
    protected = cbor2.dumps(protected_map) if protected_map else b""
    if raw_payload is None:
        cwt: dict[Any, Any] = {}
        if iss is not None:
            cwt[1] = iss
        if iat is not None:
            cwt[6] = iat
        if exp is not None:
            cwt[4] = exp
        cwt[-260] = {1: dcc_test_payload() if payload is None else payload}
        if claims:
            cwt.update(claims)
        raw_payload = cbor2.dumps(cwt)
    signature = sign_raw(private, sig_structure(protected, raw_payload), alg)
    body: Any = [protected, unprotected, raw_payload, signature]
    if envelope == "18":
        body = cbor2.CBORTag(18, body)
    elif envelope == "61":
        body = cbor2.CBORTag(61, cbor2.CBORTag(18, body))
    return prefix + base45.encode(zlib.compress(cbor2.dumps(body), 9))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ts(dt: datetime) -> int:
    return int(dt.timestamp())


ONE_DAY = timedelta(days=1)
