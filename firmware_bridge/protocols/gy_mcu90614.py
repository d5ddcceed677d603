"""GY-MCU90614 / GY-MCU90615 UART modules (MLX9061x behind an STM32), hardware.md §1.3.

Host → module: 3-byte commands ``A5 <cmd> <sum8>``. The reader only ever sends
``continuous output`` and ``query once``: the baud and power-up commands exist here
so the simulator and the tests can name them, but a wrong write there strands a
module until someone reconfigures it by hand, so the reader never sends them.

Module → host: ``5A 5A 45 04 TOhi TOlo TAhi TAlo SUM`` (signed int16 big-endian,
0.01 °C). Frames of other types (emissivity, offset) are counted and skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from firmware_bridge.frames import GY_TYPE_TEMPERATURE, check_gy_frame, sum8
from firmware_bridge.protocols import Sample

__all__ = [
    "CMD_AUTO_OUTPUT_OFF",
    "CMD_AUTO_OUTPUT_ON",
    "CMD_BAUD_9600",
    "CMD_BAUD_115200",
    "CMD_CONTINUOUS",
    "CMD_QUERY",
    "GyMcu90614Parser",
    "GyStats",
    "command",
    "encode_frame",
]


def command(cmd: int) -> bytes:
    """``A5 cmd sum8``: a host command (§1.3)."""
    return bytes((0xA5, cmd, sum8((0xA5, cmd))))


CMD_CONTINUOUS = command(0x45)  # A5 45 EA: sent after every open and every init_retry_s
CMD_QUERY = command(0x15)  # A5 15 BA: one frame now (mode = "query")
CMD_BAUD_9600 = command(0xAE)  # never sent by the reader
CMD_BAUD_115200 = command(0xAF)  # never sent by the reader
CMD_AUTO_OUTPUT_ON = command(0x51)  # never sent by the reader
CMD_AUTO_OUTPUT_OFF = command(0x52)  # never sent by the reader


def _int16_centi(value_c: float) -> bytes:
    raw = max(-32768, min(32767, round(value_c * 100)))
    return raw.to_bytes(2, "big", signed=True)


def encode_frame(object_c: float, ambient_c: float) -> bytes:
    """A temperature frame as the module sends it (used by the simulator and tests)."""
    body = b"\x5a\x5a\x45\x04" + _int16_centi(object_c) + _int16_centi(ambient_c)
    return body + bytes((sum8(body),))


@dataclass(slots=True)
class GyStats:
    frames: int = 0
    other_frames: int = 0
    bad_checksum: int = 0
    bad_header: int = 0
    garbage_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def bad(self) -> int:
        """Frames that were not accepted (the reader's ``bad_frames``)."""
        return self.bad_checksum + self.bad_header


class GyMcu90614Parser:
    """Incremental frame parser; the exact algorithm of §1.3 lives in ``check_gy_frame``.

    The buffer never exceeds 12 bytes between feeds (a header with at most 8 data
    bytes still waiting for its checksum), so memory is bounded without a cap.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = GyStats()
        self.accepted_bytes = 0  # for the byte-accounting invariant (§1.1)

    @property
    def pending(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget buffered bytes (after ``reset_input_buffer``); they count as garbage."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes | bytearray) -> list[Sample]:
        buf = self._buf
        buf += data
        out: list[Sample] = []
        stats = self.stats
        while buf:
            length, fault = check_gy_frame(buf)
            if length == 0:
                break
            if length < 0:
                stats.garbage_bytes += -length
                if fault == "bad_header":
                    stats.bad_header += 1
                elif fault == "bad_checksum":
                    stats.bad_checksum += 1
                del buf[:-length]
                continue
            self.accepted_bytes += length
            if buf[2] == GY_TYPE_TEMPERATURE:
                stats.frames += 1
                obj = int.from_bytes(buf[4:6], "big", signed=True)
                amb = int.from_bytes(buf[6:8], "big", signed=True)
                out.append(Sample(round(obj / 100, 2), round(amb / 100, 2)))
            else:
                stats.other_frames += 1
            del buf[:length]
        return out
