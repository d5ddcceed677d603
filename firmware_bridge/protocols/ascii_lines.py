"""ASCII line devices (Arduino/ESP32 + MLX90614 sketches, kiosk modules), hardware.md §1.5.

A line ends at CR, LF or CR LF; empty lines are skipped and not counted. Rules per
line, in order:

1. Longer than ``max_line_bytes`` (128) without a terminator: dropped up to the next
   terminator, ``overflow += 1`` (not a line). Every other non-empty line counts in
   ``lines`` and in exactly one of ``readings``, ``bad``, ``ignored``.
2. Not valid UTF-8, or a control character other than TAB: ``bad``. Reset noise and
   corrupted digits: a number is never guessed out of a garbled line.
3. ``nan`` or ``inf`` as a word (an Arduino's failed sensor read): ``bad``.
4. ``object_pattern`` → object, ``ambient_pattern`` → ambient (else none); otherwise
   ``bare_pattern`` matching the whole line → object; otherwise ``ignored``.
5. The value is a decimal; ``unit = "F"`` converts (x − 32) × 5/9; rounded half up
   to 0.01 °C in decimal arithmetic.

There is no checksum in this protocol: the rules above are all that stands between
a noisy line and a number, which is why they refuse rather than guess.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Literal

from firmware_bridge.errors import ProtocolConfigError
from firmware_bridge.protocols import Sample

__all__ = [
    "AMBIENT_PATTERN",
    "BAD_PATTERN",
    "BARE_PATTERN",
    "MAX_LINE_BYTES",
    "OBJECT_PATTERN",
    "AsciiLineParser",
    "AsciiStats",
    "LineResult",
    "compile_pattern",
]

OBJECT_PATTERN = r"(?i)(?<![a-z])(?:object|obj|to|temp|t)\s*[:=]\s*(?P<v>[-+]?\d+(?:\.\d+)?)"
AMBIENT_PATTERN = r"(?i)(?<![a-z])(?:ambient|amb|ta)\s*[:=]\s*(?P<v>[-+]?\d+(?:\.\d+)?)"
BARE_PATTERN = r"^\s*\{?\s*(?P<v>[-+]?\d+(?:\.\d+)?)\s*(?:°|\*)?\s*[cC]?\s*\}?\s*$"
BAD_PATTERN = r"(?i)(?<![a-z])(?:nan|inf)(?![a-z])"
MAX_LINE_BYTES = 128

_BAD = re.compile(BAD_PATTERN)
_TERMINATOR = re.compile(rb"[\r\n]")
_CENTI = Decimal("0.01")


def compile_pattern(pattern: str | None, default: str, key: str) -> re.Pattern[str]:
    """Compile a configured pattern; it must have a group named ``v`` (the value)."""
    text = default if pattern is None or pattern == "" else pattern
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise ProtocolConfigError(f"[thermometer.ascii] {key}: not a valid regular expression: {exc}") from exc
    if "v" not in compiled.groupindex:
        raise ProtocolConfigError(f"[thermometer.ascii] {key}: needs a group named v, like (?P<v>...)")
    return compiled


@dataclass(frozen=True, slots=True)
class LineResult:
    kind: Literal["reading", "bad", "ignored"]
    sample: Sample | None = None


@dataclass(slots=True)
class AsciiStats:
    lines: int = 0
    readings: int = 0
    ignored: int = 0
    bad: int = 0
    overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class AsciiLineParser:
    """Incremental line parser; between feeds at most ``max_line_bytes`` are buffered."""

    def __init__(
        self,
        *,
        unit: str = "C",
        object_pattern: str | None = None,
        ambient_pattern: str | None = None,
        bare_pattern: str | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        if unit not in ("C", "F"):
            raise ProtocolConfigError(f'[thermometer.ascii] unit {unit!r}: use "C" or "F"')
        if max_line_bytes < 1:
            raise ProtocolConfigError("max_line_bytes must be positive")
        self.unit = unit
        self.object_re = compile_pattern(object_pattern, OBJECT_PATTERN, "object_pattern")
        self.ambient_re = compile_pattern(ambient_pattern, AMBIENT_PATTERN, "ambient_pattern")
        self.bare_re = compile_pattern(bare_pattern, BARE_PATTERN, "bare_pattern")
        self.max_line_bytes = max_line_bytes
        self.stats = AsciiStats()
        self._buf = bytearray()
        self._discarding = False  # inside an overflowed line: drop up to the next terminator

    @property
    def pending(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget the buffered partial line."""
        self._buf.clear()
        self._discarding = False

    def resync(self) -> None:
        """Drop everything up to the next terminator (not counted as overflow).

        After ``reset_input_buffer()`` the next byte may be in the middle of a line,
        and a line's tail can look like a whole reading: ``34.35`` cut after the dot
        reads as ``35``, a plausible forehead value. The reader calls this after every
        flush and loses at most one complete line.
        """
        self._buf.clear()
        self._discarding = True

    def feed(self, data: bytes | bytearray) -> list[Sample]:
        out: list[Sample] = []
        pos, size = 0, len(data)
        buf = self._buf
        while pos < size:
            m = _TERMINATOR.search(data, pos)
            end = m.start() if m else size
            if not self._discarding and end > pos:
                if len(buf) + (end - pos) > self.max_line_bytes:
                    self.stats.overflow += 1
                    self._discarding = True
                    buf.clear()
                else:
                    buf += data[pos:end]
            if m is None:
                break
            if not self._discarding and buf:
                result = self.classify(bytes(buf))
                if result.sample is not None:
                    out.append(result.sample)
            buf.clear()
            self._discarding = False
            pos = end + 1
        return out

    def classify(self, line: bytes) -> LineResult:
        """Rules 2-5 for one non-empty line without its terminator; updates the counters."""
        result = self._classify(line)
        self.stats.lines += 1
        if result.kind == "reading":
            self.stats.readings += 1
        elif result.kind == "bad":
            self.stats.bad += 1
        else:
            self.stats.ignored += 1
        return result

    def _classify(self, line: bytes) -> LineResult:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return LineResult("bad")
        for ch in text:
            if ch != "\t" and unicodedata.category(ch) == "Cc":
                return LineResult("bad")
        if _BAD.search(text):
            return LineResult("bad")
        obj_m = self.object_re.search(text)
        amb_m = None
        if obj_m is not None:
            amb_m = self.ambient_re.search(text)
        else:
            obj_m = self.bare_re.fullmatch(text)
            if obj_m is None:
                return LineResult("ignored")
        obj = self._convert(obj_m.group("v"))
        amb = self._convert(amb_m.group("v")) if amb_m is not None else None
        if obj is None or (amb_m is not None and amb is None):
            return LineResult("bad")
        return LineResult("reading", Sample(obj, amb))

    def _convert(self, text: str | None) -> float | None:
        if text is None:
            return None
        try:
            value = Decimal(text)
        except InvalidOperation:
            return None
        if not value.is_finite():
            return None
        try:
            if self.unit == "F":
                value = (value - 32) * 5 / 9
            # More digits than the decimal context holds is not a temperature: bad, not a guess.
            return float(value.quantize(_CENTI, rounding=ROUND_HALF_UP))
        except InvalidOperation:
            return None
