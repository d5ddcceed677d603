"""Port handling, the reader thread, reconnects and status (hardware.md §1.6, §1.7).

One daemon thread per thermometer, named ``thermometer:<protocol>``, owns the port.
``read()``, ``latest()``, ``measure()`` and ``status()`` are thread-safe and never
touch the port. The rules, in the order the thread meets them:

1. Open exactly as §1.2 (8N1, ``timeout=0.05``, ``write_timeout=0.5``,
   ``exclusive=True``: a second process gets "Could not exclusively lock port"
   instead of stealing bytes). HUPCL is cleared so that later re-opens do not reset
   an Arduino again (§1.6). A port that cannot be opened: state ``fault``, retry
   every ``retry_s`` for as long as it takes.
2. After every open: wait ``settle_s`` (boards that reset on open print noise and a
   banner), ``reset_input_buffer()``, reset the parser, protocol init (GY: the
   continuous-output command, re-sent every ``init_retry_s`` until a frame
   arrives). State ``stale`` until the first valid reading, then ``ok``.
3. Every port operation maps ``SerialException`` and ``OSError`` (an unplugged
   tty raises both, §1.6) to ``PortLost``: close, ``fault``, back to 1.
4. Only a frame whose checksum/CRC checked, or a line that passed every rule, can
   become a reading; values no sensor reports (a 0x7FFF sentinel, a NaN float)
   are counted as bad frames and dropped too.
5. No valid reading for ``stale_after_s``: ``stale``. Still none (and no answer
   from the device at all) after ``reopen_after_s``: close and reopen, which re-sends
   the init command and clears wedged adapters.
6. A Modbus exception reply is a configuration fault: ``fault`` with the
   technician's text, polling goes on; a valid reply clears it.

``read()`` never returns a reading older than ``stale_after_s``: a stale reading is
never reported as fresh. ``measure()`` returns ``stale``/``fault`` at once while the
device is in that state.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import serial

from firmware_bridge.errors import PortLost
from firmware_bridge.estimate import body_c, measure_samples
from firmware_bridge.options import ThermometerOptions
from firmware_bridge.protocols import Sample
from firmware_bridge.protocols.gy_mcu90614 import CMD_CONTINUOUS, CMD_QUERY, GyMcu90614Parser
from firmware_bridge.protocols.modbus_rtu import ModbusException, ModbusReply, ModbusReplyParser
from firmware_bridge.records import Counters, Measurement, Reading, State, ThermometerStatus

__all__ = ["AMBIENT_RANGE_C", "OBJECT_RANGE_C", "Thermometer", "open_serial", "open_thermometer"]

log = logging.getLogger(__name__)

# Values outside these ranges are not temperatures a forehead sensor reports (MLX9061x
# ambient is specified from -40 to 125 °C); a 0x7FFF sentinel (327.67 °C) parses fine
# and must not keep a broken sensor looking "ok".
OBJECT_RANGE_C = (-40.0, 150.0)
AMBIENT_RANGE_C = (-40.0, 125.0)

_MAX_READINGS = 20_000  # hard cap on the ring buffer whatever the line rate


def open_serial(port: str, baudrate: int) -> serial.Serial:
    """Open a port exactly as hardware.md §1.2 says (all protocols)."""
    return serial.Serial(port, baudrate, bytesize=8, parity="N", stopbits=1, timeout=0.05,
                         write_timeout=0.5, exclusive=True)


def _describe_open_error(port: str, exc: BaseException) -> str:
    text = str(exc)
    if "exclusively lock" in text:
        return f"port busy: {port} is held by another process (stop the gate, or the other reader, first)"
    if "Errno 2]" in text or isinstance(exc, FileNotFoundError):
        return f"port missing: {port} (unplugged, or a wrong path; prefer /dev/serial/by-id/...)"
    if "Errno 13]" in text or isinstance(exc, PermissionError):
        return f"permission denied: {port} (is the user in the dialout group?)"
    return f"cannot open {port}: {text}"


class _Action(NamedTuple):
    write: bytes | None = None
    flush: bool = False  # reset_input_buffer() before writing


@dataclass(frozen=True, slots=True)
class _DeviceFault:
    text: str


@dataclass(frozen=True, slots=True)
class _Unusable:
    """A well-formed answer that carries no usable value (a NaN float32)."""


_Event = Sample | _DeviceFault | _Unusable


class _Driver(Protocol):
    def reset(self, now: float) -> None: ...
    def tick(self, now: float) -> _Action: ...
    def feed(self, data: bytes, now: float) -> list[_Event]: ...
    @property
    def bad(self) -> int: ...
    @property
    def garbage_bytes(self) -> int: ...
    @property
    def timeouts(self) -> int: ...
    @property
    def ignored(self) -> int: ...


class _GyDriver:
    def __init__(self, opts: ThermometerOptions) -> None:
        self.parser = GyMcu90614Parser()
        self.query = opts.gy.mode == "query"
        self.poll_s, self.init_retry_s = opts.gy.poll_s, opts.gy.init_retry_s
        self._need_init = True
        self._next_write = 0.0

    def reset(self, now: float) -> None:
        self.parser.reset()
        self._need_init = not self.query
        self._next_write = now

    def tick(self, now: float) -> _Action:
        if now < self._next_write:
            return _Action()
        if self.query:
            self._next_write = max(self._next_write + self.poll_s, now)
            return _Action(CMD_QUERY)
        if self._need_init:
            # §1.3: continuous output after every open, again every init_retry_s until a
            # frame arrives (a module set to "no auto output" stays silent until told).
            self._next_write = now + self.init_retry_s
            return _Action(CMD_CONTINUOUS)
        return _Action()

    def feed(self, data: bytes, now: float) -> list[_Event]:
        samples = self.parser.feed(data)
        if samples:
            self._need_init = False
        return list(samples)

    @property
    def bad(self) -> int:
        return self.parser.stats.bad

    @property
    def garbage_bytes(self) -> int:
        return self.parser.stats.garbage_bytes

    @property
    def timeouts(self) -> int:
        return 0

    @property
    def ignored(self) -> int:
        return self.parser.stats.other_frames


class _ModbusDriver:
    """Poll every ``poll_s``; wait ``response_timeout_s``; after a timeout, an exception
    or a bad frame: flush, reset the parser, next request at the next poll (§1.4)."""

    def __init__(self, opts: ThermometerOptions) -> None:
        self.map = opts.modbus.map
        self.requests = self.map.requests()
        self.poll_s, self.timeout_s = opts.modbus.poll_s, opts.modbus.response_timeout_s
        self.parser = ModbusReplyParser(self.map.address, self.map.function, self.requests[0].count)
        self._timeouts = 0
        self._waiting: int | None = None  # index of the outstanding request
        self._deadline = 0.0
        self._next_poll = 0.0
        self._partial: list[tuple[int, ...]] = []
        self._send_next = False
        self._flush = False

    def reset(self, now: float) -> None:
        self.parser.reset()
        self._waiting, self._partial, self._send_next, self._flush = None, [], False, False
        self._next_poll = now

    def _send(self, index: int, now: float, flush: bool = False) -> _Action:
        req = self.requests[index]
        self.parser.expect(self.map.address, self.map.function, req.count)
        self._waiting, self._deadline = index, now + self.timeout_s
        return _Action(req.frame, flush)

    def tick(self, now: float) -> _Action:
        flush, self._flush = self._flush, False
        if self._waiting is not None:
            if self._send_next:
                self._send_next = False
                return self._send(self._waiting + 1, now, flush)
            if now < self._deadline:
                return _Action(None, flush)
            self._timeouts += 1
            self._waiting = None
            self.parser.reset()
            flush = True
        if now >= self._next_poll:
            self._next_poll = max(self._next_poll + self.poll_s, now)
            self._partial = []
            return self._send(0, now, flush)
        return _Action(None, flush)

    def _abandon(self) -> None:
        self._waiting, self._partial, self._send_next = None, [], False
        self.parser.reset()
        self._flush = True

    def feed(self, data: bytes, now: float) -> list[_Event]:
        bad_before = self.parser.stats.bad_crc
        results = self.parser.feed(data)
        if self._waiting is None:
            return []  # a late answer to a request already given up on: garbage
        for result in results:
            if isinstance(result, ModbusException):
                self._abandon()
                return [_DeviceFault(result.text)]
            if isinstance(result, ModbusReply):
                self._partial.append(result.registers)
                if len(self._partial) < len(self.requests):
                    self._send_next = True  # the ambient request of a two-request poll
                    self.parser.reset()
                    return []
                registers, self._partial = self._partial, []
                self._waiting = None
                sample = self.map.decode(registers)
                return [sample if sample is not None else _Unusable()]
        if self.parser.stats.bad_crc != bad_before:
            self._abandon()
        return []

    @property
    def bad(self) -> int:
        return self.parser.stats.bad

    @property
    def garbage_bytes(self) -> int:
        return self.parser.stats.garbage_bytes

    @property
    def timeouts(self) -> int:
        return self._timeouts

    @property
    def ignored(self) -> int:
        return 0


class _AsciiDriver:
    def __init__(self, opts: ThermometerOptions) -> None:
        self.parser = opts.ascii.parser()
        self.request = opts.ascii.request.encode("utf-8")
        self.poll_s = opts.ascii.poll_s
        self._next_write = 0.0

    def reset(self, now: float) -> None:
        self.parser.resync()  # the flush may have cut a line: never read its tail as a value
        self._next_write = now

    def tick(self, now: float) -> _Action:
        if self.request and now >= self._next_write:
            self._next_write = max(self._next_write + self.poll_s, now)
            return _Action(self.request)
        return _Action()

    def feed(self, data: bytes, now: float) -> list[_Event]:
        return list(self.parser.feed(data))

    @property
    def bad(self) -> int:
        return self.parser.stats.bad + self.parser.stats.overflow

    @property
    def garbage_bytes(self) -> int:
        return 0

    @property
    def timeouts(self) -> int:
        return 0

    @property
    def ignored(self) -> int:
        return self.parser.stats.ignored


_DRIVERS: dict[str, Callable[[ThermometerOptions], _Driver]] = {
    "gy-mcu90614": _GyDriver,
    "modbus-rtu": _ModbusDriver,
    "ascii": _AsciiDriver,
}


class _Reopen(Exception):
    """Control flow inside the thread (silence for reopen_after_s); never escapes it."""


class Thermometer:
    """A serial thermometer read by its own thread. Use ``open_thermometer()``."""

    def __init__(self, opts: ThermometerOptions, *, simulator: Any = None) -> None:
        self.options = opts
        self.protocol = opts.protocol
        self.port = opts.port
        self.simulator = simulator  # the in-process ThermometerSim when port = "sim"
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readings: collections.deque[tuple[int, Reading]] = collections.deque()
        self._seq = 0
        self._cursor = 0
        self._used: dict[float, float] = {}  # episode key -> its last sample (for pruning)
        self._retain_s = opts.buffer_s
        now = time.monotonic()
        self._state: State = "stale" if opts.enabled else "absent"
        self._since = now
        self._last_error: str | None = None
        self._device_fault = False
        self._open_mono = now
        self._alive_mono = now  # last valid answer of any kind (reading or exception reply)
        self._frames = self._reconnects = self._reopens = self._exceptions = self._implausible = 0
        self._bad_seen = 0
        self._bad_per_s: collections.deque[list[int]] = collections.deque()  # [second, count]
        self._driver: _Driver = _DRIVERS[opts.protocol](opts)
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if opts.enabled:
            self._thread = threading.Thread(target=self._run, name=f"thermometer:{opts.protocol}", daemon=True)
            self._thread.start()

    # ---- public API -----------------------------------------------------------------------

    def read(self, timeout: float) -> Reading | None:
        """The next raw reading not yet returned, or None after ``timeout`` seconds.

        Readings older than ``stale_after_s`` are skipped, never returned.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                now = time.monotonic()
                fresh_from = now - self.options.stale_after_s
                readings = self._readings
                if readings:
                    i = max(0, self._cursor + 1 - readings[0][0])  # seqs are consecutive
                    while i < len(readings):
                        seq, reading = readings[i]
                        i += 1
                        self._cursor = seq
                        if reading.mono >= fresh_from:
                            return reading
                if self._closed or now >= deadline:
                    return None
                self._cond.wait(deadline - now)

    def latest(self) -> Reading | None:
        """The newest raw reading, any age (check ``mono`` or ``status()`` before trusting it)."""
        with self._lock:
            return self._readings[-1][1] if self._readings else None

    def status(self) -> ThermometerStatus:
        now = time.monotonic()
        with self._lock:
            state, since = self._state, self._since
            last = self._readings[-1][1] if self._readings else None
            if state == "ok" and (last is None or now - last.mono > self.options.stale_after_s):
                # The thread notices within one read timeout; report it exactly anyway.
                state = "stale"
                since = (last.mono if last else self._open_mono) + self.options.stale_after_s
            counters = Counters(
                frames=self._frames,
                bad_frames=self._driver.bad + self._implausible,
                garbage_bytes=self._driver.garbage_bytes,
                reconnects=self._reconnects,
                timeouts=self._driver.timeouts,
                reopens=self._reopens,
                exceptions=self._exceptions,
                implausible=self._implausible,
                ignored=self._driver.ignored,
            )
            cutoff = int(now) - 60
            per_min = sum(c for sec, c in self._bad_per_s if sec > cutoff)
            return ThermometerStatus(
                state=state,
                protocol=self.protocol,
                port=self.port,
                last_reading_age_s=round(now - last.mono, 3) if last else None,
                since=since,
                last_error=self._last_error,
                counters=counters,
                bad_frames_per_min=per_min,
            )

    def measure(self, *, at: float, max_age_s: float, wait_s: float, new_since: float | None = None
                ) -> Measurement:
        """One measurement per person (§1.8); marks the episode used.

        Args:
            at: ``time.monotonic()`` of the scan; the episode must end at most
                ``max_age_s`` before it (``temperature_max_age_s`` of the bundle).
            wait_s: how long to wait for a measurement to form when none qualifies yet.
            new_since: re-measure (§1.10): only an episode that starts after this
                monotonic time counts.

        Returns ``stale``/``fault`` at once while the device is in that state;
        ``no_measurement`` with a reason when nothing qualified within ``wait_s``.
        """
        if max_age_s * 2 > self._retain_s:
            self._retain_s = min(max(self._retain_s, 2 * max_age_s), 3600.0)  # §1.7: ≥ twice the max age
        deadline = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while True:
                if self._state == "absent":
                    return Measurement("no_measurement", "no_subject")
                state = self._current_state_locked()
                if state in ("stale", "fault") or self._closed:
                    return Measurement("fault" if self._closed else state)  # type: ignore[arg-type]
                m, key = measure_samples(
                    [r for _, r in self._readings], at=at, max_age_s=max_age_s,
                    settings=self.options.measure, estimate=self.options.estimate,
                    new_since=new_since, used=self._used,
                )
                if key is not None:
                    self._used[key] = m.last_sample_mono or key
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return m
                self._cond.wait(remaining)

    def close(self) -> None:
        """Stop the thread and close the port (and the in-process simulator); idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.simulator is not None:
            self.simulator.close()

    def __enter__(self) -> Thermometer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Thermometer {self.protocol} on {self.port} state={self._state}>"

    # ---- state (caller holds the lock unless noted) -------------------------------------------

    def _current_state_locked(self) -> State:
        if self._state == "ok" and self._readings:
            if time.monotonic() - self._readings[-1][1].mono > self.options.stale_after_s:
                return "stale"
        return self._state

    def _set_state(self, state: State, error: str | None = None, *, since: float | None = None) -> None:
        """Takes the lock. Logs state changes only (§1.6: log only state changes)."""
        with self._cond:
            if error is not None:
                self._last_error = error
            if state == self._state:
                return
            old, self._state = self._state, state
            self._since = time.monotonic() if since is None else since
            self._cond.notify_all()
        level = logging.INFO if state == "ok" else logging.WARNING
        log.log(level, "thermometer port=%s protocol=%s state=%s was=%s error=%s",
                self.port, self.protocol, state, old, error if state == "fault" else None)

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        opened_before = False
        lost = False
        while not self._stop.is_set():
            try:
                port = self._open(lost and opened_before)
                if port is None:
                    lost = True
                    continue
                opened_before = True
                lost = False
                try:
                    self._session(port)
                except PortLost as exc:
                    lost = True
                    self._set_state("fault", f"port lost: {exc}")
                except _Reopen:
                    self._device_fault = False  # nothing answered at all: stale, not the old exception
                    with self._lock:
                        self._reopens += 1
                    log.info("thermometer port=%s protocol=%s no valid reading for %.1fs: reopening",
                             self.port, self.protocol, self.options.reopen_after_s)
                finally:
                    with contextlib.suppress(Exception):
                        port.close()
            except Exception as exc:  # a bug must not kill the thread for good; the gate needs readings
                log.exception("thermometer port=%s protocol=%s reader error", self.port, self.protocol)
                self._set_state("fault", f"internal error: {exc!r}")
                lost = True
                self._stop.wait(self.options.retry_s)

    def _open(self, is_reconnect: bool) -> serial.Serial | None:
        try:
            port = open_serial(self.port, self.options.baudrate)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._set_state("fault", _describe_open_error(self.port, exc))
            self._stop.wait(self.options.retry_s)
            return None
        with contextlib.suppress(termios.error, OSError, ValueError):
            # §1.6: keep DTR asserted after close so a re-open does not reset an Arduino again.
            attrs = termios.tcgetattr(port.fileno())
            attrs[2] &= ~termios.HUPCL
            termios.tcsetattr(port.fileno(), termios.TCSANOW, attrs)
        if is_reconnect:
            with self._lock:
                self._reconnects += 1
        log.info("thermometer port=%s protocol=%s opened settle_s=%.1f", self.port, self.protocol,
                 self.options.settle_s)
        return port

    def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except (serial.SerialException, OSError) as exc:
            raise PortLost(f"{self.port}: {exc}") from exc

    def _session(self, port: serial.Serial) -> None:
        opts = self.options
        if opts.settle_s and self._stop.wait(opts.settle_s):
            return
        self._io(port.reset_input_buffer)
        now = time.monotonic()
        with self._lock:
            self._open_mono = self._alive_mono = now
        self._driver.reset(now)
        if not self._device_fault:
            self._set_state("stale")
        driver = self._driver
        while not self._stop.is_set():
            action = driver.tick(time.monotonic())
            if action.flush:
                self._io(port.reset_input_buffer)
            if action.write:
                self._io(port.write, action.write)
            waiting = self._io(lambda: port.in_waiting)
            data = self._io(port.read, waiting or 1)
            now = time.monotonic()
            if data:
                self._handle(driver.feed(data, now), now)
            self._check_silence(now)

    def _handle(self, events: list[_Event], now: float) -> None:
        made: list[Reading] = []
        implausible = 0
        fault: str | None = None
        for event in events:
            if isinstance(event, _DeviceFault):
                fault = event.text
            elif isinstance(event, _Unusable) or not _plausible(event):
                implausible += 1
            else:
                # Stamped outside the lock: the injected clock may take its own locks.
                made.append(Reading(
                    object_c=event.object_c,
                    ambient_c=event.ambient_c,
                    body_c=body_c(event.object_c, event.ambient_c, self.options.estimate),
                    at=self.options.clock(),
                    mono=now,
                    protocol=self.protocol,
                ))
        with self._cond:
            self._implausible += implausible
            if fault is not None:
                self._exceptions += sum(isinstance(e, _DeviceFault) for e in events)
                self._alive_mono = now
            for reading in made:
                self._seq += 1
                self._frames += 1
                self._readings.append((self._seq, reading))
            bad = self._driver.bad + self._implausible
            if bad != self._bad_seen:
                self._count_bad(bad - self._bad_seen, now)
                self._bad_seen = bad
            if made:
                self._alive_mono = now
                self._prune(now)
                self._cond.notify_all()
        if fault is not None:
            self._device_fault = True
            self._set_state("fault", fault)
        elif made:
            self._device_fault = False
            self._set_state("ok")

    def _count_bad(self, n: int, now: float) -> None:
        sec = int(now)
        if self._bad_per_s and self._bad_per_s[-1][0] == sec:
            self._bad_per_s[-1][1] += n
        else:
            self._bad_per_s.append([sec, n])
        while self._bad_per_s and self._bad_per_s[0][0] <= sec - 60:
            self._bad_per_s.popleft()

    def _prune(self, now: float) -> None:
        horizon = now - self._retain_s
        readings = self._readings
        while readings and (readings[0][1].mono < horizon or len(readings) > _MAX_READINGS):
            readings.popleft()
        if len(self._used) > 64:
            self._used = {k: v for k, v in self._used.items() if v >= horizon}

    def _check_silence(self, now: float) -> None:
        with self._lock:
            last = self._readings[-1][1].mono if self._readings else None
            since_valid = now - max(last if last is not None else self._open_mono, self._open_mono)
            since_alive = now - self._alive_mono
            state = self._state
        if state == "ok" and since_valid >= self.options.stale_after_s:
            self._set_state("stale", since=now - since_valid + self.options.stale_after_s)
        if since_alive >= self.options.reopen_after_s:
            raise _Reopen


def _plausible(sample: Sample) -> bool:
    lo, hi = OBJECT_RANGE_C
    if not lo <= sample.object_c <= hi:
        return False
    if sample.ambient_c is not None:
        lo, hi = AMBIENT_RANGE_C
        return lo <= sample.ambient_c <= hi
    return True


def open_thermometer(port: str | None = None, protocol: str | None = None, /, **options: Any) -> Thermometer:
    """Open a thermometer and start its reader thread (hardware.md §1.1).

    Args:
        port: a serial device (``/dev/serial/by-id/...``), or ``"sim"`` to start a
            :class:`~firmware_bridge.simulator.ThermometerSim` in this process and read
            it through its pty (``Thermometer.simulator``; ``sim={...}`` passes its
            arguments, default: the CLI's scene of people walking up).
        protocol: ``gy-mcu90614``, ``modbus-rtu`` or ``ascii``.
        **options: the ``[thermometer]`` keys of §1.13 (``ThermometerConfig.model_dump()``
            may be passed whole, ``port``/``protocol`` included), plus ``clock``.

    Never raises for a missing or busy port: the thread retries and ``status()``
    says ``fault`` with the reason, because a gate must keep going and pick the
    sensor up once it is plugged in.

    Raises:
        ProtocolConfigError: options that describe no usable device.
    """
    opts = ThermometerOptions.parse(port, protocol, options)
    if not opts.enabled:
        return Thermometer(opts)
    if opts.port != "sim":
        return Thermometer(opts)
    from firmware_bridge.simulator import DEFAULT_PEOPLE, ThermometerSim

    sim_args: dict[str, Any] = {"people": DEFAULT_PEOPLE, "address": opts.modbus.map.address}
    if opts.protocol == "ascii" and opts.ascii.request:
        sim_args["request"] = opts.ascii.request
    sim_args.update(opts.sim)
    sim = ThermometerSim(opts.protocol, **sim_args)
    try:
        return Thermometer(dataclasses.replace(opts, port=sim.port), simulator=sim)
    except BaseException:
        sim.close()
        raise
