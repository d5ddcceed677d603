"""Trust documents (credentials.md §4): loading, warnings, kid rules, kinds, certificates
and the hand DER walk of §4.4 for certificates a strict parser refuses."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from edge.credentials import Trust, TrustError, load_trust, mint, verify
from edge.credentials.trust import walk_certificate
from sync.keys import KeyFile, generate_key
from tests.credentials.conftest import AT, b64, make_dsc, spki

# --- a tiny DER writer, to build certificates that strict parsers refuse ---------------------


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        head = bytes([tag, n])
    elif n < 0x100:
        head = bytes([tag, 0x81, n])
    else:
        head = bytes([tag, 0x82]) + n.to_bytes(2, "big")
    return head + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([arcs[0] * 40 + arcs[1]])
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def quirky_certificate(private: Any, *, serial: bytes = b"\x02\x01\xff", explicit_default: bool = True,
                       eku: tuple[str, ...] = ("1.3.6.1.4.1.1847.2021.1.1",), spki_der: bytes | None = None) -> bytes:
    """A DSC with a negative serial and a DER-encoded default (cA FALSE) in BasicConstraints,
    as some real DCC signing certificates have."""
    name = seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"quirky DSC"))))
    alg = seq(oid("1.2.840.10045.4.3.2"))
    exts = []
    if explicit_default:
        exts.append(seq(oid("2.5.29.19"), tlv(0x04, seq(tlv(0x01, b"\x00")))))
    if eku:
        exts.append(seq(oid("2.5.29.37"), tlv(0x04, seq(*(oid(o) for o in eku)))))
    tbs = seq(
        tlv(0xA0, b"\x02\x01\x02"), serial, alg, name,
        seq(tlv(0x17, b"220101000000Z"), tlv(0x18, b"20231231235959Z")), name,
        spki_der or spki(private.public_key()),
        tlv(0xA3, seq(*exts)),
    )
    signature = private.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return seq(tbs, alg, tlv(0x03, b"\x00" + signature))


# --- loading ------------------------------------------------------------------------------------


def test_load_from_dict_file_and_trust(tmp_path: Path, vector_trust: dict[str, Any]) -> None:
    trust = load_trust(vector_trust)
    assert len(trust) == 4 and trust.warnings == ()
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(vector_trust), encoding="utf-8")
    assert [e.kid for e in load_trust(path).entries] == [e.kid for e in trust.entries]
    assert [e.kid for e in load_trust(str(path)).entries] == [e.kid for e in trust.entries]
    assert load_trust(trust) is trust
    assert trust.kids() == ["0abe3115ee5f59b0", "e0d27ced6014ce3f", "0e01805c1db17797", "f7178dfb4750d6e4"]


@pytest.mark.parametrize("doc", [[], "keys", 3, None, {}, {"keys": {}}, {"keys": "x"}, {"entries": []}])
def test_not_a_trust_document(doc: Any) -> None:
    with pytest.raises(TrustError):
        load_trust(doc)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="cannot read"):
        load_trust(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{\"keys\": [")
    with pytest.raises(TrustError, match="not a JSON"):
        load_trust(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TrustError):
        load_trust(binary)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TrustError):
        load_trust(deep)


def test_empty_trust() -> None:
    empty = Trust.empty()
    assert len(empty) == 0 and empty.lookup(b"\x00" * 8) == () and empty.warnings == ()
    assert load_trust({"keys": []}).entries == ()


def _ed_key(label: str = "k", seed: bytes | None = None) -> KeyFile:
    return generate_key("issuer", label, "ed25519", seed=seed)


def test_bad_entries_are_skipped_with_a_warning(vector_trust: dict[str, Any]) -> None:
    good = vector_trust["keys"][0]
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    k1 = ec.generate_private_key(ec.SECP256K1())
    doc = {"keys": [
        "not an object",
        {"public_key": good["public_key"], "certificate": vector_trust["keys"][3]["certificate"]},
        {"kinds": ["health"]},
        {"public_key": "not base64!"},
        {"public_key": "QUJD"},  # base64 of "ABC": not a key
        {"public_key": good["public_key"].rstrip("=")},  # padding missing
        {"public_key": b64(spki(small_rsa.public_key()))},
        {"public_key": b64(spki(k1.public_key()))},
        {"public_key": b64(spki(ed448.Ed448PrivateKey.generate().public_key()))},
        {"public_key": good["public_key"], "kid": ""},
        {"public_key": good["public_key"], "kid": 7},
        {"public_key": good["public_key"], "kinds": "health"},
        {"certificate": b64(b"\x30\x03\x02\x01\x01")},
        good,
    ]}
    trust = load_trust(doc)
    assert [e.index for e in trust.entries] == [13]
    assert len(trust.warnings) == 13
    assert all(w.startswith("trust entry ") and "skipped" in w for w in trust.warnings)
    assert "1024 bits" in trust.warnings[6] and "secp256k1" in trust.warnings[7]


def test_unknown_kinds_are_noted_and_dropped(vector_trust: dict[str, Any]) -> None:
    entry = dict(vector_trust["keys"][0], kinds=["health", "helth"])
    trust = load_trust({"keys": [entry]})
    assert trust.entries[0].kinds == frozenset({"health"})
    assert "helth" in trust.warnings[0]


def test_other_members_are_ignored(vector_trust: dict[str, Any]) -> None:
    entry = dict(vector_trust["keys"][0], country="CN", note="county platform")
    doc = {"keys": [entry], "version": 3, "comment": "x"}
    assert load_trust(doc).warnings == ()


# --- kids -----------------------------------------------------------------------------------


def test_default_kid_of_a_key_is_our_keyid() -> None:
    key = _ed_key()
    trust = load_trust({"keys": [{"public_key": b64(key.spki_der())}]})
    assert trust.entries[0].kid.hex() == key.keyid
    es = generate_key("issuer", "es", "es256")
    trust = load_trust({"keys": [{"public_key": b64(es.spki_der())}]})
    assert trust.entries[0].kid.hex() == es.keyid


def test_default_kid_of_a_certificate_is_its_der_hash() -> None:
    dsc = make_dsc()
    entry = load_trust({"keys": [dsc.trust_entry()]}).entries[0]
    assert entry.kid == hashlib.sha256(dsc.der).digest()[:8]
    assert entry.certificate and entry.not_before_s == 1640995200 and entry.not_after_s == 1704067199
    assert entry.eku is None


def test_explicit_kid_is_used_as_given() -> None:
    key = _ed_key()
    trust = load_trust({"keys": [{"public_key": b64(key.spki_der()), "kid": b64(b"\x01\x02\x03")}]})
    assert trust.entries[0].kid == b"\x01\x02\x03"
    assert trust.lookup(bytes.fromhex(key.keyid)) == ()


def test_shared_kid_entries_are_tried_in_file_order() -> None:
    """§4.2: several entries may share a kid; the signature check tries each in file order."""
    real, rogue = _ed_key("real"), _ed_key("rogue")
    kid = b64(bytes.fromhex(real.keyid))
    doc = {"keys": [{"public_key": b64(rogue.spki_der()), "kid": kid}, {"public_key": b64(real.spki_der())}]}
    trust = load_trust(doc)
    assert [e.index for e in trust.lookup(bytes.fromhex(real.keyid))] == [0, 1]
    text = mint("venue", {"iss": "F1", "venue_id": "V1", "venue_name": "South gate", "zone": "A", "firm": "F1"},
                real, now_ms=1652140800000)
    result = verify(text, trust, datetime(2022, 5, 10, 1, tzinfo=UTC))
    assert result.ok
    only_rogue = load_trust({"keys": doc["keys"][:1]})
    assert verify(text, only_rogue, datetime(2022, 5, 10, 1, tzinfo=UTC)).checks["signature"] is False


# --- certificates ---------------------------------------------------------------------------


def test_certificate_with_eku_is_read() -> None:
    dsc = make_dsc(eku=["1.3.6.1.4.1.1847.2021.1.2", "1.3.6.1.4.1.0.1847.2021.1.3"])
    entry = load_trust({"keys": [dsc.trust_entry()]}).entries[0]
    assert entry.eku == ("1.3.6.1.4.1.1847.2021.1.2", "1.3.6.1.4.1.0.1847.2021.1.3")


@pytest.mark.parametrize(("serial", "explicit_default"), [
    (b"\x02\x01\xff", False),  # negative serial only
    (b"\x02\x01\x05", True),  # DER-encoded default in BasicConstraints only
    (b"\x02\x01\xff", True),
])
def test_certificates_refused_by_the_strict_parser_load_by_the_der_walk(serial: bytes, explicit_default: bool) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    der = quirky_certificate(private, serial=serial, explicit_default=explicit_default)
    trust = load_trust({"keys": [{"certificate": b64(der)}]})
    assert len(trust) == 1
    assert "DER walk" in trust.warnings[0]
    entry = trust.entries[0]
    assert entry.kid == hashlib.sha256(der).digest()[:8]
    assert (entry.not_before_s, entry.not_after_s) == (1640995200, 1704067199)
    assert entry.eku == ("1.3.6.1.4.1.1847.2021.1.1",)
    assert entry.key.public_numbers() == private.public_key().public_numbers()


def test_der_walk_agrees_with_cryptography_on_a_normal_certificate() -> None:
    dsc = make_dsc(eku=["1.3.6.1.4.1.1847.2021.1.1"])
    spki_der, nb, na, eku = walk_certificate(dsc.der)
    assert spki_der == spki(dsc.private.public_key())
    assert (nb, na, eku) == (1640995200, 1704067199, ("1.3.6.1.4.1.1847.2021.1.1",))


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x80\x00\x00", b"\x04\x00", b"\x30\x00",
                                 b"\x30\x05\x30\x03\x02\x01\x01", b"\x30\x84\xff\xff\xff\xff"])
def test_der_walk_rejects_garbage(der: bytes) -> None:
    with pytest.raises(ValueError):
        walk_certificate(der)
    trust = load_trust({"keys": [{"certificate": b64(der)}]})
    assert len(trust) == 0 and "skipped" in trust.warnings[0]


def test_a_p384_rsa_and_ed25519_mix_loads() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    p521 = ec.generate_private_key(ec.SECP521R1())
    big_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    doc = {"keys": [make_dsc(p384).trust_entry(), make_dsc(big_rsa).trust_entry(),
                    {"public_key": b64(spki(p521.public_key()))}, {"public_key": b64(_ed_key().spki_der())}]}
    trust = load_trust(doc)
    assert [(e.key_type, e.curve_bytes) for e in trust.entries] == [("ec", 48), ("rsa", 0), ("ec", 66), ("ed25519", 0)]


def test_verify_never_raises_on_an_unusable_trust_dict() -> None:
    result = verify("CK1:00", {"keys": "nonsense"}, AT)  # type: ignore[arg-type]
    assert result.ok is False


# --- explicit EC parameters -----------------------------------------------------------------------


def _explicit_spki(private: Any, openssl_name: str) -> bytes:
    """SPKI of ``private``'s public key with the curve spelled out (as ``openssl -param_enc explicit``)."""
    import shutil
    import subprocess

    from cryptography.hazmat.primitives import serialization

    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found (it writes the explicit curve parameters)")
    params = subprocess.run(["openssl", "ecparam", "-name", openssl_name, "-param_enc", "explicit", "-outform", "DER"],
                            capture_output=True, check=True).stdout
    point = private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return seq(seq(oid("1.2.840.10045.2.1"), params), tlv(0x03, b"\x00" + point))


@pytest.mark.parametrize(("curve", "name", "size"), [
    (ec.SECP256R1(), "prime256v1", 32), (ec.SECP384R1(), "secp384r1", 48), (ec.SECP521R1(), "secp521r1", 66)])
def test_explicit_curve_parameters_are_recognised(curve: Any, name: str, size: int) -> None:
    from edge.credentials.trust import _explicit_ec_key, load_public_key

    private = ec.generate_private_key(curve)
    explicit = _explicit_spki(private, name)
    # cryptography 50 maps these to the named curve itself; older releases refuse them,
    # and then the package's own matcher does it. Both roads give the same key.
    assert load_public_key(explicit).public_numbers() == private.public_key().public_numbers()
    assert _explicit_ec_key(explicit).public_numbers() == private.public_key().public_numbers()
    assert _explicit_ec_key(spki(private.public_key())) is None  # a named curve is not its business
    entry = load_trust({"keys": [{"public_key": b64(explicit)}]}).entries[0]
    assert (entry.key_type, entry.curve_bytes) == ("ec", size)
    assert entry.kid == hashlib.sha256(explicit).digest()[:8]  # the kid hashes the bytes as given


def test_explicit_parameters_in_a_certificate_verify_a_dcc() -> None:
    from tests.credentials.conftest import make_hc1

    private = ec.generate_private_key(ec.SECP256R1())
    der = quirky_certificate(private, serial=b"\x02\x01\x07", explicit_default=False,
                             spki_der=_explicit_spki(private, "prime256v1"))
    trust = load_trust({"keys": [{"certificate": b64(der)}]})
    assert len(trust) == 1
    kid = hashlib.sha256(der).digest()[:8]
    assert verify(make_hc1(private, kid), trust, AT).ok


def test_explicit_parameters_of_another_curve_are_refused() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    explicit = bytearray(_explicit_spki(private, "prime256v1"))
    b_at = bytes(explicit).find(bytes.fromhex("5ac635d8aa3a93e7"))
    explicit[b_at] ^= 1  # a different b: not P-256 any more
    from edge.credentials.trust import _explicit_ec_key

    assert _explicit_ec_key(bytes(explicit)) is None
    trust = load_trust({"keys": [{"public_key": b64(bytes(explicit))}]})
    assert len(trust) == 0 and "skipped" in trust.warnings[0]
