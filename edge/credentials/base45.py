"""Base45 (RFC 9285), the QR-alphanumeric encoding of CK1 and HC1 texts.

Decoding is strict (credentials.md §3.2 check 2): every character must be one of the
45 of the alphabet, the length modulo 3 must not be 1, every 3-character group must be
at most 65,535 and a final 2-character group at most 255. Anything else raises
``DecodeError``; there is no "best effort" decoding of a damaged text.
"""

from __future__ import annotations

import numpy as np

from edge.credentials.errors import DecodeError

__all__ = ["ALPHABET", "decode", "encode"]

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
# Byte value -> digit value, 0xFF for bytes outside the alphabet.
_TABLE = bytes(ALPHABET.index(chr(b)) if chr(b) in ALPHABET else 0xFF for b in range(256))
_WEIGHTS = np.array([1, 45, 2025], dtype=np.uint32)


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
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise DecodeError("a non-ASCII character is not in the base45 alphabet") from None
    values = raw.translate(_TABLE)
    if 0xFF in values:
        raise DecodeError(f"character {values.index(0xFF)} is not in the base45 alphabet")
    full = n - n % 3
    # One vectorised pass over the 3-character groups: a QR text has up to ~1,400 of them.
    groups = np.frombuffer(values, np.uint8, full).reshape(-1, 3) @ _WEIGHTS
    if full and int(groups.max()) > 0xFFFF:
        bad = int(np.argmax(groups > 0xFFFF))
        raise DecodeError(f"base45 group {bad} is {int(groups[bad])}, above 65535")
    out = groups.astype(">u2").tobytes()
    if n % 3 == 2:
        v = values[full] + values[full + 1] * 45
        if v > 0xFF:
            raise DecodeError(f"final base45 pair is {v}, above 255")
        out += bytes((v,))
    return out
