"""Random byte streams for the parser fuzz (tests: 10,000 chunks; bench: 1,000,000).

Each stream mixes what a bad serial line really carries: good frames, frames with
one flipped byte, frames cut short, line noise, and for ASCII also labels, numbers,
overlong lines and bytes that are not UTF-8. The generator records the values of the
good frames: an accepted frame with other values is a *false accept*, bytes of a
cut frame and what followed it that happen to pass the check (1 in 256 for the GY
sum8, 1 in 65,536 for CRC-16 per candidate). Those are a property of the protocols,
not of the parsers; the fuzz counts them and bounds their share.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

from firmware_bridge.frames import crc16_wire
from firmware_bridge.protocols.ascii_lines import AsciiLineParser
from firmware_bridge.protocols.gy_mcu90614 import GyMcu90614Parser, encode_frame
from firmware_bridge.protocols.modbus_rtu import ModbusReplyParser

__all__ = ["PARSERS", "chunks", "run"]


def _noise(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(1, 24))


def _gy_piece(rng: random.Random, good: set[tuple[float, float]]) -> bytes:
    roll = rng.random()
    if roll < 0.45:
        obj, amb = rng.randint(-4000, 12000) / 100, rng.randint(-4000, 8000) / 100
        good.add((obj, amb))
        return encode_frame(obj, amb)
    frame = bytearray(encode_frame(rng.randint(2000, 4300) / 100, 25.0))
    if roll < 0.6:
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)  # one bad bit
        return bytes(frame)
    if roll < 0.75:
        return bytes(frame[: rng.randint(1, 8)])  # cut short
    if roll < 0.8:
        return b"\x5a" * rng.randint(1, 5)  # stray header bytes
    return _noise(rng)


def _modbus_piece(rng: random.Random, good: set[tuple[int, ...]], count: int) -> bytes:
    roll = rng.random()
    if roll < 0.45:
        regs = tuple(rng.randrange(65536) for _ in range(count))
        good.add(regs)
        pdu = bytes((1, 3, 2 * count)) + b"".join(r.to_bytes(2, "big") for r in regs)
        return pdu + crc16_wire(pdu)
    if roll < 0.55:
        pdu = bytes((1, 0x83, rng.randint(1, 6)))
        return pdu + crc16_wire(pdu)
    pdu = bytes((1, 3, 2 * count)) + rng.randbytes(2 * count)
    frame = bytearray(pdu + crc16_wire(pdu))
    if roll < 0.7:
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame)
    if roll < 0.8:
        return bytes(frame[: rng.randint(1, len(frame) - 1)])
    if roll < 0.85:
        return bytes((1, 3, 0, 0, 0, count)) + crc16_wire(bytes((1, 3, 0, 0, 0, count)))  # local echo
    return _noise(rng)


_WORDS = [b"Ambient = ", b"Object = ", b"TO:", b"TA:", b"T=", b"Temp: ", b"*C", b"\xc2\xb0C", b" ", b"\t",
          b"nan", b"inf", b"{", b"}", b"MLX90614 ready", b"-", b"+", b".", b",", b"\r", b"\n", b"\r\n"]


def _ascii_piece(rng: random.Random, good: set[Any]) -> bytes:
    roll = rng.random()
    if roll < 0.15:  # a well-formed line
        value = f"{rng.uniform(-40, 120):.2f}"
        return rng.choice([f"Ambient = 25.00*C\tObject = {value}*C\r\n", f"{value}\r\n", f"TO:{value}\n"]).encode()
    if roll < 0.5:
        return rng.choice(_WORDS)
    if roll < 0.8:
        return f"{rng.uniform(-50, 150):.{rng.randint(0, 3)}f}".encode()
    if roll < 0.85:
        return b"A" * rng.randint(100, 300)  # overlong line
    return _noise(rng)


def make_stream(kind: str, nbytes: int, seed: int = 1) -> tuple[bytes, set[Any]]:
    """About ``nbytes`` of the kind of stream ``kind`` sees, and the values of its good frames."""
    rng = random.Random(seed)
    good: set[Any] = set()
    if kind == "gy":
        piece: Callable[[], bytes] = lambda: _gy_piece(rng, good)  # noqa: E731
    elif kind in ("modbus1", "modbus2"):
        count = 1 if kind == "modbus1" else 2
        piece = lambda: _modbus_piece(rng, good, count)  # noqa: E731
    elif kind == "ascii":
        piece = lambda: _ascii_piece(rng, good)  # noqa: E731
    else:
        raise ValueError(kind)
    parts: list[bytes] = []
    size = 0
    while size < nbytes:
        parts.append(piece())
        size += len(parts[-1])
    return b"".join(parts), good


def chunks(stream: bytes, n: int, seed: int = 1) -> Iterator[bytes]:
    """``n`` chunks of 1-64 bytes cut from ``stream``, wrapping around at its end."""
    rng = random.Random(seed + 1)
    sizes = rng.choices(range(1, 65), k=n)
    data = stream + stream[:64]
    pos, end = 0, len(stream)
    for size in sizes:
        yield data[pos : pos + size]
        pos += size
        if pos >= end:
            pos -= end


def run(kind: str, n: int, seed: int = 1, stream: tuple[bytes, set[Any]] | None = None,
        clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Feed ``n`` random chunks to one parser; check bounds and accounting after each feed.

    Returns the parser's counters plus ``max_pending``, ``readings`` and
    ``false_accepts`` (and ``feed_s``, the time spent inside ``feed``, when ``clock``
    is given). Raises AssertionError when a bound or the byte accounting fails.
    """
    data, good = stream if stream is not None else make_stream(kind, 33 * n, seed)
    readings = 0
    false_accepts = 0
    max_pending = 0
    fed = 0
    spent = 0.0
    tick = clock or (lambda: 0.0)
    if kind == "gy":
        gy = GyMcu90614Parser()
        for chunk in chunks(data, n, seed):
            fed += len(chunk)
            t0 = tick()
            got = gy.feed(chunk)
            spent += tick() - t0
            for s in got:
                readings += 1
                false_accepts += (s.object_c, s.ambient_c) not in good
            max_pending = max(max_pending, gy.pending)
            assert gy.pending <= 13 + len(chunk)
            assert gy.accepted_bytes + gy.stats.garbage_bytes + gy.pending == fed
        stats = gy.stats.as_dict()
    elif kind in ("modbus1", "modbus2"):
        count = 1 if kind == "modbus1" else 2
        mb = ModbusReplyParser(1, 3, count)
        for chunk in chunks(data, n, seed):
            fed += len(chunk)
            t0 = tick()
            results = mb.feed(chunk)
            spent += tick() - t0
            for res in results:
                if hasattr(res, "registers"):
                    readings += 1
                    false_accepts += res.registers not in good
            max_pending = max(max_pending, mb.pending)
            assert mb.pending <= 5 + 2 * count + len(chunk)
            assert mb.accepted_bytes + mb.stats.garbage_bytes + mb.pending == fed
        stats = mb.stats.as_dict()
    elif kind == "ascii":
        asc = AsciiLineParser()
        for chunk in chunks(data, n, seed):
            fed += len(chunk)
            t0 = tick()
            got = asc.feed(chunk)
            spent += tick() - t0
            for s in got:
                readings += 1
                assert math.isfinite(s.object_c) and (s.ambient_c is None or math.isfinite(s.ambient_c))
            max_pending = max(max_pending, asc.pending)
            assert asc.pending <= 129 + len(chunk)
            st = asc.stats
            assert st.lines == st.readings + st.bad + st.ignored
        stats = asc.stats.as_dict()
    else:
        raise ValueError(kind)
    return {**stats, "chunks": n, "bytes": fed, "readings": readings, "false_accepts": false_accepts,
            "max_pending": max_pending, "feed_s": spent}


PARSERS = ("gy", "modbus1", "modbus2", "ascii")
