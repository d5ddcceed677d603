"""A strict CBOR decoder for hostile bytes, and a deterministic encoder for issuers.

``loads`` decodes exactly one CBOR item (RFC 8949) and enforces the limits of
credentials.md §3.3, so a scanned code can never make the gate recurse, allocate or
guess its way through malformed input:

1. nothing may follow the item (no trailing bytes);
2. nesting depth (arrays, maps and tags) at most ``max_depth`` (16);
3. every length is checked against the bytes left before anything is allocated;
4. map keys are integers, text or bytes, each at most once;
5. simple values are ``false``, ``true``, ``null`` and 16/32/64-bit floats only;
6. text is valid UTF-8 (each chunk of an indefinite-length string on its own);
7. indefinite lengths are accepted when well formed (issuers never write them).

Any breach raises ``DecodeError``. ``cbor2.loads`` is not used for untrusted bytes: it
ignores trailing bytes, keeps the last of duplicate keys and nests 400 deep (§9).

Tags come back as ``Tag(tag, value)``; the caller decides which tags it accepts.

``dumps`` writes deterministically encoded CBOR (RFC 8949 §4.2.1: shortest arguments,
definite lengths, map keys sorted by their encoded bytes), the encoding of CK1 (§2.4 rule 1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from edge.credentials.errors import DecodeError

__all__ = ["MAX_DEPTH", "Tag", "dumps", "loads"]

MAX_DEPTH = 16

_BREAK = object()
_FLOAT_HALF = struct.Struct(">e")
_FLOAT_SINGLE = struct.Struct(">f")
_FLOAT_DOUBLE = struct.Struct(">d")


@dataclass(frozen=True, slots=True)
class Tag:
    """A CBOR tag around a value (major type 6)."""

    tag: int
    value: Any


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one CBOR item from ``data``.

    Raises:
        DecodeError: malformed CBOR, trailing bytes, or a breach of the limits above.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("CBOR input must be bytes")
    data = bytes(data)
    if not data:
        raise DecodeError("empty CBOR input")
    value, pos = _item(data, 0, 1, max_depth)
    if value is _BREAK:
        raise DecodeError("unexpected break code at offset 0")
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after the CBOR item")
    return value


def _argument(data: bytes, pos: int, info: int) -> tuple[int, int]:
    """The argument of a head whose additional information is ``info``; ``pos`` is after the head."""
    if info < 24:
        return info, pos
    if info == 24:
        size = 1
    elif info == 25:
        size = 2
    elif info == 26:
        size = 4
    elif info == 27:
        size = 8
    else:
        raise DecodeError(f"reserved additional information {info} at offset {pos - 1}")
    end = pos + size
    if end > len(data):
        raise DecodeError("truncated CBOR head")
    return int.from_bytes(data[pos:end], "big"), end


def _item(data: bytes, pos: int, depth: int, max_depth: int) -> tuple[Any, int]:
    n = len(data)
    if pos >= n:
        raise DecodeError("truncated CBOR: item expected")
    ib = data[pos]
    major = ib >> 5
    info = ib & 0x1F
    pos += 1

    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        if info == 25:
            if pos + 2 > n:
                raise DecodeError("truncated half float")
            return _FLOAT_HALF.unpack_from(data, pos)[0], pos + 2
        if info == 26:
            if pos + 4 > n:
                raise DecodeError("truncated single float")
            return _FLOAT_SINGLE.unpack_from(data, pos)[0], pos + 4
        if info == 27:
            if pos + 8 > n:
                raise DecodeError("truncated double float")
            return _FLOAT_DOUBLE.unpack_from(data, pos)[0], pos + 8
        if info == 31:
            return _BREAK, pos
        raise DecodeError(f"simple value {info} not allowed at offset {pos - 1}")

    if info == 31:
        if major == 2 or major == 3:
            return _indefinite_string(data, pos, major)
        if major == 4 or major == 5:
            if depth > max_depth:
                raise DecodeError(f"CBOR nesting deeper than {max_depth}")
            return (_indefinite_array if major == 4 else _indefinite_map)(data, pos, depth, max_depth)
        raise DecodeError(f"indefinite length not allowed for major type {major}")

    if info < 24:
        arg = info
    else:
        arg, pos = _argument(data, pos, info)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2 or major == 3:
        end = pos + arg
        if end > n:
            raise DecodeError(f"string of {arg} bytes with {n - pos} bytes left")
        chunk = data[pos:end]
        if major == 2:
            return chunk, end
        try:
            return chunk.decode("utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError(f"invalid UTF-8 in text at offset {pos}") from None
    if depth > max_depth:
        raise DecodeError(f"CBOR nesting deeper than {max_depth}")
    if major == 4:
        if arg > n - pos:
            raise DecodeError(f"array of {arg} items with {n - pos} bytes left")
        items = []
        for _ in range(arg):
            value, pos = _item(data, pos, depth + 1, max_depth)
            if value is _BREAK:
                raise DecodeError("unexpected break code in a definite-length array")
            items.append(value)
        return items, pos
    if major == 5:
        if arg > (n - pos) // 2:
            raise DecodeError(f"map of {arg} pairs with {n - pos} bytes left")
        result: dict[Any, Any] = {}
        for _ in range(arg):
            pos = _pair(data, pos, depth, max_depth, result)
        return result, pos
    # major == 6: a tag counts as one level of nesting, so tags cannot nest without bound.
    value, pos = _item(data, pos, depth + 1, max_depth)
    if value is _BREAK:
        raise DecodeError("unexpected break code after a tag")
    return Tag(arg, value), pos


def _pair(data: bytes, pos: int, depth: int, max_depth: int, result: dict[Any, Any]) -> int:
    key_at = pos
    if pos >= len(data):
        raise DecodeError("truncated CBOR: map key expected")
    ib = data[pos]
    # Fast paths for the keys credentials use (short text, small integers); same rules.
    if 0x60 <= ib <= 0x77:
        end = pos + 1 + ib - 0x60
        if end > len(data):
            raise DecodeError(f"string of {ib - 0x60} bytes with {len(data) - pos - 1} bytes left")
        try:
            key: Any = data[pos + 1 : end].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"invalid UTF-8 in text at offset {pos + 1}") from None
        pos = end
    elif ib <= 0x17:
        key, pos = ib, pos + 1
    elif 0x20 <= ib <= 0x37:
        key, pos = 0x1F - ib, pos + 1
    else:
        key, pos = _item(data, pos, depth + 1, max_depth)
        if key is _BREAK:
            raise DecodeError("unexpected break code in place of a map key")
        kt = type(key)
        if kt is not int and kt is not str and kt is not bytes:
            raise DecodeError(f"map key of type {kt.__name__} at offset {key_at}")
    if key in result:
        raise DecodeError(f"duplicate map key at offset {key_at}")
    if pos < len(data):
        ib = data[pos]
        if 0x60 <= ib <= 0x77:  # short text value
            end = pos + 1 + ib - 0x60
            if end <= len(data):
                try:
                    result[key] = data[pos + 1 : end].decode("utf-8")
                except UnicodeDecodeError:
                    raise DecodeError(f"invalid UTF-8 in text at offset {pos + 1}") from None
                return end
        elif ib <= 0x17:  # small unsigned integer
            result[key] = ib
            return pos + 1
    value, pos = _item(data, pos, depth + 1, max_depth)
    if value is _BREAK:
        raise DecodeError("map key without a value")
    result[key] = value
    return pos


def _indefinite_string(data: bytes, pos: int, major: int) -> tuple[Any, int]:
    n = len(data)
    chunks: list[Any] = []
    while True:
        if pos >= n:
            raise DecodeError("indefinite-length string without break")
        ib = data[pos]
        if ib == 0xFF:
            pos += 1
            break
        if ib >> 5 != major or ib & 0x1F == 31:
            raise DecodeError("a chunk of an indefinite-length string must be a definite string of the same type")
        arg, pos = _argument(data, pos + 1, ib & 0x1F)
        end = pos + arg
        if end > n:
            raise DecodeError(f"string chunk of {arg} bytes with {n - pos} bytes left")
        chunk = data[pos:end]
        if major == 3:
            try:
                chunks.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                raise DecodeError(f"invalid UTF-8 in text chunk at offset {pos}") from None
        else:
            chunks.append(chunk)
        pos = end
    return ("".join(chunks) if major == 3 else b"".join(chunks)), pos


def _indefinite_array(data: bytes, pos: int, depth: int, max_depth: int) -> tuple[Any, int]:
    items: list[Any] = []
    while True:
        value, pos = _item(data, pos, depth + 1, max_depth)
        if value is _BREAK:
            return items, pos
        items.append(value)


def _indefinite_map(data: bytes, pos: int, depth: int, max_depth: int) -> tuple[Any, int]:
    result: dict[Any, Any] = {}
    n = len(data)
    while True:
        if pos >= n:
            raise DecodeError("indefinite-length map without break")
        if data[pos] == 0xFF:
            return result, pos + 1
        pos = _pair(data, pos, depth, max_depth, result)


# --- deterministic encoding (RFC 8949 §4.2.1) -------------------------------------------


def _head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    if arg < 0x100:
        return bytes([major << 5 | 24, arg])
    if arg < 0x10000:
        return bytes([major << 5 | 25]) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes([major << 5 | 26]) + arg.to_bytes(4, "big")
    if arg < 0x10000000000000000:
        return bytes([major << 5 | 27]) + arg.to_bytes(8, "big")
    raise ValueError("integer out of CBOR range")


def dumps(value: Any) -> bytes:
    """Deterministic CBOR of ints, text, bytes, lists, dicts, bools, None and ``Tag``.

    Raises:
        ValueError: a value of another type (floats included: CK1 never needs one) or an
            integer outside the 64-bit CBOR range.
    """
    if value is False:
        return b"\xf4"
    if value is True:
        return b"\xf5"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, (bytes, bytearray)):
        return _head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return _head(4, len(value)) + b"".join(dumps(v) for v in value)
    if isinstance(value, dict):
        pairs = sorted((dumps(k), dumps(v)) for k, v in value.items())
        for a, b in zip(pairs, pairs[1:], strict=False):
            if a[0] == b[0]:
                raise ValueError("duplicate map key")
        return _head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    if isinstance(value, Tag):
        return _head(6, value.tag) + dumps(value.value)
    raise ValueError(f"cannot encode {type(value).__name__} deterministically")
