"""Modbus RTU infrared transmitters (RS-485), hardware.md §1.4.

The reader only reads (FC 03 holding or FC 04 input registers); it never writes a
register. Replies are framed by our own parser (``check_modbus_reply``) rather than
pymodbus's ``FramerRTU``: fed noise, an adapter's local echo or another slave's reply
before ours in one read, that framer consumed the whole buffer and lost our reply or
returned the wrong slave's (§1.4). pymodbus stays in the tests as the independent
client against the simulator and as a CRC cross-check.

Register map (every field configurable, defaults = the common map): object at
register 0, ambient at 1, int16 × 0.1 °C. One request reads both when the ambient
register directly follows the object value; otherwise two requests per poll.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass
from typing import Literal

from firmware_bridge.errors import ProtocolConfigError
from firmware_bridge.frames import check_modbus_reply, crc16_wire
from firmware_bridge.protocols import Sample

__all__ = [
    "EXCEPTION_NAMES",
    "ModbusException",
    "ModbusMap",
    "ModbusReply",
    "ModbusReplyParser",
    "ModbusStats",
    "ReadRequest",
    "build_read_request",
    "decode_value",
    "exception_text",
]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "busy",
}

# What the technician should look at for each exception (the text of §1.4 for 02).
_EXCEPTION_HINTS = {
    1: "check [thermometer.modbus] function",
    2: "check [thermometer.modbus] registers",
    3: "check [thermometer.modbus] registers and format",
    4: "check the sensor",
    5: "the device is busy; it should answer later",
    6: "the device is busy; it should answer later",
}

Format = Literal["int16", "uint16", "float32"]


def exception_text(code: int) -> str:
    """``modbus exception 02 (illegal data address): check [thermometer.modbus] registers``."""
    name = EXCEPTION_NAMES.get(code, "unknown exception")
    hint = _EXCEPTION_HINTS.get(code, "check the device manual")
    return f"modbus exception {code:02d} ({name}): {hint}"


def build_read_request(address: int, function: int, start: int, count: int) -> bytes:
    """``addr fc start_hi start_lo count_hi count_lo crc_lo crc_hi``."""
    if not 1 <= address <= 247:
        raise ProtocolConfigError(f"modbus address {address} outside 1-247")
    if function not in (3, 4):
        raise ProtocolConfigError(f"modbus function {function}: only 3 (holding) and 4 (input) are read")
    if not 1 <= count <= 125 or not 0 <= start <= 0xFFFF or start + count > 0x10000:
        raise ProtocolConfigError(f"modbus read of {count} registers at {start} is out of range")
    pdu = bytes((address, function)) + start.to_bytes(2, "big") + count.to_bytes(2, "big")
    return pdu + crc16_wire(pdu)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    start: int
    count: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class ModbusMap:
    """``[thermometer.modbus]`` register map (§1.4); validated on construction."""

    address: int = 1
    function: int = 3
    object_register: int = 0
    ambient_register: int | None = 1
    format: Format = "int16"
    scale: float = 0.1
    word_order: Literal["big", "little"] = "big"

    def __post_init__(self) -> None:
        if self.format not in ("int16", "uint16", "float32"):
            raise ProtocolConfigError(f"modbus format {self.format!r}: use int16, uint16 or float32")
        if self.word_order not in ("big", "little"):
            raise ProtocolConfigError(f"modbus word_order {self.word_order!r}: use big or little")
        if not (isinstance(self.scale, int | float) and math.isfinite(self.scale) and self.scale > 0):
            raise ProtocolConfigError(f"modbus scale {self.scale!r} must be a positive number")
        w = self.width
        obj, amb = self.object_register, self.ambient_register
        if amb is not None and amb != obj and abs(amb - obj) < w:
            raise ProtocolConfigError(
                f"modbus ambient_register {amb} overlaps the {self.format} object value at {obj}"
            )
        if amb == obj:
            raise ProtocolConfigError("modbus ambient_register equals object_register")
        # Build the requests now so that a bad map fails when it is loaded, not at the first poll.
        self.requests()

    @property
    def width(self) -> int:
        """Registers per value: float32 spans two."""
        return 2 if self.format == "float32" else 1

    def requests(self) -> tuple[ReadRequest, ...]:
        """The read requests of one poll: one when the ambient follows the object, else two."""
        w = self.width
        obj, amb = self.object_register, self.ambient_register
        if amb is None:
            spans = [(obj, w)]
        elif amb == obj + w:
            spans = [(obj, 2 * w)]
        else:
            spans = [(obj, w), (amb, w)]
        return tuple(
            ReadRequest(s, n, build_read_request(self.address, self.function, s, n)) for s, n in spans
        )

    def decode(self, replies: list[tuple[int, ...]]) -> Sample | None:
        """Registers of one poll (one tuple per request) → a sample; None for a NaN/inf float."""
        w = self.width
        regs = [r for reply in replies for r in reply]
        obj = decode_value(regs[:w], self.format, self.scale, self.word_order)
        amb = None
        if self.ambient_register is not None:
            amb = decode_value(regs[w : 2 * w], self.format, self.scale, self.word_order)
            if amb is None:
                return None
        if obj is None:
            return None
        return Sample(obj, amb)


def decode_value(
    registers: list[int] | tuple[int, ...], fmt: str, scale: float, word_order: str = "big"
) -> float | None:
    """``value_c = round(raw × scale, 2)``; raw signed for int16, IEEE-754 for float32."""
    if fmt == "float32":
        hi, lo = registers[0], registers[1]
        if word_order == "little":
            hi, lo = lo, hi
        raw: float = struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
        if not math.isfinite(raw):
            return None
    elif fmt == "int16":
        raw = registers[0] - 0x10000 if registers[0] & 0x8000 else registers[0]
    else:
        raw = registers[0]
    value = round(raw * scale, 2)
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class ModbusReply:
    registers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModbusException:
    code: int

    @property
    def text(self) -> str:
        return exception_text(self.code)


@dataclass(slots=True)
class ModbusStats:
    replies: int = 0
    exceptions: int = 0
    bad_crc: int = 0
    garbage_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def bad(self) -> int:
        return self.bad_crc


class ModbusReplyParser:
    """Reply framer for one outstanding request (address, function, register count).

    ``expect()`` switches to the next request and drops anything still buffered
    (counted as garbage); counters are cumulative. The buffer stays below one
    reply (``5 + 2n`` bytes) between feeds.
    """

    def __init__(self, address: int = 1, function: int = 3, count: int = 1) -> None:
        self._buf = bytearray()
        self.stats = ModbusStats()
        self.accepted_bytes = 0
        self.address, self.function, self.count = address, function, count

    @property
    def pending(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()

    def expect(self, address: int, function: int, count: int) -> None:
        self.reset()
        self.address, self.function, self.count = address, function, count

    def feed(self, data: bytes | bytearray) -> list[ModbusReply | ModbusException]:
        buf = self._buf
        buf += data
        out: list[ModbusReply | ModbusException] = []
        stats = self.stats
        while buf:
            length, fault = check_modbus_reply(buf, self.address, self.function, self.count)
            if length == 0:
                break
            if length < 0:
                stats.garbage_bytes += -length
                if fault == "bad_crc":
                    stats.bad_crc += 1
                del buf[:-length]
                continue
            self.accepted_bytes += length
            if buf[1] == self.function:
                stats.replies += 1
                out.append(ModbusReply(struct.unpack(f">{self.count}H", buf[3 : 3 + 2 * self.count])))
            else:
                stats.exceptions += 1
                out.append(ModbusException(buf[2]))
            del buf[:length]
        return out
