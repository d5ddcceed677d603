"""Checksums and frame finders for the binary thermometer protocols (hardware.md §1.3, §1.4).

Pure functions over a byte buffer, no I/O, fuzzed (``bench/thermometer_fuzz.py``).
A frame check has three answers, Klipper-style (STYLE.md §2.1), carried by
:class:`FrameCheck`:

* ``length > 0``: ``buf[:length]`` is one whole, checked frame;
* ``length == 0``: need more bytes;
* ``length < 0``: discard ``-length`` bytes from the front; ``fault`` names the
  counter the discard belongs to (``bad_header``, ``bad_checksum``, ``bad_crc``)
  or is ``None`` for plain line noise. Discarded bytes always count as garbage.

The finders only ever ask to discard bytes that cannot start a frame, or exactly
one byte after a failed check (hardware.md §1.3 step 5, §1.4 steps 2-3): a real
frame that starts inside a broken one is still found.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "GY_HEADER",
    "GY_MAX_DATA",
    "GY_TYPE_TEMPERATURE",
    "NEED_MORE",
    "FrameCheck",
    "check_gy_frame",
    "check_modbus_reply",
    "crc16_modbus",
    "crc16_wire",
    "sum8",
]

GY_HEADER = b"\x5a\x5a"
GY_TYPE_TEMPERATURE = 0x45
GY_MAX_DATA = 8  # §1.3 step 3: longer data lengths are a broken header


class FrameCheck(NamedTuple):
    length: int
    fault: str | None = None


NEED_MORE = FrameCheck(0)


def sum8(data: bytes | bytearray | memoryview) -> int:
    """Low 8 bits of the byte sum (GY-MCU90614 commands and frames, §1.3)."""
    return sum(data) & 0xFF


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_modbus(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (init 0xFFFF, reflected poly 0xA001, no final xor), §1.4.

    Table-driven form of the bitwise definition in the spec; the vectors' CRC cases
    and the catalogue check value (``123456789`` → 0x4B37) pin it down. Over a whole
    good frame including its two CRC bytes the result is 0 (the residue check).
    """
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def crc16_wire(data: bytes | bytearray) -> bytes:
    """The two CRC bytes as sent on the wire: low byte first."""
    return crc16_modbus(data).to_bytes(2, "little")


def check_gy_frame(buf: bytes | bytearray) -> FrameCheck:
    """GY-MCU90614 frame check: the exact steps of hardware.md §1.3."""
    start = buf.find(GY_HEADER)
    if start < 0:
        # Step 1: no header. Keep a final 5A: it may be the first half of one.
        drop = len(buf) - (1 if buf and buf[-1] == 0x5A else 0)
        return FrameCheck(-drop) if drop else NEED_MORE
    if start:
        return FrameCheck(-start)  # step 2: noise before the header
    if len(buf) < 4:
        return NEED_MORE
    n = buf[3]
    if n > GY_MAX_DATA or (buf[2] == GY_TYPE_TEMPERATURE and n != 4):
        return FrameCheck(-1, "bad_header")  # step 3
    if len(buf) < n + 5:
        return NEED_MORE  # step 4
    if sum8(buf[: n + 4]) != buf[n + 4]:
        return FrameCheck(-1, "bad_checksum")  # step 5: one byte, not the frame
    return FrameCheck(n + 5)  # step 6


def check_modbus_reply(buf: bytes | bytearray, address: int, function: int, count: int) -> FrameCheck:
    """Reply check for one outstanding read request: the steps of hardware.md §1.4.

    A normal reply is ``5 + 2 * count`` bytes, an exception reply 5. The check never
    relies on inter-frame silence: USB-RS485 adapters split and merge reads.
    """
    normal = bytes((address, function))
    error = bytes((address, function | 0x80))
    a = buf.find(normal)
    b = buf.find(error)
    start = a if b < 0 else b if a < 0 else min(a, b)
    if start < 0:
        # Step 1: no candidate. A final address byte may start one: keep it.
        drop = len(buf) - (1 if buf and buf[-1] == address else 0)
        return FrameCheck(-drop) if drop else NEED_MORE
    if start:
        return FrameCheck(-start)
    if buf[1] == function:
        if len(buf) < 3:
            return NEED_MORE
        if buf[2] != 2 * count:
            return FrameCheck(-1)  # step 2: wrong byte count, plain garbage
        size = 5 + 2 * count
    else:
        size = 5  # step 3: exception reply
    if len(buf) < size:
        return NEED_MORE
    if crc16_modbus(buf[:size]):
        return FrameCheck(-1, "bad_crc")
    return FrameCheck(size)
