"""A pty thermometer that speaks each protocol, with injectable faults (hardware.md §1.11).

The reader side is the real serial path: the simulator opens a pty pair, makes a
stable symlink (``port``) point at the slave, and the reader opens that path like a
USB adapter. The simulator does not keep the slave open itself, so it sees the host
open and close the port (the master reports a hang-up while nobody has it open), and
bytes written while nobody listens are lost, as on a real line.

Scene: with nobody present the object reads ``ambient ± 0.1``. With ``people`` the
next person stands in front every ``every_s`` for ``stay_s``: the object ramps to
their value over 0.3 s, then holds with ±0.05 noise (seeded); a ``*2`` entry steps
away for 1.5 s and presents again (a re-measure). ``present()``/``absent()`` switch
to a manual, noise-free scene for deterministic tests and the demo.

Protocols: GY-MCU90614 streams frames every ``period_s`` (continuous mode), answers
``A5 15 BA`` with one frame, and honours the continuous and power-up commands;
Modbus answers FC 03/04 for registers 0 (object × 10) and 1 (ambient × 10) after
5–20 ms, exception 02 outside them and 01 for other functions, and ignores frames for
other addresses or with a bad CRC; ASCII prints ``Ambient = 25.00*C<TAB>Object =
34.20*C`` (or ``34.20`` with ``ascii_format="bare"``) every ``period_s``, or only
when it receives the ``request`` line.

Faults (per frame/reply/line probabilities, timed items in seconds after start, a
timed item may repeat): ``garbage=P``, ``bad_checksum=P``, ``split=P``, ``drop=P``,
``silence=AT+DUR``, ``unplug=AT+DUR``, ``reset=AT``, ``fever=AT+DUR``, ``cold=AT+DUR``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import random
import select
import shutil
import struct
import tempfile
import threading
import time
import tty
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_bridge.errors import BridgeError
from firmware_bridge.frames import crc16_modbus, crc16_wire, sum8
from firmware_bridge.protocols import PROTOCOLS
from firmware_bridge.protocols.gy_mcu90614 import encode_frame

__all__ = [
    "DEFAULT_PEOPLE",
    "FaultPlan",
    "Person",
    "SimError",
    "ThermometerSim",
    "default_link",
    "parse_faults",
    "parse_people",
]

log = logging.getLogger(__name__)

DEFAULT_PEOPLE = "34.2,34.6,34.0,35.5*2,34.3"
BANNER = b"MLX90614 ready\r\n"
RAMP_S = 0.3
STEP_AWAY_S = 1.5
RESET_SILENCE_S = 1.5
SPLIT_GAP_S = 0.020
FEVER_C = 35.50
COLD_AMBIENT_C = 4.50
COLD_PERSON_C = 31.2
HOST_BYTES_MAX = 1 << 20  # keep the newest MiB of what the host wrote
_PROBABILITY_FAULTS = ("garbage", "bad_checksum", "split", "drop")
_TIMED_FAULTS = ("silence", "unplug", "reset", "fever", "cold")


class SimError(BridgeError, ValueError):
    """Simulator arguments that cannot work (bad fault spec, people list, link path)."""


def default_link(protocol: str) -> Path:
    """``$XDG_RUNTIME_DIR/checkpoint/thermometer-<protocol>``, else under the temp dir (§1.11)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "checkpoint" if base else Path(tempfile.gettempdir()) / f"checkpoint-{os.getuid()}"
    return root / f"thermometer-{protocol}"


@dataclass(frozen=True, slots=True)
class Person:
    object_c: float
    presentations: int = 1


def parse_people(spec: str | Sequence[float | str | Person] | None) -> tuple[Person, ...]:
    """``"34.2,34.6,35.5*2"`` → people; ``*2`` presents twice (a re-measure)."""
    if spec is None:
        return ()
    items: Iterable[Any] = spec.split(",") if isinstance(spec, str) else spec
    people = []
    for item in items:
        if isinstance(item, Person):
            people.append(item)
            continue
        text = str(item).strip()
        if not text:
            continue
        value, _, times = text.partition("*")
        try:
            c = float(value)
            n = int(times) if times else 1
        except ValueError:
            raise SimError(f"people: {text!r} is not a temperature like 34.2 or 35.5*2") from None
        if not 20.0 <= c <= 45.0 or n not in (1, 2):
            raise SimError(f"people: {text!r} out of range (20-45 °C, *2 at most)")
        people.append(Person(c, n))
    return tuple(people)


@dataclass
class FaultPlan:
    probabilities: dict[str, float] = field(default_factory=dict)
    timed: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, at_s, duration_s)


def parse_faults(spec: str | None) -> FaultPlan:
    """Parse ``garbage=0.1,silence=10+3,reset=30`` (hardware.md §1.11)."""
    plan = FaultPlan()
    if not spec:
        return plan
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep:
            raise SimError(f"faults: {item!r} needs a value (garbage=0.1, silence=10+3, reset=30)")
        try:
            if kind in _PROBABILITY_FAULTS:
                p = float(value)
                if not 0.0 <= p <= 1.0:
                    raise ValueError
                plan.probabilities[kind] = p
            elif kind == "reset":
                at = float(value)
                if not 0 <= at < 1e6:
                    raise ValueError
                plan.timed.append((kind, at, RESET_SILENCE_S))
            elif kind in _TIMED_FAULTS:
                at_text, plus, dur_text = value.partition("+")
                at, dur = float(at_text), float(dur_text)
                if not plus or not 0 <= at < 1e6 or not 0 < dur < 1e6:
                    raise ValueError
                plan.timed.append((kind, at, dur))
            else:
                known = ", ".join(_PROBABILITY_FAULTS + _TIMED_FAULTS)
                raise SimError(f"faults: unknown item {kind!r} (known: {known})")
        except ValueError:
            form = "P (0-1)" if kind in _PROBABILITY_FAULTS else "AT" if kind == "reset" else "AT+DUR (seconds)"
            raise SimError(f"faults: {item!r}: expected {kind}={form}") from None
    plan.timed.sort(key=lambda t: t[1])
    return plan


def _int16(value: float) -> int:
    return max(-32768, min(32767, round(value))) & 0xFFFF


class ThermometerSim:
    """The pty simulator; ``port`` is the stable link path the reader opens.

    Args:
        protocol: ``gy-mcu90614``, ``modbus-rtu`` or ``ascii``.
        seed: for noise, fault draws and reply delays.
        period_s: output period (GY 0.1 s, ASCII 0.5 s; Modbus answers requests).
        people: the automatic scene (``"34.2,35.5*2"``); None: nobody, until ``present()``.
        faults: a ``--faults`` string or a ``FaultPlan``.
        link: the symlink to create; default a fresh temporary directory (tests run
            simulators side by side; the CLI passes ``default_link()``).
        reset_on_open: behave like an Arduino whose auto-reset capacitor restarts it
            whenever the host opens the port (1.5 s silence, noise, banner).
        auto_output: GY power-up behaviour (``A5 51 F6`` on / ``A5 52 F7`` off).
        reset_silence_s: the silence of a reset (1.5 s as §1.11; shorter in fast tests).
    """

    def __init__(
        self,
        protocol: str,
        *,
        seed: int = 0,
        period_s: float | None = None,
        ambient_c: float = 25.0,
        people: str | Sequence[float | str | Person] | None = None,
        every_s: float = 5.0,
        stay_s: float = 2.0,
        faults: str | FaultPlan | None = None,
        link: str | os.PathLike[str] | None = None,
        address: int = 1,
        ascii_format: str = "labels",
        request: str | None = None,
        reset_on_open: bool = False,
        auto_output: bool = True,
        reset_silence_s: float = RESET_SILENCE_S,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise SimError(f"protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if ascii_format not in ("labels", "bare"):
            raise SimError(f"ascii format {ascii_format!r}: use labels or bare")
        if not 1 <= address <= 247:
            raise SimError(f"modbus address {address} outside 1-247")
        period = period_s if period_s is not None else (0.5 if protocol == "ascii" else 0.1)
        if not 0.005 <= period <= 60:
            raise SimError(f"period {period!r} s out of range (0.005-60)")
        if not -40 <= ambient_c <= 60:
            raise SimError(f"ambient {ambient_c!r} °C out of range (-40-60)")
        if not (0 < stay_s < every_s <= 3600):
            raise SimError("every_s must be longer than stay_s (someone has to leave before the next one comes)")
        self.protocol = protocol
        self.period_s = period
        self.ambient_c = ambient_c
        self.people = parse_people(people)
        self.every_s, self.stay_s = every_s, stay_s
        self.plan = faults if isinstance(faults, FaultPlan) else parse_faults(faults)
        self.address = address
        self.ascii_format = ascii_format
        self.request = request.strip() if request and request.strip() else None
        self.reset_on_open = reset_on_open
        self.auto_output = auto_output
        if not 0 <= reset_silence_s <= 60:
            raise SimError(f"reset silence {reset_silence_s!r} s out of range (0-60)")
        self.reset_silence_s = reset_silence_s
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._manual: tuple[float, float | None] | None = None  # present(): (object, ambient)
        self._manual_mode = False
        self._inject: collections.Counter[str] = collections.Counter()
        self._sent: collections.Counter[str] = collections.Counter()
        self._host = bytearray()
        self._host_total = 0
        self._rx = bytearray()
        self._out: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last_due = 0.0
        self._silence_until = 0.0
        self._reset_until: float | None = None  # Arduino-style reset in progress
        self._unplugged_until: float | None = None
        self._gy_continuous = auto_output
        self._connected = False
        self._master: int | None = None
        self.pty_path = ""
        self.replugged_mono: float | None = None
        self._closed = False
        self._own_dir: Path | None = None
        if link is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="checkpoint-sim-"))
            link = self._own_dir / f"thermometer-{protocol}"
        self.port = str(link)
        self._link = Path(link)
        self._check_link()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._open_pty()
        self._start = time.monotonic()
        self._next_emit = self._start
        self._timed = list(self.plan.timed)  # not yet started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"thermometer-sim:{protocol}", daemon=True)
        self._thread.start()
        log.info("thermometer-sim protocol=%s port=%s pty=%s", protocol, self.port, self.pty_path)

    # ---- Python API (§1.11) -------------------------------------------------------------------

    def present(self, object_c: float, ambient_c: float | None = None) -> None:
        """Someone stands in front, reading exactly ``object_c`` (manual scene, no noise)."""
        with self._lock:
            self._manual_mode = True
            self._manual = (float(object_c), None if ambient_c is None else float(ambient_c))

    def absent(self) -> None:
        """Nobody in front: the object reads the ambient (manual scene, no noise)."""
        with self._lock:
            self._manual_mode = True
            self._manual = None

    def inject(self, kind: str, count: int = 1) -> None:
        """Apply ``kind`` (garbage, bad_checksum, split, drop) to the next ``count`` frames."""
        if kind not in _PROBABILITY_FAULTS:
            raise SimError(f"inject: {kind!r} is not one of {', '.join(_PROBABILITY_FAULTS)}")
        with self._lock:
            self._inject[kind] += max(0, int(count))

    def silence(self, duration_s: float) -> None:
        """Send nothing for ``duration_s`` (the port stays open)."""
        with self._lock:
            self._silence_until = max(self._silence_until, time.monotonic() + duration_s)
        self._wake()

    def unplug(self, duration_s: float) -> None:
        """Close the master and remove the link; after ``duration_s`` a new pty, link re-pointed."""
        with self._lock:
            self._do_unplug(time.monotonic(), duration_s)
        self._wake()

    def reset(self) -> None:
        """Arduino-style reset: ``reset_silence_s`` (1.5 s) silence, 2-6 noise bytes, the banner, then normal output."""
        with self._lock:
            self._reset_until = time.monotonic() + self.reset_silence_s
            self._out.clear()
        self._wake()

    @property
    def host_bytes(self) -> bytes:
        """Everything the host wrote (the newest MiB of it)."""
        with self._lock:
            return bytes(self._host)

    @property
    def sent(self) -> dict[str, int]:
        """Counters per frame kind: ``frames`` written, ``good`` ones among them, and one per fault."""
        with self._lock:
            return dict(self._sent)

    @property
    def connected(self) -> bool:
        """Whether the host has the port open."""
        with self._lock:
            return self._connected

    @property
    def plugged(self) -> bool:
        with self._lock:
            return self._master is not None

    @property
    def gy_continuous(self) -> bool:
        with self._lock:
            return self._gy_continuous

    def scene(self, at_s: float | None = None) -> tuple[float, float]:
        """(object, ambient) the sensor sees ``at_s`` seconds after start (default now), without noise."""
        with self._lock:
            now = time.monotonic() if at_s is None else self._start + at_s
            return self._scene(now, noise=False)

    def close(self) -> None:
        """Stop, close the pty, remove the link; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._lock:
            self._close_pty(remove_link=True)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> ThermometerSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ThermometerSim {self.protocol} port={self.port} pty={self.pty_path}>"

    # ---- pty and link -------------------------------------------------------------------------

    def _check_link(self) -> None:
        link = self._link
        if link.exists() and not link.is_symlink():
            raise SimError(f"link {link} exists and is not a symlink: refusing to replace it")
        link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self.pty_path = os.ttyname(slave)
        os.close(slave)  # see the module docstring: we watch the host open and close it
        os.set_blocking(master, False)
        self._master = master
        self._connected = False
        tmp = self._link.with_name(self._link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.pty_path, tmp)
        os.replace(tmp, self._link)  # atomic: a reader never sees a missing or half-made link

    def _close_pty(self, *, remove_link: bool) -> None:
        if remove_link:
            with contextlib.suppress(OSError):
                if self._link.is_symlink() and os.readlink(self._link) == self.pty_path:
                    self._link.unlink()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
        self._connected = False
        self._out.clear()

    def _do_unplug(self, now: float, duration_s: float) -> None:
        if self._master is None:
            self._unplugged_until = max(self._unplugged_until or now, now + duration_s)
            return
        self._sent["unplug"] += 1
        self._close_pty(remove_link=True)  # link first, so a reader's retry finds nothing
        self._unplugged_until = now + duration_s
        self._rx.clear()

    def _replug(self, now: float) -> None:
        self._unplugged_until = None
        self._open_pty()
        self.replugged_mono = time.monotonic()  # when the port reappeared (bench: reconnect latency)
        self._gy_continuous = self.auto_output  # §1.11: power-up behaviour applied
        self._reset_until = None
        self._next_emit = now
        log.info("thermometer-sim protocol=%s replugged pty=%s", self.protocol, self.pty_path)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # ---- scene --------------------------------------------------------------------------------

    def _active(self, kind: str, t: float) -> bool:
        return any(k == kind and at <= t < at + dur for k, at, dur in self.plan.timed)

    def _scene(self, now: float, *, noise: bool = True) -> tuple[float, float]:
        t = now - self._start
        cold = self._active("cold", t)
        ambient = COLD_AMBIENT_C if cold else self.ambient_c
        target: float | None = None
        since = 1.0  # seconds into the current presentation (for the ramp)
        if self._manual_mode:
            if self._manual is not None:
                target = self._manual[0]
                if self._manual[1] is not None and not cold:
                    ambient = self._manual[1]
            noise = False
        elif self.people:
            target, since = self._person_at(t)
        if target is None:
            jitter = self._rng.uniform(-0.1, 0.1) if noise else 0.0
            return round(ambient + jitter, 2), ambient
        if self._active("fever", t):
            target = FEVER_C
        if cold:
            target = COLD_PERSON_C
        if since < RAMP_S:
            return round(ambient + (target - ambient) * since / RAMP_S, 2), ambient
        jitter = self._rng.uniform(-0.05, 0.05) if noise else 0.0
        return round(target + jitter, 2), ambient

    def _slot_len(self, person: Person) -> float:
        return self.every_s + (person.presentations - 1) * (STEP_AWAY_S + self.stay_s)

    def _person_at(self, t: float) -> tuple[float | None, float]:
        cycle = sum(self._slot_len(p) for p in self.people)
        t %= cycle
        for person in self.people:
            length = self._slot_len(person)
            if t < length:
                t -= self.every_s - self.stay_s  # the empty lead-in of the slot
                for _ in range(person.presentations):
                    if 0 <= t < self.stay_s:
                        return person.object_c, t
                    t -= self.stay_s + STEP_AWAY_S
                return None, 0.0
            t -= length
        return None, 0.0

    # ---- output -------------------------------------------------------------------------------

    def _quiet(self, now: float) -> bool:
        return (self._master is None or now < self._silence_until
                or (self._reset_until is not None and now < self._reset_until))

    def _take(self, kind: str) -> bool:
        if self._inject[kind] > 0:
            self._inject[kind] -= 1
            return True
        p = self.plan.probabilities.get(kind, 0.0)
        return p > 0 and self._rng.random() < p

    def _emit(self, frame: bytes, now: float, kind: str = "frames") -> None:
        """Queue one frame/reply/line with the per-frame faults of §1.11 applied."""
        if self._take("drop"):
            self._sent["drop"] += 1
            return
        good = True
        if self._take("bad_checksum"):
            frame = self._corrupt(frame)
            self._sent["bad_checksum"] += 1
            good = False
        if self._take("garbage"):
            noise = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 8)))
            if self.protocol == "ascii":
                noise = noise.replace(b"\r", b"\x80").replace(b"\n", b"\x81")  # same line, not a new one
            frame = noise + frame
            self._sent["garbage"] += 1
        pieces = [frame]
        if len(frame) >= 3 and self._take("split"):
            cuts = sorted(self._rng.sample(range(1, len(frame)), self._rng.randint(1, 2)))
            pieces = [frame[i:j] for i, j in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
            self._sent["split"] += 1
        self._sent[kind] += 1
        if good:
            self._sent["good"] += 1
        for i, piece in enumerate(pieces):
            self._queue(piece, now + i * SPLIT_GAP_S)

    def _queue(self, data: bytes, due: float) -> None:
        # FIFO: a line carries one frame at a time, so a later frame never overtakes split pieces.
        due = max(due, self._last_due)
        self._last_due = due
        self._out.append((due, data))

    def _corrupt(self, frame: bytes) -> bytes:
        if self.protocol != "ascii":
            return frame[:-1] + bytes((frame[-1] ^ 0x01,))  # GY sum8 / Modbus CRC high byte
        digits = [i for i, b in enumerate(frame) if 0x30 <= b <= 0x39]
        i = self._rng.choice(digits)
        return frame[:i] + bytes((self._rng.randint(0x80, 0xFF),)) + frame[i + 1 :]

    def _frame(self, now: float) -> bytes:
        obj, amb = self._scene(now)
        if self.protocol == "gy-mcu90614":
            return encode_frame(obj, amb)
        if self.ascii_format == "bare":
            return f"{obj:.2f}\r\n".encode()
        return f"Ambient = {amb:.2f}*C\tObject = {obj:.2f}*C\r\n".encode()

    def _flush_out(self, now: float) -> None:
        while self._out and self._out[0][0] <= now and self._master is not None:
            _, data = self._out.popleft()
            try:
                os.write(self._master, data)
            except BlockingIOError:
                self._sent["overrun"] += 1  # the host is not reading: a real line drops bytes too
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise

    # ---- host bytes -------------------------------------------------------------------------

    def _received(self, data: bytes, now: float) -> None:
        self._host += data
        self._host_total += len(data)
        if len(self._host) > HOST_BYTES_MAX:
            del self._host[: len(self._host) - HOST_BYTES_MAX]
        self._rx += data
        if self.protocol == "gy-mcu90614":
            self._gy_commands(now)
        elif self.protocol == "modbus-rtu":
            self._modbus_requests(now)
        else:
            self._ascii_requests(now)
        if len(self._rx) > 256:
            del self._rx[:-256]

    def _gy_commands(self, now: float) -> None:
        rx = self._rx
        while len(rx) >= 3:
            if rx[0] != 0xA5 or sum8(rx[:2]) != rx[2]:
                del rx[0]
                continue
            cmd = rx[1]
            del rx[:3]
            self._sent[f"cmd_{cmd:02X}"] += 1
            if cmd == 0x45:
                self._gy_continuous = True
            elif cmd == 0x15 and not self._quiet(now):
                self._emit(self._frame(now), now)
            elif cmd == 0x51:
                self.auto_output = True
            elif cmd == 0x52:
                self.auto_output = False

    def _modbus_requests(self, now: float) -> None:
        rx = self._rx
        while len(rx) >= 8:
            if crc16_modbus(rx[:8]):
                del rx[0]  # not a request (bad CRC, noise): a slave stays silent
                continue
            request = bytes(rx[:8])
            del rx[:8]
            if request[0] != self.address or self._quiet(now):
                continue
            reply = self._modbus_reply(request, now)
            self._emit(reply, now + self._rng.uniform(0.005, 0.020),
                       "exception" if reply[1] & 0x80 else "frames")

    def _modbus_reply(self, request: bytes, now: float) -> bytes:
        fc = request[1]
        start, count = struct.unpack(">HH", request[2:6])
        if fc not in (3, 4):
            pdu = bytes((self.address, fc | 0x80, 1))
        elif not 1 <= count <= 125:
            pdu = bytes((self.address, fc | 0x80, 3))
        elif start + count > 2:
            pdu = bytes((self.address, fc | 0x80, 2))
        else:
            obj, amb = self._scene(now)
            regs = [_int16(obj * 10), _int16(amb * 10)][start : start + count]
            pdu = bytes((self.address, fc, 2 * count)) + struct.pack(f">{count}H", *regs)
        return pdu + crc16_wire(pdu)

    def _ascii_requests(self, now: float) -> None:
        rx = self._rx
        while True:
            cut = min((i for i in (rx.find(b"\r"), rx.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                break
            line = bytes(rx[:cut]).strip()
            del rx[: cut + 1]
            if self.request is not None and line == self.request.encode() and not self._quiet(now):
                self._emit(self._frame(now), now, "lines")

    # ---- the thread -------------------------------------------------------------------------

    def _step(self, now: float) -> None:
        t = now - self._start
        while self._timed and self._timed[0][1] <= t:
            kind, at, dur = self._timed.pop(0)
            if kind == "silence":
                self._silence_until = max(self._silence_until, self._start + at + dur)
                self._sent["silence"] += 1
            elif kind == "unplug":
                self._do_unplug(now, dur)
            elif kind == "reset":
                self._reset_until = now + self.reset_silence_s
                self._out.clear()
        if self._unplugged_until is not None and now >= self._unplugged_until:
            self._replug(now)
        if self._reset_until is not None and now >= self._reset_until:
            self._reset_until = None
            self._sent["reset"] += 1
            # Power-on glitch: a NUL, then high bytes (what a UART sees while the board boots).
            noise = b"\x00" + bytes(self._rng.randint(0x80, 0xFF) for _ in range(self._rng.randint(1, 5)))
            self._queue(noise + b"\r\n" + BANNER, now)
            if self.protocol == "gy-mcu90614":
                self._gy_continuous = self.auto_output  # a restart applies the power-up setting
            self._next_emit = now
        if self._master is None:
            return
        periodic = (self.protocol == "gy-mcu90614" and self._gy_continuous) or (
            self.protocol == "ascii" and self.request is None)
        if now >= self._next_emit:
            if periodic and not self._quiet(now):
                self._emit(self._frame(now), now, "lines" if self.protocol == "ascii" else "frames")
            # Keep the cadence; after a long stall start again from now rather than bursting.
            self._next_emit += self.period_s
            if self._next_emit < now:
                self._next_emit = now + self.period_s
        self._flush_out(now)

    def _next_wake(self, now: float) -> float:
        due = [self._next_emit, now + 0.05]
        if self._out:
            due.append(self._out[0][0])
        if self._unplugged_until is not None:
            due.append(self._unplugged_until)
        if self._reset_until is not None:
            due.append(self._reset_until)
        if self._timed:
            due.append(self._start + self._timed[0][1])
        return max(0.0, min(due) - now)

    def _run(self) -> None:
        poller = select.poll()
        wake_only = select.poll()
        wake_only.register(self._wake_r, select.POLLIN)
        registered: int | None = None
        while not self._stop.is_set():
            try:
                with self._lock:
                    now = time.monotonic()
                    self._step(now)
                    timeout = self._next_wake(now)
                    master = self._master
                if master != registered:
                    if registered is not None:
                        with contextlib.suppress(KeyError, ValueError):
                            poller.unregister(registered)
                    poller = select.poll()
                    poller.register(self._wake_r, select.POLLIN)
                    if master is not None:
                        poller.register(master, select.POLLIN)
                    registered = master
                events = dict(poller.poll(0)) if master is not None else {}
                hung_up = master is None or bool(events.get(master, 0) & select.POLLHUP)
                self._set_connected(not hung_up)
                if hung_up:
                    # Nobody has the slave open: the master reports HUP at once, so wait on
                    # the wake pipe instead of spinning, and look again soon.
                    wake_only.poll(int(min(timeout, 0.02) * 1000) + 1)
                else:
                    events = dict(poller.poll(int(timeout * 1000) + 1))
                self._drain_wake()
                if master is not None and events.get(master, 0) & select.POLLIN:
                    try:
                        data = os.read(master, 4096)
                    except (BlockingIOError, InterruptedError):
                        data = b""
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        data = b""
                    if data:
                        with self._lock:
                            if self._master == master:
                                self._received(data, time.monotonic())
            except Exception:
                log.exception("thermometer-sim protocol=%s error", self.protocol)
                self._stop.wait(0.1)

    def _set_connected(self, connected: bool) -> None:
        with self._lock:
            if connected and not self._connected:
                self._sent["host_open"] += 1
                if self.reset_on_open:
                    # DTR edge on open restarts an Arduino (hardware.md §1.6).
                    self._reset_until = time.monotonic() + self.reset_silence_s
                    self._out.clear()
            self._connected = connected

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 64):
                pass
