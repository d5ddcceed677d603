"""Gate I/O: the lock relay, the stack light, the buzzer, the guard button and the beam (hardware.md §3).

The parts are gpiozero devices named after what is wired to the header, composed
into one ``Turnstile`` (STYLE.md §1.1). The pin factory is chosen once per process
(``make_pin_factory``, §3.6) and passed down; nothing here reads a global factory.

Rules this module enforces:

1. **The relay ends de-energised** (§3.3). Pins are claimed with the de-energised
   level as ``initial_value`` before anything else; ``safe()`` drives that level
   (and lights and buzzer off) and never raises; ``close()`` calls it first.
   ``fail_safe`` inverts which level locks: idle energised, admit de-energises.
2. **Deny and refer never touch the relay.** Only ``admit`` (a decision or an
   override to admit) releases it, for one pulse of ``pulse_s``
   (``relay.blink(on_time=pulse_s, off_time=0, n=1)``); ``tailgate`` ends a pulse.
3. **A new pattern cancels the previous one** (§3.2): lights and buzzer are reset
   before each outcome's pattern; patterns run in gpiozero's background threads.
4. **One admit lets one person through** (§3.4): an admit grants one credit for
   ``passage_window_s``; a passage (beam broken ≥ 0.05 s, then restored) consumes
   one, or is a tailgate, reported through ``on_tailgate`` so that the gate process
   logs it before ``tailgate()`` shows it (log, then act). A beam broken for more
   than 10 s is ``blocked``: no tailgates until it clears.
5. **The button only reports.** Whether a press overrides, opens or is refused
   depends on the decisions of the last 60 s (§3.5, rules.md §3.5), which the gate
   process knows; ``on_button`` is called and the process acts.
6. **Two parts on one pin** raise ``PinClash`` before any pin is claimed.

Everything time-related uses an injectable monotonic ``clock`` (tests drive it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpiozero import (
    Button,
    Buzzer,
    CompositeDevice,
    DigitalInputDevice,
    DigitalOutputDevice,
    GPIOPinInUse,
    TonalBuzzer,
    TrafficLights,
)
from gpiozero.threads import GPIOThread

from edge.errors import HardwareError, PinClash

if TYPE_CHECKING:
    from gpiozero.pins import Factory

    from edge.config import GpioConfig

__all__ = [
    "DEFAULT_PATTERNS",
    "BeamState",
    "LockRelay",
    "PassiveBuzzer",
    "Patterns",
    "Turnstile",
    "is_raspberry_pi",
    "make_pin_factory",
]

log = logging.getLogger(__name__)

BeamState = Literal["absent", "clear", "broken", "blocked"]
MIN_PASSAGE_S = 0.05       # §3.4: a passage is the beam broken at least this long, then restored
BEAM_BLOCKED_S = 10.0      # §3.4: broken longer than this: "beam blocked", no tailgates
_MODEL_FILE = Path("/proc/device-tree/model")


# -- patterns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Beep:
    """``n`` × (``on_s`` on, ``off_s`` off)."""

    on_s: float
    off_s: float
    n: int

    @property
    def duration_s(self) -> float:
        return self.n * (self.on_s + self.off_s)


@dataclass(frozen=True)
class Patterns:
    """Light and buzzer timings of hardware.md §3.2 (``show_s`` and ``pulse_s`` come from config).

    Tests pass a ``scaled`` copy so whole sequences run in milliseconds; the gate
    always uses ``DEFAULT_PATTERNS``.
    """

    admit_beep: Beep = Beep(0.1, 0.0, 1)
    deny_beep: Beep = Beep(0.15, 0.1, 3)
    refer_beep: Beep = Beep(0.15, 0.1, 2)
    fever_blink_s: float = 0.25          # red 0.25 on / 0.25 off ...
    fever_for_s: float = 5.0             # ... for 5 s
    fever_beep: Beep = Beep(0.3, 0.2, 5)
    tailgate_blink_s: float = 0.25
    long_beep: Beep = Beep(1.0, 0.0, 1)  # tailgate, override refused
    degraded_on_s: float = 0.1           # amber 0.1 s on every 2 s while idle
    degraded_every_s: float = 2.0

    def scaled(self, k: float) -> Patterns:
        def b(x: Beep) -> Beep:
            return Beep(x.on_s * k, x.off_s * k, x.n)

        return replace(
            self,
            admit_beep=b(self.admit_beep), deny_beep=b(self.deny_beep), refer_beep=b(self.refer_beep),
            fever_blink_s=self.fever_blink_s * k, fever_for_s=self.fever_for_s * k,
            fever_beep=b(self.fever_beep), tailgate_blink_s=self.tailgate_blink_s * k,
            long_beep=b(self.long_beep), degraded_on_s=self.degraded_on_s * k,
            degraded_every_s=self.degraded_every_s * k,
        )


DEFAULT_PATTERNS = Patterns()


# -- parts -------------------------------------------------------------------------------------


class LockRelay(DigitalOutputDevice):
    """The relay driving the lock, barrier or turnstile input (hardware.md §3.3).

    gpiozero's *active* state here means **released** (the way is open). With
    ``fail_secure`` that is the energised level; with ``fail_safe`` (a maglock
    powered through the relay) it is the de-energised one, so both modes pulse
    with the same ``blink(on_time=pulse_s, off_time=0, n=1)`` and only the levels
    are inverted. ``energised`` reports the coil, whatever the mode.

    The pin is claimed de-energised (``initial_value``): in ``fail_safe`` that is
    released, so the gate calls ``lock()`` once it is ready (open while it starts).
    """

    def __init__(
        self, pin: int, *, active_high: bool = True, fail_safe: bool = False, pin_factory: Factory | None = None
    ) -> None:
        self.fail_safe = fail_safe
        self.coil_active_high = active_high
        super().__init__(
            pin, active_high=active_high != fail_safe, initial_value=fail_safe, pin_factory=pin_factory
        )

    @property
    def energised(self) -> bool:
        return bool(self.value) != self.fail_safe

    @property
    def released(self) -> bool:
        return bool(self.value)

    @property
    def pulsing(self) -> bool:
        return self._blink_thread is not None and self._blink_thread.is_alive()

    def lock(self) -> None:
        """Locked idle level (ends a pulse at once)."""
        self.off()

    def pulse(self, pulse_s: float) -> None:
        """Release for ``pulse_s``, then lock again (background thread)."""
        self.blink(on_time=pulse_s, off_time=0, n=1, background=True)

    def de_energise(self) -> None:
        """The safe level: fail_secure stays locked, fail_safe opens (§3.3)."""
        self.value = self.fail_safe


class PassiveBuzzer(TonalBuzzer):
    """A passive (PWM) buzzer with the ``beep``/``off`` interface of gpiozero's ``Buzzer``."""

    def __init__(self, pin: int, *, pin_factory: Factory | None = None) -> None:
        self._pattern: GPIOThread | None = None
        super().__init__(pin, pin_factory=pin_factory)

    def beep(self, on_time: float = 1, off_time: float = 1, n: int | None = None, background: bool = True) -> None:
        self.off()
        self._pattern = GPIOThread(self._run, (on_time, off_time, n))
        self._pattern.start()
        if not background:
            self._pattern.join()
            self._pattern = None

    def _run(self, on_time: float, off_time: float, n: int | None) -> None:
        assert self._pattern is not None
        stopping = self._pattern.stopping
        count = 0
        while n is None or count < n:
            self.play(self.mid_tone)
            if stopping.wait(on_time):
                break
            self.stop()
            if stopping.wait(off_time):
                break
            count += 1
        self.stop()

    def off(self) -> None:
        pattern, self._pattern = getattr(self, "_pattern", None), None
        if pattern is not None:
            pattern.stop()
        if not self.closed:
            self.stop()

    @property
    def is_active(self) -> bool:
        return self.value is not None

    def close(self) -> None:
        self.off()
        super().close()


# -- the unit ----------------------------------------------------------------------------------


class Turnstile(CompositeDevice):
    """Relay, stack light, buzzer, guard button and beam of one gate (hardware.md §3).

    Args:
        relay, red, amber, green, buzzer: BCM pins (§3.1).
        button: the guard override button's pin, or None.
        beam: the beam-break sensor's pin, or None.
        relay_active_high: the driver board's input polarity.
        lock_mode: ``fail_secure`` (default) or ``fail_safe`` (§3.3).
        pulse_s: relay pulse for an admit.
        show_s: how long an outcome's light stays on.
        buzzer_kind: ``active`` (on/off) or ``tonal`` (PWM).
        beam_active_low: the receiver pulls low when the beam is broken.
        close_on_passage: end the pulse at the first break of an admitted passage.
        passage_window_s: how long an admit's passage credit lasts.
        patterns: timings of §3.2 (tests scale them down).
        clock: monotonic seconds (tests drive it).
        pin_factory: gpiozero's factory (STYLE.md §1.2).

    Raises:
        PinClash: two parts were given the same pin, or a pin is already in use.
    """

    def __init__(
        self,
        *,
        relay: int = 17,
        red: int = 22,
        amber: int = 23,
        green: int = 24,
        buzzer: int = 25,
        button: int | None = None,
        beam: int | None = None,
        relay_active_high: bool = True,
        lock_mode: Literal["fail_secure", "fail_safe"] = "fail_secure",
        pulse_s: float = 3.0,
        show_s: float = 2.0,
        buzzer_kind: Literal["active", "tonal"] = "active",
        beam_active_low: bool = True,
        close_on_passage: bool = True,
        passage_window_s: float | None = None,
        patterns: Patterns = DEFAULT_PATTERNS,
        clock: Callable[[], float] = time.monotonic,
        pin_factory: Factory | None = None,
    ) -> None:
        if lock_mode not in ("fail_secure", "fail_safe"):
            raise ValueError(f"lock_mode must be fail_secure or fail_safe, not {lock_mode!r}")
        if pulse_s <= 0 or show_s <= 0:
            raise ValueError("pulse_s and show_s must be positive")
        _check_pins(relay=relay, red=red, amber=amber, green=green, buzzer=buzzer, button=button, beam=beam)
        self._lock = threading.RLock()
        self.pulse_s = pulse_s
        self.show_s = show_s
        self.patterns = patterns
        self.close_on_passage = close_on_passage
        self.passage_window_s = passage_window_s if passage_window_s is not None else pulse_s + 5.0
        self._clock = clock
        self.on_button: Callable[[], None] | None = None
        self.on_tailgate: Callable[[], None] | None = None
        self._credits: deque[float] = deque()
        self._broken_at: float | None = None
        self._busy_until = 0.0
        self._degraded = False
        self._idle_blinking = False
        self._safe_done = False
        self.passages = 0
        self.tailgates = 0
        self.unused_admits = 0
        parts: dict[str, Any] = {}
        order = ["relay", "lights", "buzzer"]
        try:
            # §3.3 step 3: the relay first, claimed at its de-energised level.
            parts["relay"] = LockRelay(
                relay, active_high=relay_active_high, fail_safe=lock_mode == "fail_safe", pin_factory=pin_factory
            )
            parts["lights"] = TrafficLights(red, amber, green, pin_factory=pin_factory)
            if buzzer_kind == "tonal":
                parts["buzzer"] = PassiveBuzzer(buzzer, pin_factory=pin_factory)
            else:
                parts["buzzer"] = Buzzer(buzzer, pin_factory=pin_factory)
            if button is not None:
                parts["button"] = Button(button, pull_up=True, bounce_time=0.05, pin_factory=pin_factory)
                order.append("button")
            if beam is not None:
                parts["beam"] = DigitalInputDevice(
                    beam, pull_up=beam_active_low, bounce_time=0.02, pin_factory=pin_factory
                )
                order.append("beam")
        except GPIOPinInUse as exc:
            for part in parts.values():
                part.close()
            raise PinClash(f"a gate pin is already in use: {exc}") from exc
        except BaseException:
            for part in parts.values():
                part.close()
            raise
        super().__init__(_order=tuple(order), pin_factory=pin_factory, **parts)
        if button is not None:
            self.button.when_pressed = self._pressed
        if beam is not None:
            self.beam.when_activated = self._beam_broken
            self.beam.when_deactivated = self._beam_restored
        log.info(
            "gate pins claimed relay=%d lock_mode=%s relay_active_high=%s button=%s beam=%s",
            relay, lock_mode, relay_active_high, button, beam,
        )

    @classmethod
    def from_config(
        cls,
        cfg: GpioConfig,
        *,
        pin_factory: Factory | None = None,
        clock: Callable[[], float] = time.monotonic,
        patterns: Patterns = DEFAULT_PATTERNS,
    ) -> Turnstile:
        """Build the unit from ``[gpio]`` of ``gate.toml`` (§3.8)."""
        return cls(
            relay=cfg.relay, red=cfg.red, amber=cfg.amber, green=cfg.green, buzzer=cfg.buzzer,
            button=cfg.button if cfg.button_action == "override" else None, beam=cfg.beam,
            relay_active_high=cfg.relay_active_high, lock_mode=cfg.lock_mode, pulse_s=cfg.pulse_s,
            show_s=cfg.show_s, buzzer_kind=cfg.buzzer_kind, beam_active_low=cfg.beam_active_low,
            close_on_passage=cfg.close_on_passage, passage_window_s=cfg.passage_window_s,
            patterns=patterns, clock=clock, pin_factory=pin_factory,
        )

    # -- readiness and safety ----------------------------------------------------------------------

    def ready(self) -> None:
        """The gate is ready to decide: a fail_safe lock is energised (locked) now (§3.3)."""
        with self._lock:
            self._safe_done = False
            self.relay.lock()

    def safe(self) -> None:
        """Relay de-energised, lights and buzzer off. Never raises (called from ``finally``)."""
        with self._lock:
            for name in ("relay", "lights", "buzzer"):
                try:
                    part = self._named.get(name)
                    if part is None or part.closed:
                        continue
                    if name == "relay":
                        part.de_energise()
                    else:
                        part.off()
                except Exception:
                    log.exception("gate safe state: cannot reset %s", name)
            self._idle_blinking = False
            self._safe_done = True

    def close(self) -> None:
        """Safe state, then release the pins; idempotent."""
        if getattr(self, "_all", None):
            self.safe()
        super().close()

    # -- outcomes (§3.2) ---------------------------------------------------------------------------

    def _cancel(self, busy_s: float) -> None:
        self.lights.off()
        self.buzzer.off()
        self._idle_blinking = False
        self._busy_until = self._clock() + busy_s

    def _beep(self, b: Beep) -> None:
        self.buzzer.beep(on_time=b.on_s, off_time=b.off_s, n=b.n, background=True)

    def admit(self, pulse_s: float | None = None) -> None:
        """Release the lock for one pulse, green, one short beep; grant one passage credit."""
        with self._lock:
            self._cancel(self.show_s)
            self.relay.pulse(self.pulse_s if pulse_s is None else pulse_s)
            self.lights.green.blink(on_time=self.show_s, off_time=0, n=1, background=True)
            self._beep(self.patterns.admit_beep)
            if "beam" in self._named:
                self._expire_credits()
                self._credits.append(self._clock() + self.passage_window_s)

    def deny(self) -> None:
        """Red, three beeps; the relay is untouched."""
        with self._lock:
            self._cancel(self.show_s)
            self.lights.red.blink(on_time=self.show_s, off_time=0, n=1, background=True)
            self._beep(self.patterns.deny_beep)

    def refer(self) -> None:
        """Amber, two beeps (check by hand; also the re-measure prompt); the relay is untouched."""
        with self._lock:
            self._cancel(self.show_s)
            self.lights.amber.blink(on_time=self.show_s, off_time=0, n=1, background=True)
            self._beep(self.patterns.refer_beep)

    def fever(self) -> None:
        """Fever deny: red blinking for 5 s, five long beeps; the relay is untouched."""
        with self._lock:
            p = self.patterns
            self._cancel(max(p.fever_for_s, p.fever_beep.duration_s))
            n = max(1, round(p.fever_for_s / (2 * p.fever_blink_s)))
            self.lights.red.blink(on_time=p.fever_blink_s, off_time=p.fever_blink_s, n=n, background=True)
            self._beep(p.fever_beep)

    def tailgate(self) -> None:
        """A passage without credit: end any pulse at once, red blinking, one long beep."""
        with self._lock:
            self.relay.lock()
            p = self.patterns
            self._cancel(max(self.show_s, p.long_beep.duration_s))
            n = max(1, round(self.show_s / (2 * p.tailgate_blink_s)))
            self.lights.red.blink(on_time=p.tailgate_blink_s, off_time=p.tailgate_blink_s, n=n, background=True)
            self._beep(p.long_beep)

    def override_refused(self) -> None:
        """The button or a manual admit was refused (§3.5): red, one long beep; relay untouched."""
        with self._lock:
            self._cancel(max(self.show_s, self.patterns.long_beep.duration_s))
            self.lights.red.blink(on_time=self.show_s, off_time=0, n=1, background=True)
            self._beep(self.patterns.long_beep)

    def set_degraded(self, degraded: bool) -> None:
        """Camera or thermometer not ok, or the bundle expired: amber flicker while idle (§3.2)."""
        with self._lock:
            if degraded == self._degraded:
                return
            self._degraded = degraded
            if not degraded and self._idle_blinking:
                self.lights.amber.off()
                self._idle_blinking = False
            self.tick()

    @property
    def degraded(self) -> bool:
        return self._degraded

    def tick(self) -> None:
        """Housekeeping from the decision loop: expire credits, resume the idle flicker."""
        with self._lock:
            if self.closed:
                return
            self._expire_credits()
            if self._degraded and not self._idle_blinking and self._clock() >= self._busy_until:
                p = self.patterns
                self.lights.amber.blink(
                    on_time=p.degraded_on_s, off_time=p.degraded_every_s - p.degraded_on_s, n=None, background=True
                )
                self._idle_blinking = True

    def patterns_running(self) -> Iterator[GPIOThread]:
        """Background threads still playing a pattern (tests join them)."""
        for dev in (self.relay, self.lights.red, self.lights.amber, self.lights.green):
            t = dev._blink_thread
            if t is not None and t.is_alive():
                yield t
        bz = self.buzzer
        t = bz._pattern if isinstance(bz, PassiveBuzzer) else bz._blink_thread
        if t is not None and t.is_alive():
            yield t

    def wait_patterns(self, timeout: float = 10.0) -> None:
        """Join the pattern threads (tests, and a clean stop)."""
        end = time.monotonic() + timeout
        for t in list(self.patterns_running()):
            t.join(max(0.0, end - time.monotonic()))

    # -- beam (§3.4) -------------------------------------------------------------------------------

    @property
    def credits(self) -> int:
        with self._lock:
            self._expire_credits()
            return len(self._credits)

    def _expire_credits(self) -> None:
        now = self._clock()
        while self._credits and self._credits[0] <= now:
            self._credits.popleft()
            self.unused_admits += 1

    @property
    def beam_state(self) -> BeamState:
        with self._lock:
            if "beam" not in self._named:
                return "absent"
            if self._broken_at is None:
                return "clear"
            return "blocked" if self._clock() - self._broken_at > BEAM_BLOCKED_S else "broken"

    def _beam_broken(self) -> None:
        with self._lock:
            self._broken_at = self._clock()
            self._expire_credits()
            if self._credits and self.close_on_passage and self.relay.released:
                self.relay.lock()

    def _beam_restored(self) -> None:
        tailgate = False
        with self._lock:
            if self._broken_at is None:
                return
            held = self._clock() - self._broken_at
            self._broken_at = None
            if held < MIN_PASSAGE_S:
                return
            if held > BEAM_BLOCKED_S:
                log.info("beam clear again after %.0f s blocked", held)
                return
            self._expire_credits()
            if self._credits:
                self._credits.popleft()
                self.passages += 1
            else:
                self.tailgates += 1
                tailgate = True
        if tailgate:
            log.warning("beam passage without an admit: tailgate count=%d", self.tailgates)
            _call(self.on_tailgate, "on_tailgate")

    # -- button (§3.5) -----------------------------------------------------------------------------

    def _pressed(self) -> None:
        log.info("guard button pressed")
        _call(self.on_button, "on_button")


def _call(fn: Callable[[], None] | None, name: str) -> None:
    if fn is None:
        return
    try:
        fn()
    except Exception:
        # A pin callback runs in gpiozero's thread: never let it die silently.
        log.exception("gate %s callback failed", name)


def _check_pins(**pins: int | None) -> None:
    seen: dict[int, str] = {}
    for part, pin in pins.items():
        if pin is None:
            continue
        if pin in seen:
            raise PinClash(f"GPIO{pin} is given to both {seen[pin]} and {part}")
        seen[pin] = part


# -- pin factories (§3.6) ----------------------------------------------------------------------


def is_raspberry_pi(model_file: Path = _MODEL_FILE) -> bool:
    """True when the device tree names a Raspberry Pi."""
    try:
        return "raspberry pi" in model_file.read_bytes().decode("ascii", "replace").lower()
    except OSError:
        return False


def _mock_factory() -> Factory:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    # PWM-capable mock pins so a tonal buzzer works (§3.6).
    if os.environ.get("GPIOZERO_MOCK_PIN_CLASS"):
        return MockFactory()
    return MockFactory(pin_class=MockPWMPin)


def _named_factory(name: str) -> Factory:
    if name == "mock":
        return _mock_factory()
    targets = {
        "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
        "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
        "native": ("gpiozero.pins.native", "NativeFactory"),
        "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    }
    if name not in targets:
        raise HardwareError(f"unknown pin factory {name!r} (lgpio, rpigpio, native, mock)")
    mod, cls = targets[name]
    try:
        module = __import__(mod, fromlist=[cls])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            factory: Factory = getattr(module, cls)()
        return factory
    except Exception as exc:
        hint = " (pip install lgpio in the venv, and add the user to the gpio group)" if name == "lgpio" else ""
        raise HardwareError(f"cannot load the {name} pin factory: {exc}{hint}") from exc


def make_pin_factory(name: str = "auto", *, model_file: Path = _MODEL_FILE) -> Factory:
    """The process's one pin factory (hardware.md §3.6).

    ``auto``: ``$GPIOZERO_PIN_FACTORY`` if set; else ``lgpio`` on a Raspberry Pi,
    where failing to load it is an error (a Pi must never fall back to mock pins:
    the gate would look fine and the relay would never move); else mock pins with
    a warning.

    Raises:
        HardwareError: the named factory cannot be loaded.
    """
    if name != "auto":
        return _named_factory(name)
    env = os.environ.get("GPIOZERO_PIN_FACTORY", "").strip().lower()
    if env:
        return _named_factory(env)
    if is_raspberry_pi(model_file):
        return _named_factory("lgpio")
    log.warning("no Raspberry Pi found: using mock GPIO pins (the relay moves nothing)")
    return _mock_factory()
