"""Reading with a byte cap, including through compression (bundles.md §1.7).

Reads stop at cap + 1 bytes (parts: listed length + 1) so that "one byte too
many" is seen without reading a hostile stream to its end. HTTP compression is
allowed, and caps apply to the decoded bytes, decoded as a stream: a gzip bomb
never inflates past the cap in memory.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable
from typing import BinaryIO

__all__ = ["CappedReader", "decode_capped", "read_capped"]

_CHUNK = 64 * 1024


def read_capped(stream: BinaryIO, max_bytes: int) -> bytes:
    """At most ``max_bytes`` bytes of ``stream`` (fewer when it ends first)."""
    out = bytearray()
    while len(out) < max_bytes:
        chunk = stream.read(min(_CHUNK, max_bytes - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def decode_capped(chunks: Iterable[bytes], content_encoding: str | None, max_bytes: int) -> bytes:
    """Decode a (possibly ``gzip`` or ``deflate`` encoded) body, keeping at most ``max_bytes`` decoded bytes.

    Args:
        chunks: the raw body as it arrives (e.g. ``httpx.Response.iter_raw()``).
        content_encoding: the ``Content-Encoding`` header (None, ``identity``, ``gzip``, ``deflate``).
        max_bytes: the cap on the decoded output; callers pass cap + 1 to detect "too long".

    Raises:
        ValueError: an unknown encoding or a corrupt compressed stream.
    """
    enc = (content_encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        out = bytearray()
        for chunk in chunks:
            out += chunk[: max_bytes - len(out)]
            if len(out) >= max_bytes:
                break
        return bytes(out)
    if enc in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        raise ValueError(f"unsupported Content-Encoding {enc!r}")
    out = bytearray()
    try:
        for chunk in chunks:
            data = chunk
            while data and len(out) < max_bytes:
                # max_length bounds the output of this call: memory stays within the cap.
                out += d.decompress(data, max_bytes - len(out))
                data = d.unconsumed_tail
            if len(out) >= max_bytes:
                break
        else:
            if len(out) < max_bytes:
                out += d.flush()[: max_bytes - len(out)]
    except zlib.error as exc:
        raise ValueError(f"corrupt {enc} stream: {exc}") from exc
    return bytes(out[:max_bytes])


class CappedReader(io.RawIOBase):
    """A file wrapper that raises ``ValueError`` once more than ``max_bytes`` have been read."""

    def __init__(self, inner: BinaryIO, max_bytes: int) -> None:
        super().__init__()
        self._inner = inner
        self._left = max_bytes
        self.max_bytes = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        if len(data) > self._left:
            raise ValueError(f"more than {self.max_bytes} bytes")
        self._left -= len(data)
        b[: len(data)] = data
        return len(data)
