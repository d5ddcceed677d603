"""Canonical JSON (sync.md §1.3) and the strict parser that goes with it.

The canonical bytes of a value are byte-identical to RFC 8785 (JCS) for every
value the profile allows:

1. objects, arrays, strings, integers in ±(2^53 − 1), true, false, null — no floats;
2. object keys match ``^[a-z0-9_]+$`` (so byte, code point and UTF-16 order agree);
3. no whitespace, members in key order, raw UTF-8, only the escapes JSON needs.

``check_profile`` enforces rules 1–2 before anything is serialised; the
stdlib encoder with ``ensure_ascii=False`` then writes exactly the JCS escapes
(``\\"``, ``\\\\``, ``\\b \\t \\n \\f \\r`` and ``\\u00xx`` in lowercase hex).

``loads_strict`` is the parser every signed or hashed document goes through:
it refuses what a lenient parser would silently accept (duplicate keys, where
the last one wins; floats, NaN, exponents; lone surrogates; a BOM), because two
parsers that disagree on a document are how signature checks get bypassed.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sync.errors import CanonicalError

__all__ = ["MAX_SAFE_INT", "canonical", "canonical_sha256", "check_profile", "loads_strict"]

MAX_SAFE_INT = 2**53 - 1
_KEY_RE = re.compile(r"^[a-z0-9_]+$")
_MAX_DEPTH = 64
_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def check_profile(value: Any, *, keys: bool = True) -> None:
    """Raise ``CanonicalError`` unless ``value`` lies inside the canonical profile.

    Args:
        value: the parsed JSON value.
        keys: also require object keys to match ``^[a-z0-9_]+$`` (rule 2).
    """
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        v, path, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise CanonicalError(f"{path}: nested deeper than {_MAX_DEPTH} levels")
        t = type(v)
        if v is None or t is bool:
            continue
        if t is int:
            if not -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                raise CanonicalError(f"{path}: integer outside ±(2^53 − 1)")
        elif t is str:
            _check_string(v, path)
        elif t is dict:
            for k, item in v.items():
                if type(k) is not str:
                    raise CanonicalError(f"{path}: object key {k!r} is not a string")
                if keys and not _KEY_RE.match(k):
                    raise CanonicalError(f"{path}: object key {k[:40]!r} does not match [a-z0-9_]+")
                _check_string(k, path)
                stack.append((item, f"{path}.{k}", depth + 1))
        elif t is list or t is tuple:
            for i, item in enumerate(v):
                stack.append((item, f"{path}[{i}]", depth + 1))
        elif t is float:
            raise CanonicalError(f"{path}: floats are not allowed (use integer units, e.g. *_centi_c)")
        else:
            raise CanonicalError(f"{path}: {t.__name__} is not a JSON value")


def _check_string(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(f"{path}: lone surrogate in string") from exc


def canonical(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value``.

    Raises:
        CanonicalError: ``value`` is outside the profile.
    """
    check_profile(value)
    return _encoder.encode(value).encode("utf-8")


def canonical_sha256(value: Any) -> str:
    """Lowercase hex SHA-256 of the canonical bytes of ``value``."""
    return hashlib.sha256(canonical(value)).hexdigest()


def _no_floats(text: str) -> Any:
    raise CanonicalError(f"number {text[:40]} is not an integer (floats and exponents are refused)")


def _no_constants(text: str) -> Any:
    raise CanonicalError(f"{text} is not JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CanonicalError(f"duplicate object key {k[:40]!r}")
        out[k] = v
    return out


def loads_strict(data: bytes | str, *, allow_floats: bool = False, max_bytes: int | None = None) -> Any:
    """Parse JSON strictly.

    Refuses invalid UTF-8, a BOM, duplicate keys, NaN/Infinity, lone surrogates
    and (unless ``allow_floats``) any number with a fraction or an exponent.
    Integers outside ±(2^53 − 1) are refused too.

    Raises:
        CanonicalError: for anything the strict profile refuses, including plain syntax errors.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise CanonicalError(f"document of {len(data)} bytes exceeds {max_bytes}")
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if raw.startswith(b"\xef\xbb\xbf"):
            raise CanonicalError("byte order mark before JSON")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalError(f"invalid UTF-8 at byte {exc.start}") from exc
    else:
        text = data
        if text.startswith("\ufeff"):
            raise CanonicalError("byte order mark before JSON")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=float if allow_floats else _no_floats,
            parse_constant=_no_constants,
        )
    except CanonicalError:
        raise
    except RecursionError as exc:
        raise CanonicalError("JSON nested too deeply") from exc
    except ValueError as exc:
        raise CanonicalError(f"not JSON: {exc}") from exc
    _check_parsed(value)
    return value


def _check_parsed(value: Any) -> None:
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            _check_string(v, "$")
        elif t is int:
            if not -MAX_SAFE_INT <= v <= MAX_SAFE_INT:
                raise CanonicalError("integer outside ±(2^53 − 1)")
        elif t is dict:
            for k, item in v.items():
                _check_string(k, "$")
                stack.append(item)
        elif t is list:
            stack.extend(v)
