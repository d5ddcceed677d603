"""base45 (RFC 9285) and the strict CBOR decoder (credentials.md §3.3), limit by limit."""

from __future__ import annotations

import math
import os

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.credentials import base45
from edge.credentials.cbor_strict import MAX_DEPTH, Tag, dumps, loads
from edge.credentials.errors import DecodeError

# --- base45 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "text"), [
    (b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"), (b"base-45", "UJCLQE7W581"), (b"ietf!", "QED8WEX0"),
    (b"", ""), (b"\x00", "00"), (b"\xff\xff", "FGW"),
])
def test_base45_rfc9285_examples(raw: bytes, text: str) -> None:
    assert base45.encode(raw) == text
    assert base45.decode(text) == raw


@pytest.mark.parametrize("text", [
    "A",  # length mod 3 == 1
    "GGW",  # 65536: a 3-character group above 65535 (vector bad_base45_overflow)
    "::",  # final pair 2024 > 255
    "ab1",  # lower case is not in the alphabet
    "AB#",  # '#' is not in the alphabet
    "BB8\n",  # a trailing newline is a character too (and length 4)
    "ÄB8", "\x00\x00", "BB８",  # non-ASCII (full-width digit)
])
def test_base45_rejects(text: str) -> None:
    with pytest.raises(DecodeError):
        base45.decode(text)


@given(st.binary(max_size=600))
def test_base45_round_trip(raw: bytes) -> None:
    assert base45.decode(base45.encode(raw)) == raw


@given(st.text(alphabet=base45.ALPHABET, max_size=60))
def test_base45_accepts_or_rejects_cleanly(text: str) -> None:
    try:
        raw = base45.decode(text)
    except DecodeError:
        return
    assert base45.encode(raw) == text  # decoding is strict, so it is canonical


# --- strict CBOR ----------------------------------------------------------------------------


def test_cbor_decodes_the_usual_items() -> None:
    value = {1: "x", -65537: {"k": "h", "id": b"\x01" * 8}, "l": [1, -1, True, False, None, 1.5, 2**64 - 1]}
    assert loads(cbor2.dumps(value)) == value
    assert loads(bytes.fromhex("f93c00")) == 1.0  # half float
    assert loads(bytes.fromhex("fa3fc00000")) == 1.5  # single
    assert math.isnan(loads(bytes.fromhex("f97e00")))  # NaN is a float: the layer above decides
    assert loads(bytes.fromhex("3bffffffffffffffff")) == -(2**64)
    assert loads(bytes.fromhex("d2820102")) == Tag(18, [1, 2])


@pytest.mark.parametrize(("hexdata", "why"), [
    ("", "empty"),
    ("a0a0", "trailing bytes"),
    ("a201010101", "duplicate key"),
    ("a2616101616101", "duplicate text key"),
    ("a1f501", "bool key"),
    ("a1a00101", "map as key"),
    ("a1f93c0001", "float key"),
    ("f7", "undefined"),
    ("f0", "unassigned simple value"),
    ("f820", "one-byte simple value"),
    ("ff", "stray break"),
    ("1c", "reserved additional information"),
    ("5a7fffffff00", "byte string longer than the input"),
    ("9b00000000ffffffff", "array count above the bytes left"),
    ("bb00000000ffffffff01", "map count above the bytes left"),
    ("62c328", "invalid UTF-8"),
    ("63eda080", "UTF-8 surrogate"),
    ("5f4101620203ff", "text chunk inside an indefinite byte string"),
    ("7f61c36161ff", "UTF-8 split across chunks"),
    ("5f41", "indefinite string without break"),
    ("9f01", "indefinite array without break"),
    ("bf0102", "indefinite map without break"),
    ("bf01ff", "indefinite map: key without value"),
    ("1f", "indefinite integer"),
    ("d8", "truncated tag head"),
    ("d2", "tag without content"),
    ("19ff", "truncated head argument"),
    ("fb000000", "truncated double"),
])
def test_cbor_rejects(hexdata: str, why: str) -> None:
    with pytest.raises(DecodeError):
        loads(bytes.fromhex(hexdata))


def test_cbor_accepts_well_formed_indefinite_lengths() -> None:
    assert loads(bytes.fromhex("5f42010243030405ff")) == b"\x01\x02\x03\x04\x05"
    assert loads(bytes.fromhex("7f657374726561646d696e67ff")) == "streaming"
    assert loads(bytes.fromhex("9f018202039f0405ffff")) == [1, [2, 3], [4, 5]]
    assert loads(bytes.fromhex("bf61610161629f0203ffff")) == {"a": 1, "b": [2, 3]}


@pytest.mark.parametrize("opener", ["81", "a101", "c6", "9f"])
def test_cbor_depth_limit(opener: str) -> None:
    """Nesting 16 deep decodes; 17 fails. Arrays, maps, tags and indefinite arrays all count."""
    closer = "ff" if opener == "9f" else ""
    ok = bytes.fromhex(opener * MAX_DEPTH + "00" + closer * MAX_DEPTH)
    loads(ok)
    too_deep = bytes.fromhex(opener * (MAX_DEPTH + 1) + "00" + closer * (MAX_DEPTH + 1))
    with pytest.raises(DecodeError):
        loads(too_deep)


def test_cbor_deep_hostile_nesting_is_refused_without_recursion_error() -> None:
    for opener in (b"\x81", b"\xc6", b"\x9f", b"\xa1\x01"):
        with pytest.raises(DecodeError):
            loads(opener * 50_000)


def test_cbor_huge_declared_lengths_allocate_nothing() -> None:
    with pytest.raises(DecodeError):
        loads(b"\x9b" + (2**63).to_bytes(8, "big"))
    with pytest.raises(DecodeError):
        loads(b"\x5b" + (2**63).to_bytes(8, "big") + b"\x00")


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.integers(-100, 100) | st.text(max_size=5) | st.binary(max_size=5), inner, max_size=4),
    max_leaves=20,
))
def test_cbor_round_trip_through_the_deterministic_encoder(value: object) -> None:
    encoded = dumps(value)
    assert loads(encoded) == value
    assert cbor2.loads(encoded) == value
    assert dumps(loads(encoded)) == encoded


def test_cbor_deterministic_key_order_is_bytewise() -> None:
    """RFC 8949 §4.2.1: keys sorted by their encoded bytes (24 = 18 18 before -1 = 20)."""
    assert dumps({-1: 0, 24: 0}) == bytes.fromhex("a2181800" + "2000")
    assert dumps({"id": 0, "k": 0, -65537: 0, 1: 0}) == bytes.fromhex("a4" "0100" "3a0001000000" "616b00" "62696400")


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_cbor_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        loads(data)
    except DecodeError:
        pass


def test_cbor_random_bytes_never_raise_anything_else() -> None:
    rng = os.urandom
    for _ in range(3000):
        try:
            loads(rng(1 + rng(1)[0] % 64))
        except DecodeError:
            pass
