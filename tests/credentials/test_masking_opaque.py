"""Masking (credentials.md §7.2), opaque codes and keyed hashes (§6, §4.6), the public API."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

import edge.credentials as credentials
from edge.credentials import (
    classify,
    code_hash,
    looks_masked,
    mask_id,
    mask_name,
    mask_phone,
    revocation_hash,
)
from tests.conftest import load_vector
from tests.credentials.conftest import vector


def test_masking_vectors_of_events_json() -> None:
    cases = load_vector("events.json")["masking"]
    assert len(cases) >= 8
    fns = {"mask_name": mask_name, "mask_id": mask_id}
    for case in cases:
        assert fns[case["fn"]](case["in"]) == case["out"], case


@pytest.mark.parametrize(("name", "masked"), [
    ("张三", "张*"), ("张小三", "张*三"), ("欧阳小明", "欧**明"), ("王", "*"),
    (" 张 小三 ", "张*三"), ("阿依古丽·买买提", "阿******提"), ("𠀋小明", "𠀋*明"),
    ("ZHAO SAN", "Z*** S**"), ("ANNA<MARIA", "A*** M****"), ("  Li  Na ", "L* N*"), ("", ""),
    ("O", "O"), ("DCERVENKOVA<<PANKLOVA", "D********** P*******"),
])
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked
    assert mask_name(masked) == masked  # idempotent: exports mask again (sync.md §5)


def test_mask_id_and_phone() -> None:
    assert mask_id("000000000000001234") == "**************1234"
    assert mask_id("E1234") == "*1234"
    assert mask_id("1234") == "****" and mask_id("") == ""
    assert mask_phone("13800000000") == "138****0000"
    assert mask_phone("+8613800000000") == "+86*******0000"
    assert mask_phone("1234567") == "***4567"


@pytest.mark.parametrize(("name", "masked"), [
    ("张*三", True), ("张*", True), ("*", True), ("欧**明", True), ("张**", True), ("Z*** S**", True),
    ("A*** M****", True), ("", True), (None, True),
    ("张三", False), ("张小三", False), ("王", False), ("ZHAO SAN", False), ("Z*** SAN", False),
    ("张小*", True), ("ZH** S**", False), ("0*0", True), ("张小三*", False),
])
def test_looks_masked(name: str | None, masked: bool) -> None:
    assert looks_masked(name) is masked


@given(st.text(max_size=30))
def test_masked_names_look_masked(name: str) -> None:
    assert looks_masked(mask_name(name))


def test_classify() -> None:
    assert classify("CK1:ABC") == "CK1" and classify("HC1:ABC") == "HC1"
    for text in ("ck1:ABC", "CK2:ABC", "HC2:X", "EMP-004211", "https://example.invalid/code?x=1", "", "CK1", " CK1:"):
        assert classify(text) == "opaque"
    assert classify(None) == "opaque"  # type: ignore[arg-type]


def test_code_hash_worked_example() -> None:
    key = bytes.fromhex("ea7ca339c1b411a35bd8699632a338137fca19b9ff3b986136352e86b25a11f9")
    assert code_hash("EMP-004211", key) == "186396762ce25c6c8194c6861c97e07e"
    assert code_hash("EMP-004212", key) != code_hash("EMP-004211", key)
    with pytest.raises(ValueError):
        code_hash("EMP-004211", b"")


def test_revocation_hash_matches_claims() -> None:
    ck = vector("health_green")["expected"]["claims"]
    assert revocation_hash(bytes.fromhex(ck["id"])) == ck["revocation_hash"]
    dcc = vector("hc1_test_valid")["expected"]["claims"]
    assert revocation_hash(dcc["dcc"]["t"][0]["ci"]) == dcc["revocation_hash"]
    for bad in (b"\x00" * 7, "", 5):
        with pytest.raises(ValueError):
            revocation_hash(bad)  # type: ignore[arg-type]


def test_public_surface_matches_all() -> None:
    """STYLE 3.2: the exported names are exactly ``__all__``."""
    public = {n for n, v in vars(credentials).items() if not n.startswith("_") and not inspect.ismodule(v)}
    public.discard("annotations")
    assert set(credentials.__all__) == public
    for name in ("verify", "classify", "load_trust", "code_hash", "revocation_hash", "mask_name", "mask_id",
                 "mask_phone", "looks_masked", "mint", "Trust", "Verification"):
        assert name in credentials.__all__
    params = inspect.signature(credentials.verify).parameters
    assert list(params) == ["text", "trust", "at", "skew"] and params["skew"].kind is inspect.Parameter.KEYWORD_ONLY
    mint_params = inspect.signature(credentials.mint).parameters
    assert list(mint_params) == ["kind", "claims", "key", "now_ms", "expires_in_s"]
