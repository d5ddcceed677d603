"""Canonical JSON, the strict parser, the time format, key files and signing texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.canonical import MAX_SAFE_INT, canonical, check_profile, loads_strict
from sync.errors import CanonicalError, KeyFileError, TimeFormatError
from sync.keys import ed25519_keyid, generate_key, load_key_file, signing_text, verify_ed25519, write_key_file
from sync.timefmt import format_ms, parse_ms


def test_escapes_match_jcs() -> None:
    value = {"s": "a\"b\\c\b\t\n\f\r\x00\x1f\x7f/\u2028é张"}
    assert canonical(value) == '{"s":"a\\"b\\\\c\\b\\t\\n\\f\\r\\u0000\\u001f\x7f/\u2028é张"}'.encode()


def test_keys_sorted_no_whitespace_arrays_kept() -> None:
    assert canonical({"b": [3, 1, 2], "a": {"d": None, "c": True}}) == b'{"a":{"c":true,"d":null},"b":[3,1,2]}'


@pytest.mark.parametrize(
    "bad",
    [{"t": 37.5}, {"Bad": 1}, {"a-b": 1}, {"n": MAX_SAFE_INT + 1}, {"s": "\ud800"}, {"x": object()}, {1: 2}],
)
def test_profile_violations(bad: object) -> None:
    with pytest.raises(CanonicalError):
        canonical(bad)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1,"a":2}',
        b'{"a":1.0}',
        b'{"a":1e3}',
        b'{"a":NaN}',
        b'\xef\xbb\xbf{"a":1}',
        b'{"a":"\xff"}',
        b'{"a":"\\ud800"}',
        b'{"a":9007199254740992}',
        b"{",
        b"",
        b"[" * 100_000,
    ],
)
def test_strict_parser_refuses(raw: bytes) -> None:
    with pytest.raises(CanonicalError):
        loads_strict(raw)


def test_strict_parser_size_cap_and_floats_opt_in() -> None:
    with pytest.raises(CanonicalError):
        loads_strict(b"[1,2,3]", max_bytes=3)
    assert loads_strict(b'{"t":36.5}', allow_floats=True) == {"t": 36.5}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), kids, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_and_stability(value: object) -> None:
    try:
        check_profile(value)
    except CanonicalError:
        return  # lone surrogates from st.text()
    data = canonical(value)
    assert loads_strict(data) == value
    assert canonical(json.loads(data)) == data


def test_time_format() -> None:
    ms = parse_ms("2022-04-12T00:31:05.120Z")
    assert format_ms(ms) == "2022-04-12T00:31:05.120Z"
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    for bad in ["2022-04-12T00:31:05Z", "2022-04-12 00:31:05.120Z", "2022-02-30T00:00:00.000Z",
                "2022-04-12T00:31:05.120+08:00", "", "2022-04-12T24:00:00.000Z"]:
        with pytest.raises(TimeFormatError):
            parse_ms(bad)
    with pytest.raises(TimeFormatError):
        parse_ms(123)  # type: ignore[arg-type]


def test_spec_ed25519_spki_keyid() -> None:
    # sync.md §7: the test device key's keyid
    assert ed25519_keyid("562ec64545c6f0a6f3ac69f61a6b5a3d7a5412395716920c8c3b0ac3f0df9526") == "fbc8d76515238dda"


@pytest.mark.parametrize("alg", ["ed25519", "es256"])
def test_key_files_round_trip_and_sign(tmp_path: Path, alg: str) -> None:
    key = generate_key("issuer", "county", alg)  # type: ignore[arg-type]
    path, pub = write_key_file(tmp_path / "k.key", key)
    loaded = load_key_file(path, role="issuer")
    assert loaded == key
    sig = loaded.sign(b"hello")
    assert len(sig) == 64 and loaded.verify(b"hello", sig) and not loaded.verify(b"hellO", sig)
    assert load_key_file(pub, private=False).verify(b"hello", sig)
    if alg == "es256":
        assert sig == loaded.sign(b"hello"), "RFC 6979: deterministic"
    with pytest.raises(KeyFileError, match="role"):
        load_key_file(path, role="publisher")
    with pytest.raises(KeyFileError, match="public key file"):
        load_key_file(pub)


def test_tampered_key_files_are_refused(tmp_path: Path) -> None:
    key = generate_key("publisher", "p1")
    path, _ = write_key_file(tmp_path / "p.key", key)
    doc = json.loads(path.read_text())
    doc["keyid"] = "0" * 16
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="does not belong"):
        load_key_file(path)
    path.write_text("{not json")
    with pytest.raises(KeyFileError):
        load_key_file(path)
    with pytest.raises(KeyFileError):
        generate_key("publisher", "p", "es256")


def test_verify_ed25519_never_raises() -> None:
    key = generate_key("server", "s")
    assert verify_ed25519(key.public, b"m", key.sign(b"m").hex())
    for pub, sig in [("zz", "00"), (key.public, "00" * 63), (key.public[:-2], key.sign(b"m").hex()), ("", "")]:
        assert not verify_ed25519(pub, b"m", sig)


def test_signing_text_rules() -> None:
    assert signing_text("checkpoint/head/v1", "gate-a", 3, "ab") == b"checkpoint/head/v1\ngate-a\n3\nab"
    with pytest.raises(ValueError):
        signing_text("t", "a\nb")
