"""Base45 (RFC 9285), the QR-alphanumeric encoding of CK1 and HC1 texts.

Decoding is strict (credentials.md §3.2 check 2): every character must be one of the
45 of the alphabet, the length modulo 3 must not be 1, every 3-character group must be
at most 65,535 and a final 2-character group at most 255. Anything else raises
``DecodeError``; there is no "best effort" decoding of a damaged text.
"""

from __future__ import annotations

from edge.credentials.errors import DecodeError

__all__ = ["ALPHABET", "decode", "encode"]

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# Values of all 2-character pairs, so decoding does one dict lookup per pair of characters.
_PAIR = {a + b: _VALUE[a] + _VALUE[b] * 45 for a in ALPHABET for b in ALPHABET}


def encode(data: bytes) -> str:
    """Base45 text of ``data`` (RFC 9285 §4)."""
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        out.append(ALPHABET[n % 45] + ALPHABET[(n // 45) % 45] + ALPHABET[n // 2025])
    if len(data) % 2:
        n = data[-1]
        out.append(ALPHABET[n % 45] + ALPHABET[n // 45])
    return "".join(out)


def decode(text: str) -> bytes:
    """Bytes of a base45 text.

    Raises:
        DecodeError: a character outside the alphabet, a length with remainder 1 modulo 3,
            or a group whose value does not fit its bytes (RFC 9285 §4.2).
    """
    n = len(text)
    if n % 3 == 1:
        raise DecodeError(f"base45 length {n} leaves a single character")
    out = bytearray()
    pair = _PAIR
    value = _VALUE
    try:
        full = n - n % 3
        for i in range(0, full, 3):
            v = pair[text[i : i + 2]] + value[text[i + 2]] * 2025
            if v > 0xFFFF:
                raise DecodeError(f"base45 group at {i} is {v}, above 65535")
            out.append(v >> 8)
            out.append(v & 0xFF)
        if n % 3 == 2:
            v = pair[text[full:]]
            if v > 0xFF:
                raise DecodeError(f"final base45 pair is {v}, above 255")
            out.append(v)
    except KeyError:
        bad = next(i for i, c in enumerate(text) if c not in value)
        raise DecodeError(f"character {bad} is not in the base45 alphabet") from None
    return bytes(out)
