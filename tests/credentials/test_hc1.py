"""EU DCC (HC1) interop (credentials.md §5): envelopes, kid and alg placement, ES256 on
P-256/P-384/P-521, PS256, float times, certificate bounds, key usage, the 1.3.3 schema."""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.credentials import load_trust, verify
from edge.credentials.hc1 import reference_validator, schema_predicate
from tests.credentials.conftest import (
    AT,
    b64,
    dcc_recovery_payload,
    dcc_test_payload,
    dcc_vaccination_payload,
    make_dsc,
    make_hc1,
    spki,
)

ALL_TRUE = dict.fromkeys(
    ("prefix", "base45", "zlib", "cose", "cwt", "kid", "signature", "schema", "not_expired", "valid_from"), True)


@pytest.fixture(scope="module")
def dsc():  # type: ignore[no-untyped-def]
    return make_dsc()


@pytest.fixture(scope="module")
def trust(dsc):  # type: ignore[no-untyped-def]
    return load_trust({"keys": [dsc.trust_entry()]})


def failing(result: Any) -> dict[str, Any]:
    return {k: v for k, v in result.checks.items() if v is not True}


def test_valid_test_certificate(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid), trust, AT)
    assert result.ok and result.kind == "dcc" and result.status == "valid"
    claims = result.claims
    assert claims["kid"] == dsc.kid.hex() and claims["alg"] == "ES256" and claims["iss"] == "XA"
    assert claims["dcc_type"] == "t" and claims["key_usage"] is True
    assert claims["revocation_hash"] == hashlib.sha256(b"URN:UVCI:01:XA:TEST0000000000000001#X").digest()[:16].hex()
    assert claims["iat"] == "2022-05-08T10:00:00.000Z" and claims["exp"] == "2022-05-11T10:00:00.000Z"
    assert "id" not in claims


@pytest.mark.parametrize("payload", [dcc_vaccination_payload(), dcc_recovery_payload()])
def test_vaccination_and_recovery(dsc, trust, payload) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid, payload), trust, AT)
    assert result.ok, failing(result)
    assert result.claims["dcc_type"] == next(g for g in "vtr" if g in payload)


# --- envelopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("envelope", "ok"), [("18", True), ("untagged", True), ("61", True)])
def test_envelopes(dsc, trust, envelope, ok) -> None:  # type: ignore[no-untyped-def]
    assert verify(make_hc1(dsc.private, dsc.kid, envelope=envelope), trust, AT).ok is ok


def _rewrap(text: str, wrap: Any) -> str:
    import zlib

    from edge.credentials import base45

    inner = cbor2.loads(zlib.decompress(base45.decode(text[4:])))
    return "HC1:" + base45.encode(zlib.compress(cbor2.dumps(wrap(inner)), 9))


@pytest.mark.parametrize("wrap", [
    lambda x: cbor2.CBORTag(61, x.value),  # tag 61 around the untagged array
    lambda x: cbor2.CBORTag(18, cbor2.CBORTag(61, x.value)),  # tags in the wrong order
    lambda x: cbor2.CBORTag(98, x.value),  # COSE_Sign, not COSE_Sign1
    lambda x: cbor2.CBORTag(18, x.value[:3]),  # three elements
    lambda x: cbor2.CBORTag(18, [x.value[0], x.value[1], None, x.value[3]]),  # detached payload
    lambda x: cbor2.CBORTag(18, [x.value[0], [], x.value[2], x.value[3]]),  # unprotected not a map
    lambda x: cbor2.CBORTag(18, [cbor2.dumps([1]), {}, x.value[2], x.value[3]]),  # protected not a map
    lambda x: cbor2.CBORTag(18, [cbor2.dumps({1: -7, 2: [4]}), {}, x.value[2], x.value[3]]),  # crit
    lambda x: cbor2.CBORTag(18, [x.value[0] + b"\x00", {}, x.value[2], x.value[3]]),  # protected trailing
])
def test_bad_envelopes_are_cose_false(dsc, trust, wrap) -> None:  # type: ignore[no-untyped-def]
    result = verify(_rewrap(make_hc1(dsc.private, dsc.kid), wrap), trust, AT)
    assert result.checks["cose"] is False and result.checks["cwt"] is None
    assert result.error == "签名结构错误 / Bad signature envelope"


def test_hc2_is_not_hc1(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    assert verify(make_hc1(dsc.private, dsc.kid, prefix="HC2:"), trust, AT).checks["prefix"] is False
    assert verify(make_hc1(dsc.private, dsc.kid, prefix="hc1:"), trust, AT).checks["prefix"] is False


# --- kid and alg placement ----------------------------------------------------------------------


def test_kid_in_unprotected_header_is_used(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid, kid_unprotected=True, envelope="untagged"), trust, AT)
    assert result.ok and result.claims["kid"] == dsc.kid.hex()


def test_protected_kid_wins_even_when_wrong(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    text = make_hc1(dsc.private, b"\x00" * 8, claims=None)
    # put the right kid in the unprotected header as well
    result = verify(_rewrap(text, lambda x: cbor2.CBORTag(18, [x.value[0], {4: dsc.kid}, *x.value[2:]])), trust, AT)
    assert result.checks["kid"] is False and result.checks["signature"] is None
    assert result.claims["kid"] == "0000000000000000"


@pytest.mark.parametrize("kid", [b"", "text-kid"])
def test_kid_must_be_non_empty_bytes(dsc, trust, kid) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, kid), trust, AT)
    assert result.checks["kid"] is False


def test_any_kid_length_is_looked_up_exactly(dsc) -> None:  # type: ignore[no-untyped-def]
    long_kid = hashlib.sha256(dsc.der).digest()  # some issuers use the full hash
    trust = load_trust({"keys": [dsc.trust_entry(kid=b64(long_kid))]})
    assert verify(make_hc1(dsc.private, long_kid), trust, AT).ok
    assert verify(make_hc1(dsc.private, long_kid[:8]), trust, AT).checks["kid"] is False


def test_alg_in_unprotected_header_is_used(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    assert verify(make_hc1(dsc.private, dsc.kid, alg_unprotected=True), trust, AT).ok


def test_kinds_restriction_applies_to_dcc(dsc) -> None:  # type: ignore[no-untyped-def]
    text = make_hc1(dsc.private, dsc.kid)
    assert verify(text, load_trust({"keys": [dsc.trust_entry(kinds=["health"])]}), AT).checks["kid"] is False
    assert verify(text, load_trust({"keys": [dsc.trust_entry(kinds=["dcc"])]}), AT).ok


# --- algorithms and keys --------------------------------------------------------------------


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_es256_with_larger_curves(curve) -> None:  # type: ignore[no-untyped-def]
    dsc = make_dsc(ec.generate_private_key(curve))
    trust = load_trust({"keys": [dsc.trust_entry()]})
    assert verify(make_hc1(dsc.private, dsc.kid), trust, AT).ok


def test_ps256_with_rsa() -> None:
    dsc = make_dsc(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    trust = load_trust({"keys": [dsc.trust_entry()]})
    result = verify(make_hc1(dsc.private, dsc.kid, alg=-37), trust, AT)
    assert result.ok and result.claims["alg"] == "PS256"
    assert verify(make_hc1(dsc.private, dsc.kid, alg=-7), trust, AT).checks["signature"] is False


def test_ps256_salt_length_is_detected() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from edge.credentials.cose import sig_structure
    from edge.credentials.cose import verify_signature as verify_sig

    private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    entry = load_trust({"keys": [{"public_key": b64(spki(private.public_key()))}]}).entries[0]
    message = sig_structure(b"\xa1\x01\x38\x24", b"payload")
    for salt in (32, padding.PSS.MAX_LENGTH, 0):
        sig = private.sign(message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt),
                           hashes.SHA256())
        assert verify_sig(entry, -37, message, sig, hc1=True)
    assert not verify_sig(entry, -37, message, sig, hc1=False)  # PS256 is HC1 only


def test_eddsa_is_not_a_dcc_algorithm() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    trust = load_trust({"keys": [{"public_key": b64(spki(private.public_key()))}]})
    kid = trust.entries[0].kid
    assert verify(make_hc1(private, kid, alg=-8), trust, AT).checks["signature"] is False


@pytest.mark.parametrize("mangle", [lambda s: s[:-1], lambda s: s + b"\x00", lambda s: b"\x00" * 64,
                                    lambda s: b"\xff" * 64, lambda s: s[:32] + bytes([s[32] ^ 1]) + s[33:]])
def test_bad_es256_signatures(dsc, trust, mangle) -> None:  # type: ignore[no-untyped-def]
    text = make_hc1(dsc.private, dsc.kid)
    result = verify(_rewrap(text, lambda x: cbor2.CBORTag(18, [*x.value[:3], mangle(x.value[3])])), trust, AT)
    assert result.checks["signature"] is False and result.checks["schema"] is True
    assert result.claims is not None and result.claims["key_usage"] is None  # no signer


# --- times ----------------------------------------------------------------------------------


def test_float_times_are_exact_and_floored(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    text = make_hc1(dsc.private, dsc.kid, iat=1652004000.25, exp=1652263200.5)
    result = verify(text, trust, AT)
    assert result.ok
    assert result.claims["iat"] == "2022-05-08T10:00:00.250Z" and result.claims["exp"] == "2022-05-11T10:00:00.500Z"
    exp = datetime.fromtimestamp(1652263200, UTC) + timedelta(milliseconds=500)
    skew = timedelta(seconds=300)
    assert verify(text, trust, exp + skew).checks["not_expired"] is True
    assert verify(text, trust, exp + skew + timedelta(microseconds=1)).checks["not_expired"] is False


@pytest.mark.parametrize("bad", ["2022", -1, 253402300800, float("nan"), float("inf"), True,
                                 cbor2.CBORTag(1, 1652263200)])
def test_bad_exp_is_cwt_false(dsc, trust, bad) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid, exp=bad), trust, AT)
    assert result.checks["cwt"] is False and result.checks["kid"] is True and result.checks["signature"] is True


def test_missing_times(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    no_exp = verify(make_hc1(dsc.private, dsc.kid, exp=None), trust, AT)
    assert no_exp.checks["not_expired"] is None and no_exp.checks["valid_from"] is True
    assert no_exp.error == "凭证无有效期 / No expiry time" and no_exp.status == "unreadable"
    assert "exp" not in no_exp.claims
    no_iat = verify(make_hc1(dsc.private, dsc.kid, iat=None), trust, AT)
    assert no_iat.checks["valid_from"] is None and no_iat.error == "凭证无签发时间 / No issue time"
    nbf_only = verify(make_hc1(dsc.private, dsc.kid, iat=None, claims={5: 1652004000}), trust, AT)
    assert nbf_only.checks["valid_from"] is True


def test_certificate_bounds(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    """§3.2 rows 9-10: exp <= notAfter and iat >= notBefore of the signing certificate."""
    not_after = 1704067199
    at_end = datetime(2023, 12, 31, tzinfo=UTC)
    assert verify(make_hc1(dsc.private, dsc.kid, iat=not_after - 86400, exp=not_after), trust, at_end).ok
    late = verify(make_hc1(dsc.private, dsc.kid, iat=not_after - 86400, exp=not_after + 1), trust, at_end)
    assert failing(late) == {"not_expired": False}
    early = verify(make_hc1(dsc.private, dsc.kid, iat=1640995199), trust, datetime(2022, 1, 2, tzinfo=UTC))
    assert failing(early) == {"valid_from": False}
    # A bare key has no bounds; a failed signature has no signing entry: only the clock counts.
    bare = load_trust({"keys": [{"public_key": b64(spki(dsc.private.public_key())), "kid": b64(dsc.kid)}]})
    assert verify(make_hc1(dsc.private, dsc.kid, iat=not_after - 86400, exp=not_after + 1), bare, at_end).ok


# --- key usage --------------------------------------------------------------------------------


T_OID, V_OID, R_OID = "1.3.6.1.4.1.1847.2021.1.1", "1.3.6.1.4.1.1847.2021.1.2", "1.3.6.1.4.1.1847.2021.1.3"


@pytest.mark.parametrize(("eku", "payload", "expected"), [
    (None, None, True),
    ([T_OID], None, True),
    ([V_OID], None, False),
    ([V_OID, R_OID], None, False),
    (["1.3.6.1.4.1.0.1847.2021.1.1"], None, True),  # the mistyped arc counts
    (["1.3.6.1.4.1.0.1847.2021.1.2"], None, False),
    ([V_OID], dcc_vaccination_payload(), True),
    ([R_OID], dcc_recovery_payload(), True),
    (["1.3.6.1.5.5.7.3.4"], None, True),  # no DCC type OID at all: not restricted to a type
])
def test_key_usage(eku, payload, expected) -> None:  # type: ignore[no-untyped-def]
    dsc = make_dsc(eku=eku)
    result = verify(make_hc1(dsc.private, dsc.kid, payload), load_trust({"keys": [dsc.trust_entry()]}), AT)
    assert result.ok and result.claims["key_usage"] is expected


# --- CWT and schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("claims", [
    {-260: "x"}, {-260: {1: "x"}}, {-260: {2: {}}}, {1: 5}, {2: b"sub"},
])
def test_cwt_rules(dsc, trust, claims) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid, claims=claims), trust, AT)
    assert result.checks["cwt"] is False and result.kind is None and result.claims is None
    assert result.checks["signature"] is True


def test_payload_not_a_map_is_cwt_false(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid, raw_payload=cbor2.dumps([1, 2])), trust, AT)
    assert result.checks["cwt"] is False and result.checks["signature"] is True


def _with(path: tuple[Any, ...], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = copy.deepcopy(base or dcc_test_payload())
    target: Any = payload
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return payload


_DELETE = object()


@pytest.mark.parametrize(("payload", "ok"), [
    (_with(("dob",), ""), True),
    (_with(("dob",), "1990"), True),
    (_with(("dob",), "1990-01"), True),
    (_with(("dob",), "1890-01-01"), False),
    (_with(("dob",), "1990-01-31\n"), False),  # ECMA-262: $ is the end of the text
    (_with(("dob",), cbor2.CBORTag(1004, "1990-01-31")), True),
    (_with(("dob",), b"1990"), False),
    (_with(("ver",), "1.0.0"), True),
    (_with(("ver",), "2.0.0"), False),
    (_with(("ver",), "1.3"), False),
    (_with(("ver",), "1.٣.0"), False),  # \d is ASCII in ECMA-262
    (_with(("nam", "fnt"), _DELETE), True),  # gnt alone is enough since 1.3.2
    (_with(("nam", "gnt"), _DELETE), True),
    (_with(("nam",), {"fn": "Test", "gn": "Anna"}), False),
    (_with(("nam", "fnt"), "Test"), False),
    (_with(("nam", "fn"), "x" * 81), False),
    (_with(("t", 0, "tc"), _DELETE), True),  # tc optional since 1.3.0
    (_with(("t", 0, "ci"), _DELETE), False),
    (_with(("t", 0, "sc"), cbor2.CBORTag(0, "2022-05-08T09:30:00Z")), True),
    (_with(("t", 0, "sc"), cbor2.CBORTag(1, 1652002200)), True),
    (_with(("t", 0, "sc"), cbor2.CBORTag(1, "x")), False),
    (_with(("t", 0, "sc"), "not a date"), True),  # format is not asserted
    (_with(("t", 0, "tr"), 260415000), False),
    (_with(("t", 0, "extra"), {"a": [1, 2.5, None, True]}), True),  # extra members allowed
    (_with(("t", 0, "extra"), float("nan")), False),
    (_with(("t", 0, "extra"), cbor2.CBORTag(99, "x")), False),
    (_with(("t", 0, "co"), "xa"), False),
    (_with(("t", 0, "co"), "xXAx"), True),  # the pattern is unanchored in the schema
    (_with(("t",), [dcc_test_payload()["t"][0]] * 2), False),
    (_with(("t",), []), False),
    (_with(("v",), dcc_vaccination_payload()["v"]), False),  # t and v (vector hc1_two_groups)
    (_with(("v", 0, "dn"), 0, dcc_vaccination_payload()), False),
    (_with(("v", 0, "dn"), 1.0, dcc_vaccination_payload()), True),  # an integral float is an integer
    (_with(("v", 0, "dn"), 1.5, dcc_vaccination_payload()), False),
    (_with(("v", 0, "dn"), 12, dcc_vaccination_payload()), True),  # no maximum since 1.3.0
    (_with(("v", 0, "dn"), True, dcc_vaccination_payload()), False),
    ({1: "non-text key", **dcc_test_payload()}, False),
])
def test_schema(dsc, trust, payload, ok) -> None:  # type: ignore[no-untyped-def]
    result = verify(make_hc1(dsc.private, dsc.kid, payload), trust, AT)
    assert result.checks["cwt"] is True
    assert result.checks["schema"] is ok, payload
    assert (result.claims is not None) is ok
    if ok:
        assert result.ok


def test_tag_1_time_is_converted(dsc, trust) -> None:  # type: ignore[no-untyped-def]
    payload = _with(("t", 0, "sc"), cbor2.CBORTag(1, 1652002200.5))
    result = verify(make_hc1(dsc.private, dsc.kid, payload), trust, AT)
    assert result.claims["dcc"]["t"][0]["sc"] == "2022-05-08T09:30:00.500Z"


# --- the compiled schema checker agrees with jsonschema ---------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers(-3, 12) | st.floats(-2, 12, allow_nan=False) | st.sampled_from(
    ["", "1.3.0", "2.0.0", "1990", "1990-01-31", "TEST", "Test", "ANNA<MARIA", "XA", "xa", "LP6464-4", "x" * 81,
     "1990-01-31\n", "1.3.0\n", "1a3b0"])
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["ver", "nam", "dob", "v", "t", "r", "fn", "fnt", "gn", "gnt", "tg", "tt", "sc", "tr", "co",
                     "is", "ci", "dn", "sd", "dt", "mp", "ma", "vp", "fr", "df", "du", "nm", "tc", "x"]),
    inner, max_size=5), max_leaves=12)
_FIELDS = ("ver", "nam", "dob", "t")


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from([dcc_test_payload(), dcc_vaccination_payload(), dcc_recovery_payload()]),
       edits=st.lists(st.tuples(st.sampled_from(["top", "nam", "entry"]), st.text(
           alphabet="abcdefgilmnorstuvx", min_size=1, max_size=3) | st.sampled_from(
           ["ver", "dob", "fnt", "gnt", "fn", "dn", "sd", "co", "ci", "tc", "sc", "v", "t", "r"]), _json | st.just(_DELETE)),
           max_size=4))
def test_compiled_schema_agrees_with_jsonschema(base, edits) -> None:  # type: ignore[no-untyped-def]
    payload = copy.deepcopy(base)
    group = next(g for g in "vtr" if g in payload)
    for where, key, value in edits:
        if where == "top":
            target: Any = payload
        elif where == "nam":
            target = payload.get("nam")
        else:
            entries = payload.get(group)
            target = entries[0] if isinstance(entries, list) and entries else None
        if not isinstance(target, dict):
            continue
        if value is _DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    assert schema_predicate()(payload) == reference_validator().is_valid(payload), payload


@settings(max_examples=300, deadline=None)
@given(_json)
def test_compiled_schema_agrees_with_jsonschema_on_anything(value) -> None:  # type: ignore[no-untyped-def]
    assert schema_predicate()(value) == reference_validator().is_valid(value)
