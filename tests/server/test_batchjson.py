"""The ingest fast path gives exactly the bytes and the refusals of ``sync.canonical`` (sync.md §1.3).

Pure functions: no database, so this file is not parametrised over SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.canonical import canonical, loads_strict
from sync.errors import CanonicalError
from sync.server.batchjson import canonical_bytes, loads_batch

keys = st.one_of(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), st.text(max_size=4))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**60), max_value=2**60),
                    st.text(max_size=12), st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


def _both(fn_a: Any, fn_b: Any, arg: Any) -> None:
    try:
        a = fn_a(arg)
    except CanonicalError:
        a = CanonicalError
    try:
        b = fn_b(arg)
    except CanonicalError:
        b = CanonicalError
    assert a == b


@settings(max_examples=200, deadline=None)
@given(values)
def test_canonical_bytes_equals_canonical(value: Any) -> None:
    _both(canonical, canonical_bytes, value)


@settings(max_examples=150, deadline=None)
@given(values)
def test_loads_batch_refuses_what_loads_strict_refuses(value: Any) -> None:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError):
        return
    data = text.encode("utf-8", "surrogatepass")
    strict: Any
    try:
        strict = canonical(loads_strict(data))
    except CanonicalError:
        strict = CanonicalError
    fast: Any
    try:
        fast = canonical_bytes(loads_batch(data, max_bytes=1 << 20))
    except CanonicalError:
        fast = CanonicalError
    assert strict == fast


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":2}', b'{"a":1.0}', b'{"a":1e3}', b"NaN", b'{"a":Infinity}', b"\xef\xbb\xbf{}", b"\xff",
    b'{"a":"\\ud800"}', b'{"A":1}', b'{"a":9007199254740992}', b"[" * 70 + b"]" * 70, b"{", b"",
])
def test_refusals(raw: bytes) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(loads_batch(raw, max_bytes=1 << 20))
    with pytest.raises(CanonicalError):
        canonical(loads_strict(raw))


def test_size_cap() -> None:
    with pytest.raises(CanonicalError):
        loads_batch(b"[1]" + b" " * 100, max_bytes=50)
