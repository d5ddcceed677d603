"""Hostile input (credentials.md §3.3, issue 4 point 7): truncation, bit flips and random
bytes at each layer never raise, never break the result's invariants, and cost bounded
work; zlib bombs and deep nesting are refused. Plus a short run of the bench fuzz target."""

from __future__ import annotations

import importlib.util
import tracemalloc
import zlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.credentials import base45 as b45
from edge.credentials import load_trust, verify
from edge.credentials.cbor_strict import Tag, dumps
from edge.credentials.cose import sig_structure
from tests.conftest import REPO
from tests.credentials.conftest import AT, vector

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_credentials", REPO / "bench" / "fuzz_credentials.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzz_module()
check_invariants = FUZZ.check_invariants


@pytest.fixture(scope="module")
def trust() -> Any:
    return load_trust(vector("health_green")["trust"])


@pytest.fixture(scope="module", autouse=True)
def safety_net_is_a_failure() -> None:
    """A bug caught by ``verify``'s last-resort handler fails these tests."""
    FUZZ.arm_safety_net()


def _layers(name: str) -> tuple[str, bytes, bytes]:
    """(prefix, zlib bytes, COSE bytes) of a vector."""
    text = vector(name)["text"]
    compressed = b45.decode(text[4:])
    return text[:4], compressed, zlib.decompress(compressed)


def _text(prefix: str, cose: bytes) -> str:
    return prefix + b45.encode(zlib.compress(cose, 9))


# --- each layer: random, truncated, flipped --------------------------------------------------------


@FAST
@given(st.text(max_size=400))
def test_random_text(trust: Any, text: str) -> None:
    check_invariants(verify(text, trust, AT))


@FAST
@given(st.sampled_from(["CK1:", "HC1:"]), st.text(alphabet=b45.ALPHABET, max_size=600))
def test_random_base45_text(trust: Any, prefix: str, body: str) -> None:
    result = verify(prefix + body, trust, AT)
    check_invariants(result)
    assert result.checks["prefix"] is True


@FAST
@given(st.sampled_from(["CK1:", "HC1:"]), st.binary(max_size=600))
def test_random_compressed_bytes(trust: Any, prefix: str, data: bytes) -> None:
    result = verify(prefix + b45.encode(data), trust, AT)
    check_invariants(result)
    assert result.checks["base45"] is True


@FAST
@given(st.sampled_from(["CK1:", "HC1:"]), st.binary(max_size=600))
def test_random_cose_bytes(trust: Any, prefix: str, data: bytes) -> None:
    result = verify(_text(prefix, data), trust, AT)
    check_invariants(result)
    assert result.checks["zlib"] is True


@FAST
@given(st.binary(max_size=400))
def test_random_signed_payload(trust: Any, payload: bytes) -> None:
    """A payload that is garbage but correctly signed: kid and signature true, the rest decides."""
    from tests.credentials.conftest import key_of_signer

    key = key_of_signer(vector("health_green")["signer"])
    protected = dumps({1: -8, 4: bytes.fromhex(key.keyid)})
    cose = dumps(Tag(18, [protected, {}, payload, key.sign(sig_structure(protected, payload))]))
    result = verify(_text("CK1:", cose), trust, AT)
    check_invariants(result)
    assert result.checks["kid"] is True and result.checks["signature"] is True


@pytest.mark.parametrize("name", ["health_green", "pass_valid", "hc1_test_valid"])
def test_every_truncation_of_every_layer(trust: Any, name: str) -> None:
    case = vector(name)
    trust = load_trust(case["trust"])
    prefix, compressed, cose = _layers(name)
    text = case["text"]
    for n in range(len(text)):
        result = verify(text[:n], trust, AT)
        check_invariants(result)
        assert not result.ok
    for n in range(len(compressed)):
        result = verify(prefix + b45.encode(compressed[:n]), trust, AT)
        check_invariants(result)
        assert result.checks["zlib"] is False
    for n in range(len(cose)):
        result = verify(_text(prefix, cose[:n]), trust, AT)
        check_invariants(result)
        assert result.checks["cose"] is False


@pytest.mark.parametrize("name", ["health_green", "health_green_es256", "hc1_test_valid"])
def test_every_single_bit_flip_of_the_cose_bytes(name: str) -> None:
    """No flipped bit anywhere in a signed credential leaves it valid (signature, structure
    or content catches it), and none breaks the result's shape."""
    case = vector(name)
    trust = load_trust(case["trust"])
    prefix, _compressed, cose = _layers(name)
    valid = 0
    for i in range(len(cose)):
        for bit in range(8):
            flipped = bytearray(cose)
            flipped[i] ^= 1 << bit
            result = verify(_text(prefix, bytes(flipped)), trust, AT)
            check_invariants(result)
            valid += result.ok
    assert valid == 0


@FAST
@given(st.data())
def test_bit_flips_in_the_text(trust: Any, data: st.DataObject) -> None:
    text = vector("health_green")["text"]
    i = data.draw(st.integers(4, len(text) - 1))
    c = data.draw(st.sampled_from(b45.ALPHABET + "a#\x00é"))
    changed = text[:i] + c + text[i + 1:]
    result = verify(changed, trust, AT)
    check_invariants(result)
    assert result.ok == (changed == text)


# --- bombs and size limits ---------------------------------------------------------------------------


def test_zlib_bomb_is_refused_with_bounded_memory(trust: Any) -> None:
    bomb = zlib.compress(b"\x00" * 50_000_000, 9)  # ~50 kB of zlib for 50 MB of zeros
    text = "CK1:" + b45.encode(bomb[:5400])  # what fits in 8,192 characters: still a bomb, truncated
    tracemalloc.start()
    try:
        result = verify(text, trust, AT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_invariants(result)
    assert result.checks["zlib"] is False
    assert peak < 2_000_000  # the inflate is capped at 64 KiB (+1), not 50 MB


def test_inflated_size_limit_is_exact(trust: Any) -> None:
    def inflated(n: int) -> Any:
        cose = dumps(Tag(18, [b"", {}, b"\x00" * (n - 8), b""]))  # header bytes: 8 for these sizes
        assert len(cose) == n, len(cose)
        return verify(_text("CK1:", cose), trust, AT)

    assert inflated(65536).checks["zlib"] is True
    assert inflated(65537).checks["zlib"] is False


def test_text_length_limit_is_exact(trust: Any) -> None:
    at_limit = "CK1:" + "0" * 8187  # 8,191 characters, 8187 % 3 == 0
    assert len(at_limit) <= 8192 and verify(at_limit, trust, AT).checks["base45"] is True
    over = "CK1:" + "0" * 8190  # 8,194 characters
    assert verify(over, trust, AT).checks["base45"] is False


@pytest.mark.parametrize("size", [65536, 65537, 300_000])
def test_oversize_inputs(trust: Any, size: int) -> None:
    for text in ("CK1:" + "A" * size, "HC1:" + "%" * size, "x" * size):
        result = verify(text, trust, AT)
        check_invariants(result)
        assert not result.ok


def test_deep_nesting_in_payload_and_headers(trust: Any) -> None:
    from tests.credentials.conftest import key_of_signer

    key = key_of_signer(vector("health_green")["signer"])
    deep = b"\x81" * 5000 + b"\x00"
    protected = dumps({1: -8, 4: bytes.fromhex(key.keyid)})
    cose = dumps(Tag(18, [protected, {}, deep, key.sign(sig_structure(protected, deep))]))
    result = verify(_text("CK1:", cose), trust, AT)
    check_invariants(result)
    assert result.checks["cwt"] is False and result.checks["signature"] is True
    nested_protected = b"\xa1\x01" + b"\x81" * 5000 + b"\x00"
    cose = dumps(Tag(18, [nested_protected, {}, b"\xa0", b""]))
    assert verify(_text("CK1:", cose), trust, AT).checks["cose"] is False
    tags = b"\xc6" * 5000 + dumps([b"", {}, b"", b""])
    assert verify(_text("HC1:", tags), trust, AT).checks["cose"] is False


def test_non_string_inputs_do_not_raise(trust: Any) -> None:
    for value in (None, b"CK1:ABC", 42, ["CK1:"], object()):
        result = verify(value, trust, AT)  # type: ignore[arg-type]
        check_invariants(result)
        assert result.checks["prefix"] is False


def test_naive_and_odd_times(trust: Any) -> None:
    from datetime import datetime, timedelta

    case = vector("health_green")
    assert verify(case["text"], trust, datetime(2022, 5, 10, 8, 0)).ok  # naive = UTC
    check_invariants(verify(case["text"], trust, datetime(1, 1, 1)))
    check_invariants(verify(case["text"], trust, datetime(9999, 12, 31), skew=timedelta(days=365)))


# --- the bench fuzz target, short ---------------------------------------------------------------


def test_fuzz_target_short_run() -> None:
    stats = FUZZ.run_random(3000, seed=20220510, progress=False)
    assert stats.runs == 3000
    assert all(stats.layers[layer] > 0 for layer in range(8))
    assert stats.reached["signature"] > 0 and stats.reached["schema"] > 0  # the layers get deep


def test_fuzz_invariants_catch_a_broken_result() -> None:
    """The checker itself can fail: a result claiming ok with a false check is caught."""
    from edge.credentials import Verification

    good = verify(vector("health_green")["text"], load_trust(vector("health_green")["trust"]), AT)
    bad = Verification(True, good.kind, {**good.checks, "signature": False}, None, good.claims)
    with pytest.raises(AssertionError):
        check_invariants(bad)
    with pytest.raises(AssertionError):
        check_invariants(Verification(False, "health", dict(good.checks, cwt=False), "x", None))
