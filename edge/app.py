"""The gate process (ARCHITECTURE.md "one decision, end to end"): camera → decision → relay.

Start, in this order (hardware.md §3.3, §4.1; sync.md §1.9):

1. pins claimed at their safe level (``Turnstile``), before anything else;
2. the run marker: present → unclean stop → ``PRAGMA quick_check``; the store,
   ``state.db``, the trusted clock, the bundle in force; ``device_start``;
3. console listening → ``READY=1``; camera and thermometer start (they may be
   absent: the gate then refers, it never waits for them).

The decision loop (this thread, ``run``) handles **one decision at a time**:

- each new frame is decoded (fast path; an empty frame may go to the deep pass),
  de-duplicated, and every new code is classified and verified against the
  trust of the bundle in force, at ``trusted_now()``;
- set-up mode takes the next scan as a venue code (console.md §1.3); venue codes
  are otherwise ignored, material codes are logged against the current delivery;
- at a green lane a lone half (pass or driver's code) is held for
  ``pair_window_s`` on the monotonic clock (rules.md §3.1);
- a code that reaches the rules gets its temperature (hardware.md §1.10): a
  fever asks for a re-measure; while a wait is pending, newly decoded codes
  queue (at most 4);
- **log, then act**: the ``decision`` event is appended (``append_or_hold``:
  when storage fails the event waits in memory and the gate still acts), then the
  relay/lights, then the console. Alerts follow the decision event.

Guard actions (console override, manual entry, set-up, the button, a tailgate
on the beam) come in as commands and run on this loop too, so no two decisions
ever interleave. The loop wakes at least every 0.05 s, pings the systemd
watchdog (hardware.md §4.4) and does housekeeping once a second (clock warnings,
bundle freshness, thermometer fault alerts, held events, status).

Whatever ends the loop — a clean stop or an exception — ``finally`` drives the
relay de-energised (``Turnstile.safe``); an exception makes ``run`` return
non-zero so systemd restarts the gate.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge import __version__
from edge.clock import TrustedClock
from edge.config import GateConfig, ensure_data_dir
from edge.console import Accounts, Broadcaster, ConsoleRefusal, ConsoleServer, decision_view
from edge.console.accounts import Account
from edge.console.web import ManualRequest, OverrideRequest
from edge.errors import EdgeError
from edge.gate import Turnstile, make_pin_factory
from edge.store.events import Appended, EventStore
from edge.store.schema import EVENTS_SCHEMA_VERSION
from edge.store.state import StateDB
from sync.errors import ConfigError
from sync.identity import load_identity
from sync.timefmt import to_ms

__all__ = ["GateApp", "TestFault", "run_marker_path"]

log = logging.getLogger(__name__)

RECENT_MAX = 10                 # console.md §1.1: the newest and the nine before it
OVERRIDE_MAX_AGE_S = 600.0      # console.md §1.2: overrides of decisions at most 10 min old
BUTTON_WINDOW_S = 60.0          # hardware.md §3.5
SETUP_S = 60                    # console.md §1.3
QUEUE_WHILE_WAITING = 4         # hardware.md §1.10 step 4
LOOP_WAKE_S = 0.05
HOUSEKEEPING_S = 1.0
FLUSH_HELD_S = 10.0             # sync.md §1.8 step 5: retry every 10 s
DELIVERY_WINDOW_S = 7200.0      # material scans belong to the last truck admitted within 2 h
MEASURE_PROMPT_AFTER_S = 0.25   # show "please measure" only when the wait is real
COMMAND_TIMEOUT_S = 15.0
GATE_STATUS_EVERY_S = 10.0      # sync/agent/gate_status.py: at least every 10 s
RUN_MARKER = "edge.running"
STOP_REASON_FILE = "stop-reason"
_LAST_BOOT_KEY = "edge.last_boot"


# Reasons of decisions the gate makes alone (rules.md §3.1 reserves the ids; hardware.md §3.4-3.5,
# console.md §1.2); gate-storage-full is ours (sync.md §1.8 step 5 names no reason id).
GATE_REASONS: dict[str, tuple[str, str]] = {
    "gate-tailgate": ("尾随通行：未经准许的第二人", "Tailgating: a second person without admit"),
    "gate-manual-open": ("门岗按钮开门", "Opened with the guard button"),
    "gate-manual-check": ("人工核验", "Checked by hand"),
    "gate-storage-full": ("存储已满：请人工核验", "Storage full: check by hand"),
}


def run_marker_path(data_dir: Path) -> Path:
    return Path(data_dir) / RUN_MARKER


# -- test-only fault hook (hardware.md §4.4) -----------------------------------------------------


@dataclass
class TestFault:
    """``CHECKPOINT_TEST_FAULT=hang-loop-after:N`` or ``raise-loop-after:N``: after N watchdog
    pings the loop hangs (pings stop, the process stays alive) or raises. Honoured only in a
    test run (``PYTEST_CURRENT_TEST`` or ``CHECKPOINT_TESTING=1`` in the environment)."""

    action: str
    after_pings: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TestFault | None:
        spec = env.get("CHECKPOINT_TEST_FAULT", "")
        if not spec:
            return None
        if "PYTEST_CURRENT_TEST" not in env and env.get("CHECKPOINT_TESTING") != "1":
            log.warning("CHECKPOINT_TEST_FAULT ignored outside a test run")
            return None
        action, _, n = spec.partition("-after:")
        if action not in ("hang-loop", "raise-loop") or not n.isdigit():
            log.warning("CHECKPOINT_TEST_FAULT=%s not understood", spec)
            return None
        return cls(action, int(n))


class LoopFault(EdgeError, RuntimeError):
    """Raised by the test-only fault hook."""


# -- systemd notifications ------------------------------------------------------------------------


class Notifier:
    """READY, STATUS, WATCHDOG and STOPPING (hardware.md §4.4), pinged from the decision loop only."""

    def __init__(self, env: Mapping[str, str], fault: TestFault | None = None) -> None:
        self._notifier: Any = None
        if env.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        usec = env.get("WATCHDOG_USEC", "")
        wpid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            # at most once a second, at least every WATCHDOG_USEC / 2
            self.watchdog_s = min(1.0, int(usec) / 2e6)
        self._next_ping = 0.0
        self._status: str | None = None
        self.pings = 0
        self._fault = fault

    def send(self, msg: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(msg)

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def tick(self) -> None:
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now < self._next_ping:
            return
        if self._fault is not None and self.pings >= self._fault.after_pings:
            if self._fault.action == "hang-loop":
                log.warning("test fault: decision loop hangs now")
                while True:
                    time.sleep(3600)
            raise LoopFault("test fault: decision loop raises")
        self._next_ping = now + self.watchdog_s
        self.pings += 1
        self.send("WATCHDOG=1")


# -- records the loop keeps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """One newly seen code (text kept in memory only, never logged or stored)."""

    text: str
    format: str
    t_capture: float          # Frame.t_capture: latency is measured from here
    t_seen: float


@dataclass
class Code:
    """A scan after classification and verification."""

    scan: Scan
    verification: Any         # edge.credentials.Verification or None (opaque)
    opaque: bool
    code_hash: str | None = None
    bundle: Any = None        # the bundle in force at the scan: one bundle for the whole decision (M14)
    freshness: str = "none"

    @property
    def kind(self) -> str | None:
        return None if self.verification is None else self.verification.kind

    @property
    def claims(self) -> Mapping[str, Any] | None:
        c = None if self.verification is None else self.verification.claims
        return c if isinstance(c, Mapping) else None


@dataclass
class Held:
    """A green-lane half waiting for its partner (rules.md §3.1); memory only."""

    code: Code
    half: str                 # "pass" | "health"
    sub: str
    since: float              # monotonic


@dataclass
class TempWait:
    """A decision waiting for the thermometer (hardware.md §1.10)."""

    code: Code
    partner: Code | None
    stage: str                # "measure" | "remeasure"
    future: concurrent.futures.Future[Any]
    started: float
    m1: Any = None
    prompted: bool = False


@dataclass
class Recent:
    """One of the last ten decisions, as the console, the button and overrides need it."""

    seq: int | None
    mono: float
    outcome: str              # the decision's own outcome (lower case)
    effective: str            # after overrides
    overridable: bool
    lockout_until: float      # monotonic: nothing opens the gate before this (rules.md §3.5)
    subject: dict[str, Any]
    venue: dict[str, Any]
    view: dict[str, Any]


@dataclass
class Command:
    kind: str
    args: tuple[Any, ...] = ()
    future: concurrent.futures.Future[Any] | None = None


@dataclass
class Temp:
    """What the decision uses and the event records (hardware.md §1.10 table)."""

    status: str               # ok | stale | absent | fault
    body_centi_c: int | None = None
    measured_at_ms: int | None = None
    attempt: int = 1


@dataclass
class DecisionRecord:
    """Latency record for ``bench/latency.py``: frame capture to the GPIO call."""

    seq: int | None
    outcome: str
    t_capture: float
    t_act: float


@dataclass
class Delivery:
    seq: int | None
    plate: str | None
    mono: float
    codes: set[str] = field(default_factory=set)


# -- the process ---------------------------------------------------------------------------------


class GateApp:
    """One gate: pins, store, clock, bundle, camera, thermometer, console and the decision loop.

    Args:
        cfg: ``gate.toml``.
        pin_factory: gpiozero factory (default: ``[gpio] pin_factory``, hardware.md §3.6).
        camera: a ready ``edge.camera.Camera`` (tests, the demo); default from ``[camera]``.
        thermometer: a ready thermometer; default ``open_thermometer`` from ``[thermometer]``.
        on_decision: called after each decision with ``(view, line)`` (the demo prints the line).
        on_note: called with one line for other facts worth a line (bindings, overrides, alerts,
            material scans).
        pin_gate: the console's rate limit and lockout state (tests inject a clock).
        ntp: NTP probe for the trusted clock (tests).
        env: environment (systemd notification variables, the test fault hook).
        create_data_dir: the demo creates its data directory; ``gate run`` never does.
    """

    def __init__(
        self,
        cfg: GateConfig,
        *,
        pin_factory: Any = None,
        camera: Any = None,
        thermometer: Any = None,
        on_decision: Callable[[dict[str, Any], str], None] | None = None,
        ntp: Callable[[], bool] | None = None,
        env: Mapping[str, str] | None = None,
        create_data_dir: bool = False,
        console: bool | None = None,
        thermometer_options: Mapping[str, Any] | None = None,
        on_note: Callable[[str], None] | None = None,
        pin_gate: Any = None,
    ) -> None:
        self.cfg = cfg
        self.env = dict(os.environ if env is None else env)
        self._pin_factory = pin_factory
        self._own_factory = pin_factory is None
        self._camera = camera
        self._thermometer = thermometer
        self._thermometer_options = dict(thermometer_options or {})
        self._on_decision = on_decision
        self._on_note = on_note
        self._pin_gate = pin_gate
        self._ntp = ntp
        self._create = create_data_dir
        self._want_console = cfg.console.enabled if console is None else console
        self.broadcaster = Broadcaster()
        self.fault = TestFault.from_env(self.env)
        self.notifier = Notifier(self.env, self.fault)
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stop_reason = "shutdown"
        self._lock = threading.Lock()
        self._status_cache: dict[str, Any] = {}
        self._recent: collections.deque[Recent] = collections.deque(maxlen=RECENT_MAX)
        self._held: dict[tuple[str, str], Held] = {}
        self._waiting: TempWait | None = None
        self._queued: collections.deque[Scan] = collections.deque()
        self._setup: tuple[float, Account] | None = None
        self._delivery: Delivery | None = None
        self._fault_since: float | None = None
        self._fault_reported = False
        self._next_housekeeping = 0.0
        self._next_flush = 0.0
        self._gs_key: tuple[Any, ...] | None = None
        self._gs_next = 0.0
        self._today: Any = None
        self._today_count = 0
        self._today_counted = 0
        self._decision_count = 0
        self._started_boottime: int | None = None
        self._started_mono = time.monotonic()
        self.first_decision_s: float | None = None
        self.decisions: collections.deque[DecisionRecord] = collections.deque(maxlen=100_000)
        self.ready = threading.Event()
        self.turnstile: Turnstile | None = None
        self.store: EventStore | None = None
        self.state: StateDB | None = None
        self.clock: TrustedClock | None = None
        self.console: ConsoleServer | None = None
        self.camera_obj: Any = None
        self.thermometer_obj: Any = None
        self._measure_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._deep: Any = None
        self._deduper: Any = None
        self._decoder: Any = None
        self._holder: Any = None
        self._updater: Any = None
        self._fresh_monitor: Any = None
        self._fresh: Any = None
        self.binding: dict[str, Any] | None = None
        self.device_id = cfg.gate.device_id
        self.pid_key: bytes | None = None
        self.pid_kid = 1
        self._accounts = Accounts()
        self._accounts_gen: object = None

    # == lifecycle ===================================================================================

    def request_stop(self, reason: str = "shutdown") -> None:
        """Ask the loop to stop after the current step (thread- and signal-safe)."""
        self._stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT stop the loop cleanly (main thread only); returns a function that restores
        the previous handlers."""

        def handler(signum: int, _frame: Any) -> None:
            self.notifier.send("STOPPING=1")
            self.request_stop("signal")

        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in previous:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def run(self) -> int:
        """Start, run the decision loop until stopped, stop. Returns the process exit code.

        0 after a clean stop; 70 when the loop crashed (the relay is safe, systemd restarts us).
        Configuration errors propagate (exit 78 through the CLI).
        """
        clean = False
        try:
            self.start()
            self._loop()
            clean = True
            return 0
        except (EdgeError, ConfigError) as exc:
            if not self.ready.is_set():
                raise                                  # start-up: one line and exit 1 / 78 from the CLI
            log.exception("decision loop stopped by an error: %s", exc)
            return 70
        except Exception:
            log.exception("decision loop crashed")
            return 70
        finally:
            if self.turnstile is not None:
                self.turnstile.safe()                      # hardware.md §3.3 step 1
            self._shutdown(clean=clean)

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        from edge.clock import boottime_ms

        self._started_boottime = boottime_ms()
        # 1. pins first, at their safe level (§3.3 step 3)
        factory = self._pin_factory or make_pin_factory(cfg.gpio.pin_factory)
        self._pin_factory = factory
        self.turnstile = Turnstile.from_config(cfg.gpio, pin_factory=factory)
        self.turnstile.on_button = lambda: self._commands.put(Command("button"))
        self.turnstile.on_tailgate = lambda: self._commands.put(Command("tailgate"))
        # 2. data directory, run marker, store, state, clock
        data_dir = ensure_data_dir(cfg.data_dir, create=self._create)
        ident = load_identity(cfg.identity_dir)
        if ident is not None:
            self.device_id = ident.device_id
            self.pid_key = ident.pid_key_bytes
            self.pid_kid = ident.pid_kid
        else:
            log.warning("gate not enrolled: events carry no pid until enrolment (sync.md §2.3)")
        marker = run_marker_path(data_dir)
        unclean = marker.exists()
        self.store = EventStore(
            data_dir, self.device_id, max_db_mb=cfg.store.max_db_mb, reserve_mb=cfg.store.reserve_mb,
            on_full=cfg.store.on_full, commit_max_events=cfg.store.commit_max_events, recover_corrupt=True,
        )
        _write_marker(marker)
        self.state = StateDB(data_dir)
        self.clock = TrustedClock(self.state, ntp=self._ntp)
        from edge.bundles.freshness import FreshnessMonitor
        from edge.bundles.updater import BundleUpdater
        from edge.bundles.view import BundleHolder

        self._holder = BundleHolder(self.state, data_dir)
        self._fresh_monitor = FreshnessMonitor(self.state, self.store)
        # Never used to update here (the agent does): only to read why a newer bundle is not applied.
        self._updater = BundleUpdater(data_dir, state=self.state, events=self.store, clock=self.clock,
                                      device_id=self.device_id, site=ident.site_id if ident else None)
        self.binding = self._load_binding(ident)
        reading = self.clock.read()
        last_boot = self.state.kv_get(_LAST_BOOT_KEY)
        self.state.kv_set(_LAST_BOOT_KEY, self.clock.boot)
        quick = self.store.quick_check() if unclean else "skipped"
        self._append("device_start", {
            "software": __version__, "reason": "restart" if last_boot == self.clock.boot else "boot",
            "unclean": unclean, "quick_check": quick, "db_schema": EVENTS_SCHEMA_VERSION,
        }, reading.at())
        if unclean:
            log.warning("previous run did not stop cleanly; quick_check=%s", quick)
        self._refresh_bundle(reading)
        self._restore_recent(reading)
        # decoder, de-duplication, deep pass (hardware.md §2.3-2.5)
        from edge import decode as decode_mod

        self._decoder = decode_mod.configure(pyzbar=cfg.decode.pyzbar, state_dir=data_dir)
        self._deduper = decode_mod.Deduper(cfg.decode.hold_s)
        self._deep = decode_mod.DeepPass(
            lambda frame, symbols: self._commands.put(Command("deep", (frame, symbols))),
            interval_s=cfg.decode.deep_interval_s, decoder=self._decoder, formats=cfg.decode.formats,
            roi=cfg.camera.roi or None,
        ).start()
        self._measure_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="thermometer:measure")
        # 3. console, then ready; camera and thermometer may be absent and are not waited for
        # Started, never waited for: both may be absent and the gate then refers (§4.1).
        self._start_thermometer()
        self._start_camera()
        self._publish_gate_status(self._update_status(reading), reading)
        if self._want_console:
            self.console = ConsoleServer(cfg.console, self, pin_gate=self._pin_gate)
            self.console.start()
        self.turnstile.ready()
        self.ready.set()
        self.notifier.send("READY=1")
        log.info("gate ready device=%s lane=%s console=%s", self.device_id, cfg.gate.lane,
                 self.console.url if self.console else "off")

    def _start_camera(self) -> None:
        from edge.camera import Camera

        if self._camera is None:
            self._camera = Camera.from_config(self.cfg.camera)
        self.camera_obj = self._camera
        if not self.camera_obj.running:
            self.camera_obj.start()

    def _start_thermometer(self) -> None:
        cfg = self.cfg.thermometer
        if self._thermometer is None:
            from firmware_bridge.reader import open_thermometer

            options = {**cfg.model_dump(), "clock": self._trusted_datetime, **self._thermometer_options}
            self._thermometer = open_thermometer(**options)
        self.thermometer_obj = self._thermometer

    def _trusted_datetime(self) -> datetime:
        assert self.clock is not None
        return datetime.fromtimestamp(self.clock.now() / 1000, tz=UTC)

    # -- stop ------------------------------------------------------------------------------------

    def _shutdown(self, *, clean: bool) -> None:
        for closer in (
            lambda: self.camera_obj.stop() if self.camera_obj is not None else None,
            lambda: self._deep.stop() if self._deep is not None else None,
            lambda: self.console.stop() if self.console is not None else None,
            lambda: self._measure_pool.shutdown(wait=False, cancel_futures=True) if self._measure_pool else None,
            lambda: self.thermometer_obj.close() if self.thermometer_obj is not None else None,
        ):
            try:
                closer()
            except Exception:
                log.exception("gate shutdown step failed")
        if clean and self.store is not None and self.clock is not None:
            try:
                reason = self._stop_reason
                reason_file = Path(self.cfg.data_dir) / STOP_REASON_FILE
                if reason_file.exists():
                    reason = reason_file.read_text().strip() or reason
                    reason_file.unlink()
                if reason == "signal" and _system_stopping():
                    reason = "shutdown"
                if reason not in ("shutdown", "signal", "update"):
                    reason = "shutdown"
                self.store.flush_held()
                self._append("device_stop", {
                    "reason": reason, "uptime_s": int(time.monotonic() - self._started_mono),
                }, self.clock.read().at())
                self.clock.checkpoint()
                run_marker_path(Path(self.cfg.data_dir)).unlink(missing_ok=True)
            except Exception:
                log.exception("clean stop bookkeeping failed")
        for closer in (
            lambda: self.turnstile.close() if self.turnstile is not None else None,
            lambda: self._holder.close() if self._holder is not None and hasattr(self._holder, "close") else None,
            lambda: self.store.close() if self.store is not None else None,
            lambda: self.state.close() if self.state is not None else None,
        ):
            try:
                closer()
            except Exception:
                log.exception("gate shutdown step failed")
        if self._own_factory and self._pin_factory is not None:
            with contextlib.suppress(Exception):
                self._pin_factory.close()
        log.info("gate stopped clean=%s", clean)

    # == the decision loop ===========================================================================

    def _loop(self) -> None:
        last_seq = 0
        slot = self.camera_obj.slot if self.camera_obj is not None else None
        while not self._stop.is_set():
            self.notifier.tick()
            self._run_commands()
            frame = slot.get(after_seq=last_seq, timeout=LOOP_WAKE_S) if slot is not None else None
            if frame is None and slot is None:
                time.sleep(LOOP_WAKE_S)
            if frame is not None:
                last_seq = frame.seq
                self._on_frame(frame)
            self._advance_waits()
            if time.monotonic() >= self._next_housekeeping:
                self._housekeeping()

    def _run_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            handler = getattr(self, f"_cmd_{cmd.kind}")
            if cmd.future is None:
                handler(*cmd.args)
                continue
            if not cmd.future.set_running_or_notify_cancel():
                continue
            try:
                cmd.future.set_result(handler(*cmd.args))
            except ConsoleRefusal as exc:
                cmd.future.set_exception(exc)
            except Exception as exc:
                # The guard gets a 500, the loop goes on... unless it is a bug in the loop itself.
                cmd.future.set_exception(exc)
                raise

    def _submit(self, kind: str, *args: Any) -> Any:
        """From a console thread: run on the decision loop and wait for the answer."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._commands.put(Command(kind, args, fut))
        try:
            return fut.result(timeout=COMMAND_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            fut.cancel()
            raise ConsoleRefusal(503, "busy", "the gate did not answer in time") from exc

    # -- frames and scans ------------------------------------------------------------------------

    def _on_frame(self, frame: Any) -> None:
        cfg = self.cfg
        symbols = self._decoder.decode(frame.image, effort="fast", formats=cfg.decode.formats,
                                       roi=cfg.camera.roi or None)
        if not symbols:
            self._deep.offer(frame)
        new = self._deduper.filter(symbols)
        now = time.monotonic()
        for sym in new:
            self._on_scan(Scan(sym.text, sym.format, frame.t_capture, now))

    def _cmd_deep(self, frame: Any, symbols: list[Any]) -> None:
        now = time.monotonic()
        for sym in self._deduper.filter(symbols):
            self._on_scan(Scan(sym.text, sym.format, frame.t_capture, now))

    def _on_scan(self, scan: Scan) -> None:
        if self._waiting is not None:
            if len(self._queued) >= QUEUE_WHILE_WAITING:
                self._queued.popleft()
                log.warning("scan dropped while waiting for a temperature (queue of %d full)", QUEUE_WHILE_WAITING)
            self._queued.append(scan)
            return
        self._handle_scan(scan)

    def _handle_scan(self, scan: Scan) -> None:
        from edge.credentials import Trust, classify, code_hash, verify

        assert self.clock is not None
        reading = self.clock.read()
        bundle = self._refresh_bundle(reading)
        trust = bundle.trust if bundle is not None else Trust.empty()
        at = datetime.fromtimestamp(reading.now_ms / 1000, tz=UTC)
        klass = classify(scan.text)
        verification = None
        if klass in ("CK1", "HC1"):
            verification = verify(scan.text, trust, at, skew=timedelta(seconds=self.cfg.credentials.clock_skew_s))
        code = Code(scan, verification, opaque=verification is None, bundle=bundle,
                    freshness=self._fresh.state if self._fresh is not None and bundle is not None else "none")
        if self._setup is not None:
            self._setup_scan(code, reading)
            return
        if code.kind == "venue":
            log.info("venue code outside set-up mode: ignored")
            self._prompt("setup", "场所码仅在设置模式下使用", "Venue codes are used in set-up mode only", 3)
            return
        if code.kind == "material" or (code.opaque and scan.format not in ("QRCode", "MicroQRCode", "rMQRCode")):
            self._material(code, reading)
            return
        if code.opaque and bundle is not None and bundle.roster_key is not None:
            code.code_hash = code_hash(scan.text, bundle.roster_key)
        self._judge(code, None, reading)

    # -- deciding ----------------------------------------------------------------------------------

    def _bundle(self) -> Any:
        bundle, _pointer = self._holder.current()
        return bundle

    def _policy(self) -> Mapping[str, Any]:
        # Without a bundle every decision is REFER pre-no-bundle and there are no guard
        # accounts (console.md §3): the settings' defaults are never needed, so {} is enough.
        bundle = self._bundle()
        return bundle.policy if bundle is not None else {}

    def _inputs(self, code: Code, partner: Code | None, reading: Any, temp: Temp | None) -> Any:
        from edge.policy.engine import DecisionInputs, GateBinding, Temperature

        b = self.binding or {}
        bundle = code.bundle
        t = None
        if temp is not None and temp.body_centi_c is not None and temp.measured_at_ms is not None:
            t = Temperature(temp.body_centi_c, temp.measured_at_ms, temp.attempt)
        return DecisionInputs(
            now_ms=reading.now_ms, lane=self.cfg.gate.lane,
            gate=GateBinding(self.device_id, b.get("venue_id") or "", b.get("zone") or "", b.get("door"),
                             b.get("firm_id"), self.cfg.gate.tz),
            bundle=bundle, freshness=code.freshness if bundle is not None else "none", clock_state=reading.state,
            credential=code.verification, partner=partner.verification if partner else None,
            opaque=code.opaque, opaque_code_hash=code.code_hash, temperature=t,
            thermometer_status=temp.status if temp is not None else self._thermometer_state(),
        )

    def _judge(self, code: Code, partner: Code | None, reading: Any) -> None:
        """Pairing, temperature, then the decision (rules.md §3.1, hardware.md §1.10)."""
        from edge.policy.engine import decide

        inputs = self._inputs(code, partner, reading, None)
        first = decide(inputs)
        if first.pairing is not None and partner is None:
            half, sub = first.pairing
            other = "health" if half == "pass" else "pass"
            mate = self._held.pop((other, sub), None)
            if mate is None:
                self._held[(half, sub)] = Held(code, half, sub, time.monotonic())
                window = int(self._policy().get("pair_window_s", 60))
                self._prompt("pair", "请扫描另一个码", "Scan the other code", window)
                log.info("green lane: %s held for its partner window_s=%d", half, window)
                return
            if not self._held:
                self._prompt("pair", "", "", 0)
            self._judge(mate.code, code, reading)
            return
        if first.stage == 0 or not self._wants_temperature():
            self._finish(code, partner, inputs, first, reading, self._no_temp())
            return
        self._measure(code, partner)

    def _wants_temperature(self) -> bool:
        return self.thermometer_obj is not None and self.cfg.thermometer.enabled

    def _thermometer_state(self) -> str:
        if self.thermometer_obj is None or not self.cfg.thermometer.enabled:
            return "absent"
        return str(self.thermometer_obj.status().state)

    def _no_temp(self) -> Temp:
        st = self._thermometer_state()
        return Temp("absent" if st == "ok" else st)

    def _temp_of(self, m: Any, attempt: int) -> Temp:
        if m is None:
            return self._no_temp()
        if m.status == "measured" and m.body_centi_c is not None:
            measured = to_ms(m.measured_at) if m.measured_at is not None else None
            return Temp("ok", m.body_centi_c, measured, attempt)
        if m.status in ("stale", "fault"):
            return Temp(m.status)
        return Temp("absent")

    def _measure(self, code: Code, partner: Code | None) -> None:
        """hardware.md §1.10 step 1: ``m1``; a wait goes to a worker so the loop keeps pinging."""
        policy = self._policy()
        max_age = float(policy.get("temperature_max_age_s", 20))
        therm = self.thermometer_obj
        m1 = therm.measure(at=code.scan.t_seen, max_age_s=max_age, wait_s=0.0)
        if m1.status == "no_measurement" and bool(policy.get("temperature_required", True)):
            fut = self._measure_pool.submit(  # type: ignore[union-attr]
                therm.measure, at=code.scan.t_seen, max_age_s=max_age, wait_s=self.cfg.thermometer.wait_s)
            self._waiting = TempWait(code, partner, "measure", fut, time.monotonic())
            return
        self._after_m1(code, partner, m1)

    def _after_m1(self, code: Code, partner: Code | None, m1: Any) -> None:
        policy = self._policy()
        fever = int(policy.get("fever_centi_c", 3730))
        if m1.status == "measured" and m1.body_centi_c is not None and m1.body_centi_c >= fever:
            # §1.10 step 2: amber, two short beeps, "please measure again"; only a new episode counts
            assert self.turnstile is not None
            self.turnstile.refer()
            wait_s = float(policy.get("remeasure_wait_s", 30))
            self._prompt("remeasure", "请再测一次", "Please measure again", int(wait_s))
            prompt_t = time.monotonic()
            fut = self._measure_pool.submit(  # type: ignore[union-attr]
                self.thermometer_obj.measure, at=prompt_t, max_age_s=float(policy.get("temperature_max_age_s", 20)),
                wait_s=wait_s, new_since=prompt_t)
            self._waiting = TempWait(code, partner, "remeasure", fut, prompt_t, m1=m1, prompted=True)
            return
        self._decide_now(code, partner, self._temp_of(m1, 1))

    def _advance_waits(self) -> None:
        w = self._waiting
        if w is not None:
            if not w.prompted and time.monotonic() - w.started >= MEASURE_PROMPT_AFTER_S:
                w.prompted = True
                self._prompt("measure", "请测量体温", "Please measure your temperature",
                             int(self.cfg.thermometer.wait_s + 0.999))
            if w.future.done():
                self._waiting = None
                try:
                    m = w.future.result()
                except Exception:
                    log.exception("thermometer measurement failed")
                    m = None
                if w.stage == "measure":
                    if m is None:
                        self._decide_now(w.code, w.partner, self._no_temp())
                    else:
                        self._after_m1(w.code, w.partner, m)
                else:
                    self._prompt("remeasure", "", "", 0)
                    if m is not None and m.status == "measured":
                        self._decide_now(w.code, w.partner, self._temp_of(m, 2))
                    else:
                        self._decide_now(w.code, w.partner, self._temp_of(w.m1, 1))
        while self._waiting is None and self._queued:
            self._handle_scan(self._queued.popleft())
        if self._held:
            window = float(self._policy().get("pair_window_s", 60))
            now = time.monotonic()
            for key, h in list(self._held.items()):
                if now - h.since >= window:
                    del self._held[key]
                    if self._waiting is not None:
                        self._held[key] = h      # decide it after the wait
                        continue
                    assert self.clock is not None
                    reading = self.clock.read()
                    from edge.policy.engine import decide

                    inputs = self._inputs(h.code, None, reading, None)
                    self._finish(h.code, None, inputs, decide(inputs), reading, self._no_temp())
            if not self._held:
                self._prompt("pair", "", "", 0)
        if self._setup is not None and time.monotonic() >= self._setup[0]:
            self._setup = None
            log.info("set-up mode ended without a scan")
            self._prompt("setup", "设置模式结束，未绑定", "Set-up mode ended: nothing bound", 5)

    def _decide_now(self, code: Code, partner: Code | None, temp: Temp) -> None:
        from edge.policy.engine import decide

        assert self.clock is not None
        reading = self.clock.read()
        inputs = self._inputs(code, partner, reading, temp)
        self._finish(code, partner, inputs, decide(inputs), reading, temp)

    # -- log, then act -------------------------------------------------------------------------------

    def _finish(self, code: Code, partner: Code | None, inputs: Any, decision: Any, reading: Any,
                temp: Temp) -> None:
        from edge.policy import events as ev

        payload = ev.decision_payload(decision, inputs, pid_key=self.pid_key, pid_kid=self.pid_kid)
        outcome = str(payload["outcome"])
        reasons = [{"zh": r.zh, "en": r.en} for r in decision.reasons]
        overridable = decision.overridable
        if self._refer_all() and outcome == "admit":
            # sync.md §1.8 step 5: storage full under on_full = "refer_all": everyone is checked by hand
            outcome = payload["outcome"] = "refer"
            payload["reasons"] = ["gate-storage-full", *payload["reasons"]]
            reasons = [_gate_reason("gate-storage-full"), *reasons]
            overridable = True
        appended = self._append("decision", payload, reading.at())          # 1. log
        t_act = self._act(outcome, payload["reasons"])                       # 2. act
        seq = appended.seq if appended else None
        self.decisions.append(DecisionRecord(seq, outcome, code.scan.t_capture, t_act))
        if self.first_decision_s is None:
            self.first_decision_s = t_act - self._started_mono
        unverified = any(
            c is not None and c.verification is not None and not c.verification.ok and c.claims is not None
            for c in (code, partner)
        )
        lockout = float(getattr(decision, "lockout_s", 0) or 0)
        self._record(seq, payload, reading.at(), reasons, overridable, unverified, lockout)   # 3. console
        # alerts after the decision they belong to (sync.md §1.5, rules.md §3.5)
        policy = inputs.bundle.policy if inputs.bundle is not None else {}
        for kind, alert in ev.alert_events(decision, payload, decision_seq=seq, policy=policy):
            a = self._append(kind, alert, reading.at())
            self._note(f"#{a.seq if a else None} {kind} ({alert.get('cause') or ','.join(alert.get('flags') or [])}) "
                       f"for #{seq}")
        if outcome == "admit" and self.cfg.gate.lane == "green_lane" and payload.get("pass"):
            self._delivery = Delivery(seq, payload["pass"].get("plate"), time.monotonic())

    def _act(self, outcome: str, reason_ids: list[str]) -> float:
        """Relay, lights, buzzer; returns the monotonic time of the GPIO call."""
        t = self.turnstile
        assert t is not None
        now = time.monotonic()
        if outcome == "admit":
            t.admit()
        elif outcome == "deny" and "fever" in reason_ids:
            t.fever()
        elif outcome == "deny" and "gate-tailgate" in reason_ids:
            t.tailgate()
        elif outcome == "deny":
            t.deny()
        else:
            t.refer()
        return now

    def _record(self, seq: int | None, payload: dict[str, Any], at: dict[str, Any], reasons: list[dict[str, str]],
                overridable: bool, unverified: bool, lockout_s: float) -> Recent:
        view = decision_view(seq, at, payload, reasons=reasons, overridable=overridable, unverified=unverified)
        now = time.monotonic()
        rec = Recent(seq, now, payload["outcome"], payload["outcome"], overridable,
                     now + lockout_s if lockout_s else 0.0, dict(payload.get("subject") or {}),
                     dict(payload.get("venue") or {}), view)
        with self._lock:
            self._recent.append(rec)
            self._decision_count += 1
        self.broadcaster.publish("decision", view, id=seq)
        line = _decision_line(view)
        log.info("decision seq=%s outcome=%s reasons=%s", seq, payload["outcome"], ",".join(payload["reasons"]))
        if self._on_decision is not None:
            try:
                self._on_decision(view, line)
            except Exception:
                log.exception("on_decision callback failed")
        return rec

    def _append(self, kind: str, payload: dict[str, Any], at: dict[str, Any]) -> Appended | None:
        """Log an event; when storage fails it waits in memory (sync.md §1.6) and the gate acts anyway."""
        assert self.store is not None
        appended = self.store.append_or_hold(kind, payload, at)
        if appended is None:
            log.error("event kept in memory: store unavailable kind=%s held=%d", kind, self.store.held)
        return appended

    def _refer_all(self) -> bool:
        return self.cfg.store.on_full == "refer_all" and self.store is not None and (
            self.store.full or self.store.held > 0)

    # -- gate-made decisions (no policy) ----------------------------------------------------------

    def _gate_decision(self, outcome: str, reason_id: str) -> dict[str, Any]:
        """A ``decision`` the gate makes alone (hardware.md §3.4-3.5, console.md §1.2)."""
        payload: dict[str, Any] = {
            "venue": self._venue(), "lane": self.cfg.gate.lane, "mode": self._mode(),
            "bundle": self._bundle_state(), "outcome": outcome, "alert": "none",
            "credential": {"kind": "none", "status": "none"},
            "subject": {"pid": None, "pid_kid": None, "name_m": None, "role": None, "firm_id": None,
                        "whitelisted": None},
            "health": {"code": "unknown", "test_age_min": None, "flags": []},
            "temp": {"body_centi_c": None, "status": self._no_temp().status},
            "reasons": [reason_id],
        }
        if self.cfg.gate.lane == "green_lane":
            payload["pass"] = {"pass_id": None, "plate": None, "status": "none"}
        return payload

    def _cmd_tailgate(self) -> None:
        """hardware.md §3.4: a passage without credit."""
        assert self.clock is not None
        reading = self.clock.read()
        payload = self._gate_decision("deny", "gate-tailgate")
        appended = self._append("decision", payload, reading.at())
        assert self.turnstile is not None
        self.turnstile.tailgate()
        self._record(appended.seq if appended else None, payload, reading.at(),
                     [_gate_reason("gate-tailgate")],
                     False, False, 0)

    def _cmd_button(self) -> None:
        """hardware.md §3.5: override a recent overridable deny/refer, refuse, or open by hand."""
        assert self.clock is not None and self.turnstile is not None
        now = time.monotonic()
        with self._lock:
            recent = [r for r in self._recent if now - r.mono <= BUTTON_WINDOW_S]
        locked = [r for r in recent if r.lockout_until > now or (not r.overridable and r.outcome != "admit")]
        target = next((r for r in reversed(recent) if r.effective in ("deny", "refer")), None)
        if locked:
            log.warning("guard button refused: a decision that cannot be overridden within 60 s seq=%s",
                        locked[-1].seq)
            self.turnstile.override_refused()
            self._prompt("override", "不可人工放行", "Cannot be overridden", 5)
            return
        reading = self.clock.read()
        if target is not None:
            if target.seq is None:
                log.error("guard button: the decision is still in the memory queue; opening without an event")
                self.turnstile.admit()
                return
            self._override(target, "admit", "button", "hardware_button", "", reading)
            return
        payload = self._gate_decision("admit", "gate-manual-open")
        appended = self._append("decision", payload, reading.at())
        self.turnstile.admit()
        self._record(appended.seq if appended else None, payload, reading.at(),
                     [_gate_reason("gate-manual-open")], False, False, 0)
        self._prompt("override", "请在控制台登记开门原因", "Record the reason for opening on the console", 10)

    def _override(self, target: Recent, to: str, guard: str, reason: str, note: str, reading: Any) -> int | None:
        payload = {
            "decision_seq": target.seq, "from": target.effective, "to": to, "guard": guard, "reason": reason,
            "note": note[:200], "subject": target.subject, "venue": target.venue,
        }
        appended = self._append("override", payload, reading.at())          # log ...
        assert self.turnstile is not None
        if to == "admit":                                                    # ... then act
            self.turnstile.admit()
        else:
            self.turnstile.deny()
        target.effective = to
        target.view = dict(target.view, override={"to": to, "account": guard})
        self.broadcaster.publish("decision", target.view, id=target.seq)
        log.info("override decision_seq=%s from=%s to=%s guard=%s reason=%s", target.seq, payload["from"], to,
                 guard, reason)
        zh, en = _OUTCOME_WORDS.get(to, ("?", "?"))
        self._note(f"#{appended.seq if appended else None} 改判 / override of #{target.seq}: {zh} / {en} "
                   f"({guard}, {reason})")
        return appended.seq if appended else None

    # -- console actions (ConsoleBackend) ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status_cache)

    def recent_views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r.view) for r in self._recent]

    def accounts(self) -> Accounts:
        bundle = self._bundle() if self._holder is not None else None
        if bundle is not self._accounts_gen:
            settings = bundle.settings if bundle is not None else {}
            self._accounts = Accounts.from_settings(settings.get("console") if isinstance(settings, Mapping) else None)
            self._accounts_gen = bundle
        return self._accounts

    def override_reasons(self) -> list[dict[str, str]]:
        out = []
        for r in self._policy().get("override_reasons") or []:
            if isinstance(r, Mapping) and r.get("code") != "hardware_button":
                out.append({"code": str(r.get("code")), "zh": str(r.get("zh")), "en": str(r.get("en"))})
        return out

    def override(self, req: OverrideRequest, account: Account) -> int:
        return self._submit("console_override", req, account)   # type: ignore[no-any-return]

    def manual(self, req: ManualRequest, account: Account) -> tuple[int | None, int | None]:
        return self._submit("console_manual", req, account)     # type: ignore[no-any-return]

    def start_setup(self, account: Account) -> int:
        return self._submit("console_setup", account)           # type: ignore[no-any-return]

    def _check_reason(self, reason: str) -> None:
        if reason not in {r["code"] for r in self.override_reasons()}:
            raise ConsoleRefusal(400, "bad_request", f"reason {reason!r} is not one of the override reasons")

    def _cmd_console_override(self, req: OverrideRequest, account: Account) -> int | None:
        now = time.monotonic()
        with self._lock:
            target = next((r for r in self._recent if r.seq == req.decision_seq), None)
        if target is None or now - target.mono > OVERRIDE_MAX_AGE_S:
            raise ConsoleRefusal(409, "too_old", "only the last ten decisions, at most 10 min old, can be overridden")
        if target.effective not in ("deny", "refer"):
            raise ConsoleRefusal(400, "bad_request", "only a deny or a refer can be overridden")
        if req.to == target.effective:
            raise ConsoleRefusal(400, "bad_request", f"the decision already is {req.to}")
        self._check_reason(req.reason)
        if req.to == "admit" and not target.overridable:
            raise ConsoleRefusal(409, "not_overridable", "this decision cannot be overridden (rules.md §3.5)")
        assert self.clock is not None
        return self._override(target, req.to, account.id, req.reason, req.note, self.clock.read())

    def _cmd_console_manual(self, req: ManualRequest, account: Account) -> tuple[int | None, int | None]:
        self._check_reason(req.reason)
        now = time.monotonic()
        with self._lock:
            locked = [r for r in self._recent if r.lockout_until > now
                      or (now - r.mono <= BUTTON_WINDOW_S and not r.overridable and r.outcome != "admit")]
        if req.outcome == "admit" and locked:
            assert self.turnstile is not None
            self.turnstile.override_refused()
            raise ConsoleRefusal(409, "not_overridable",
                                 "no manual admit within 60 s of a decision that cannot be overridden")
        assert self.clock is not None
        reading = self.clock.read()
        payload = self._gate_decision("refer", "gate-manual-check")
        appended = self._append("decision", payload, reading.at())
        rec = self._record(appended.seq if appended else None, payload, reading.at(),
                           [_gate_reason("gate-manual-check")], True, False, 0)
        if rec.seq is None:
            # the override must name its decision's seq: act, and keep what we can
            if req.outcome == "admit":
                assert self.turnstile is not None
                self.turnstile.admit()
            return None, None
        oseq = self._override(rec, req.outcome, account.id, req.reason, req.note, reading)
        return rec.seq, oseq

    def _cmd_console_setup(self, account: Account) -> int:
        if self._setup is not None:
            raise ConsoleRefusal(409, "setup_active", "set-up mode is already on")
        self._setup = (time.monotonic() + SETUP_S, account)
        log.info("set-up mode on account=%s for_s=%d", account.id, SETUP_S)
        self._prompt("setup", "设置模式：请扫描场所码", "Set-up: scan the venue code", SETUP_S)
        assert self.clock is not None
        self._update_status(self.clock.read())          # the status bar counts down from now
        return SETUP_S

    def _restore_recent(self, reading: Any) -> None:
        """After a restart the console still replays the last ten decisions (console.md §2), rebuilt
        from the log; a 60 s lock-out of a non-overridable decision survives the restart."""
        import json

        from sync.timefmt import parse_ms

        assert self.store is not None
        bundle = self._bundle()
        try:
            rows = list(reversed(self.store.recent(["decision"], RECENT_MAX)))
            overrides = {}
            for e in reversed(self.store.recent(["override"], 4 * RECENT_MAX)):
                p = json.loads(e.body)["payload"]
                overrides[p.get("decision_seq")] = p
        except Exception:
            log.exception("cannot read the last decisions for the console")
            return
        now_mono = time.monotonic()
        for e in rows:
            ev = json.loads(e.body)
            p, at = ev["payload"], ev["at"]
            texts, overridable, locks = [], True, False
            for rid in p.get("reasons") or []:
                text, ok, lock = _reason_after_restart(str(rid), bundle, (p.get("credential") or {}).get("kind"))
                texts.append(text)
                overridable = overridable and ok
                locks = locks or lock
            age_s = max(0.0, (reading.now_ms - parse_ms(at["wall"])) / 1000)
            mono = now_mono - age_s
            ov = overrides.get(e.seq)
            view = decision_view(e.seq, at, p, reasons=texts, overridable=overridable, override=ov)
            effective = str(ov["to"]) if ov else str(p.get("outcome"))
            self._recent.append(Recent(e.seq, mono, str(p.get("outcome")), effective, overridable,
                                       mono + BUTTON_WINDOW_S if locks else 0.0, dict(p.get("subject") or {}),
                                       dict(p.get("venue") or {}), view))

    # -- set-up mode and venue binding ---------------------------------------------------------------

    def _load_binding(self, ident: Any) -> dict[str, Any] | None:
        assert self.state is not None and self.clock is not None
        row = self.state.read_row("binding")
        if row is None and ident is not None:
            return {"venue_id": ident.venue.venue_id, "zone": ident.venue.zone, "door": ident.venue.door,
                    "firm_id": ident.firm_id, "source": "enrollment"}
        if row is not None and row.get("source") == "venue_code" and row.get("event_seq") is None:
            # bundles.md §3.6 pattern: a switch whose event was lost in a crash gets it now
            seq = self._append("venue_bound", _venue_bound_payload(row), self.clock.read().at())
            if seq is not None:
                self.state.update_row("binding", lambda old: {"event_seq": seq.seq})
        return row

    def _setup_scan(self, code: Code, reading: Any) -> None:
        assert self._setup is not None and self.state is not None
        _, account = self._setup
        self._setup = None
        self._update_status(reading)                    # set-up mode is over, whatever the scan was
        v = code.verification
        bundle = self._bundle()
        why: tuple[str, str] | None = None
        if v is None or v.kind != "venue":
            why = ("不是场所码，未绑定", "Not a venue code: nothing bound")
        elif not v.ok:
            err = str(v.error or "未验证 / Not verified")
            zh, _, en = err.partition(" / ")
            why = (f"场所码未通过验证（{zh}），未绑定", f"Venue code did not verify ({en or zh}): nothing bound")
        elif bundle is not None and v.claims.get("revocation_hash") and bundle.is_revoked(v.claims["revocation_hash"]):
            why = ("场所码已撤销，未绑定", "Venue code revoked: nothing bound")
        if why is not None:
            log.warning("set-up scan refused: %s", why[1])
            self._prompt("setup", why[0], why[1], 8)
            return
        c = v.claims
        row = {"venue_id": c["venue_id"], "zone": c["zone"], "door": c.get("door"), "firm_id": c.get("firm"),
               "venue_name": c.get("venue_name"), "source": "venue_code", "kid": c.get("kid"),
               "bound_by": account.id, "event_seq": None}
        self.state.update_row("binding", lambda old: row)         # the switch first ...
        appended = self._append("venue_bound", _venue_bound_payload(row), reading.at())   # ... then its event
        if appended is not None:
            self.state.update_row("binding", lambda old: {"event_seq": appended.seq})
        self.binding = row
        self._update_status(reading)
        log.info("venue bound venue=%s zone=%s by=%s", row["venue_id"], row["zone"], account.id)
        place = f"{row['venue_id']} {row['zone']}" + (f" {row['door']}" if row["door"] else "")
        self._prompt("setup", f"已绑定：{place}", f"Bound to {place}", 8)
        self._note(f"#{appended.seq if appended else None} 场所已绑定 / venue bound: {place} ({account.id})")

    # -- material scans ------------------------------------------------------------------------------

    def _material(self, code: Code, reading: Any) -> None:
        """sync.md §1.5 ``material_scan``: goods, not people; logged against the current delivery."""
        d = self._delivery
        if d is not None and time.monotonic() - d.mono > DELIVERY_WINDOW_S:
            d = self._delivery = None
        v = code.verification
        if v is not None:
            claims = code.claims or {}
            text = str(claims.get("goods_code") or "")
            result = "recorded" if v.ok else "unreadable"
        else:
            text, result = code.scan.text, "recorded"
        text = text[:512]
        if result == "recorded" and d is not None and text in d.codes:
            result = "duplicate"
        if d is not None and result == "recorded":
            d.codes.add(text)
        payload = {"venue": self._venue(), "code": text, "format": code.scan.format,
                   "delivery_seq": d.seq if d else None, "plate": d.plate if d else None, "result": result}
        appended = self._append("material_scan", payload, reading.at())
        log.info("material scan result=%s delivery_seq=%s", result, payload["delivery_seq"])
        self._note(f"#{appended.seq if appended else None} 货物码 {text} / goods code: {result}"
                   + (f", 车辆 / truck {d.plate} (#{d.seq})" if d is not None else ", 无当前车辆 / no current truck"))

    # -- housekeeping --------------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        assert self.clock is not None and self.store is not None and self.turnstile is not None
        now = time.monotonic()
        self._next_housekeeping = now + HOUSEKEEPING_S
        self.clock.maintain()
        reading = self.clock.read()
        for w in self.clock.drain_warnings():
            self._append("clock_warning", w.payload(), reading.at())
        self._refresh_bundle(reading)
        self._thermometer_alert(reading)
        if self.store.held and now >= self._next_flush:
            self._next_flush = now + FLUSH_HELD_S
            if self.store.flush_held() is not None:
                log.info("held events written")
        self.turnstile.tick()
        st = self._update_status(reading)
        degraded = (st["camera"]["state"] != "ok"
                    or st["thermometer"]["state"] not in ("ok", "absent")
                    or st["bundle"]["state"] in ("expired", "none"))
        self.turnstile.set_degraded(degraded)
        self.notifier.status(
            f"camera={st['camera']['state']} thermometer={st['thermometer']['state']} "
            f"bundle={st['bundle']['state']} clock={st['clock']['state']} backlog={st['upload']['backlog']}")
        self._publish_gate_status(st, reading)

    def _publish_gate_status(self, st: Mapping[str, Any], reading: Any) -> None:
        """The agent's heartbeat source (sync/agent/gate_status.py): at start, every 10 s, at once on change."""
        from edge.clock import boottime_ms
        from sync.agent.gate_status import CameraStatus, GateStatus, ThermometerStatus, write_gate_status

        assert self.state is not None
        key = (st["camera"]["state"], st["thermometer"]["state"], st["storage"]["level"], st["mode"]["mode"])
        now = time.monotonic()
        if key == self._gs_key and now < self._gs_next:
            return
        self._gs_key, self._gs_next = key, now + GATE_STATUS_EVERY_S
        therm = self.thermometer_obj.status() if self.thermometer_obj is not None else None
        cam = self.camera_obj.status() if self.camera_obj is not None else None
        try:
            write_gate_status(self.state, GateStatus(
                pid=os.getpid(), boot=reading.boot, boottime_ms=boottime_ms(),
                started_boottime_ms=self._started_boottime, software=__version__,
                thermometer=ThermometerStatus(
                    status=st["thermometer"]["state"], protocol=self.cfg.thermometer.protocol,
                    last_reading_age_s=getattr(therm, "last_reading_age_s", None),
                    last_error=therm.last_error[:200] if therm is not None and therm.last_error else None),
                camera=CameraStatus(status=st["camera"]["state"], fps=getattr(cam, "fps", None)),
                storage_level=st["storage"]["level"], held_events=st["storage"]["held"],
                decisions_today=self._decisions_today(reading), mode=st["mode"]["mode"],
            ))
        except Exception:
            log.exception("cannot publish the gate status for the agent")

    def _decisions_today(self, reading: Any) -> int:
        """Decisions since local midnight in the site's time zone (heartbeat ``decisions_today``)."""
        from zoneinfo import ZoneInfo

        local = datetime.fromtimestamp(reading.now_ms / 1000, tz=ZoneInfo(self.cfg.gate.tz))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        day = midnight.date()
        if self._today != day:
            from edge.store.schema import connect
            from sync.timefmt import format_ms

            since = format_ms(int(midnight.timestamp() * 1000))
            conn = connect(Path(self.cfg.data_dir) / "events.db", "reader")
            try:
                row = conn.execute("SELECT count(*) FROM events WHERE kind = 'decision' AND wall >= ?",
                                   (since,)).fetchone()
            finally:
                conn.close()
            self._today, self._today_count = day, int(row[0])
            self._today_counted = self._decision_count
        return self._today_count + (self._decision_count - self._today_counted)

    def _refresh_bundle(self, reading: Any) -> Any:
        """The bundle in force and its freshness now (bundles.md §4.1); a change writes ``bundle_state``."""
        bundle, pointer = self._holder.current()
        unreadable = pointer is not None and bundle is None
        self._fresh = self._fresh_monitor.check(pointer, reading, unreadable=unreadable)
        return bundle

    def _thermometer_alert(self, reading: Any) -> None:
        """hardware.md §1.7: one ``temp_alert`` (sensor_fault) per outage of ``fault_alert_after_s``."""
        state = self._thermometer_state()
        now = time.monotonic()
        if state in ("stale", "fault"):
            if self._fault_since is None:
                self._fault_since = now
            elif not self._fault_reported and now - self._fault_since >= self.cfg.thermometer.fault_alert_after_s:
                self._fault_reported = True
                self._append("temp_alert", {
                    "cause": "sensor_fault", "decision_seq": None, "body_centi_c": None,
                    "threshold_centi_c": int(self._policy().get("fever_centi_c", 3730)),
                    "subject": None, "venue": self._venue(), "observation_point": None,
                }, reading.at())
                log.warning("thermometer offline for %.0f s: sensor_fault alert", now - self._fault_since)
        else:
            self._fault_since, self._fault_reported = None, False

    # -- status ----------------------------------------------------------------------------------------

    def _venue(self) -> dict[str, Any]:
        b = self.binding or {}
        return {"venue_id": b.get("venue_id") or "", "zone": b.get("zone") or "", "door": b.get("door")}

    def _mode(self) -> str:
        bundle = self._bundle()
        if bundle is None:
            return "normal"
        return str(bundle.mode.get("mode") or "normal")

    def _bundle_state(self) -> dict[str, Any]:
        if self._fresh is None:
            return {"version": 0, "state": "expired"}
        return dict(self._fresh.event_bundle())

    def _update_status(self, reading: Any) -> dict[str, Any]:
        assert self.store is not None
        fresh = self._fresh
        bundle = self._bundle()
        cam = self.camera_obj.status().status if self.camera_obj is not None else "no_frames"
        therm = self.thermometer_obj.status() if self.thermometer_obj is not None else None
        therm_state = "absent" if not self.cfg.thermometer.enabled else (therm.state if therm else "stale")
        used, budget = self.store.storage_bytes()
        held = self.store.held
        if held or self.store.last_error:
            level = "full" if self.store.full else "error"
        elif self.store.full:
            level = "full"
        elif used >= 0.9 * budget:
            level = "prune"
        elif used >= 0.8 * budget:
            level = "warn"
        else:
            level = "ok"
        ob = self.store.outbox()
        backlog = max(0, self.store.head().last_seq - ob.acked_seq)
        enrolled = self.pid_key is not None
        mode = bundle.mode if bundle is not None else {"mode": "normal", "since": None}
        b = self.binding
        st: dict[str, Any] = {
            "gate": {"device_id": self.device_id, "lane": self.cfg.gate.lane,
                     "binding": None if not b else {k: b.get(k) for k in ("venue_id", "zone", "door", "firm_id",
                                                                         "venue_name")}},
            "mode": {"mode": str(mode.get("mode") or "normal"), "since": mode.get("since")},
            "bundle": {"version": fresh.version if fresh else 0, "state": fresh.state if fresh else "none",
                       "issued_at": fresh.issued_at if fresh else None,
                       "age_h": (fresh.age_s // 3600) if fresh and fresh.age_s is not None else None},
            "clock": {"state": reading.state, "now": reading.wall},
            "camera": {"state": cam},
            "thermometer": {"state": therm_state, "last_error": therm.last_error if therm else None},
            "beam": self.turnstile.beam_state if self.turnstile else "absent",
            "storage": {"level": level, "used_bytes": used, "budget_bytes": budget, "held": held},
            "upload": {"state": ob.state if enrolled else "none", "backlog": backlog},
            "setup": None if self._setup is None else {
                "remaining_s": max(0, int(self._setup[0] - time.monotonic() + 0.999))},
        }
        st["bundle"]["update_failed"] = self._updater.update_failure() if self._updater is not None else None
        st["banners"] = _banners(st, fresh, reading, self.cfg.store.on_full)
        with self._lock:
            self._status_cache = st
        return st

    def _note(self, line: str) -> None:
        if self._on_note is not None:
            try:
                self._on_note(line)
            except Exception:
                log.exception("on_note callback failed")

    def _prompt(self, kind: str, zh: str, en: str, remaining_s: int) -> None:
        self.broadcaster.publish("prompt", {"kind": kind, "zh": zh, "en": en, "remaining_s": remaining_s})


# -- helpers ---------------------------------------------------------------------------------------


# rules.md §3.1: the stage-0 rows that deny (a new scan is the remedy, not an override)
_PRE_DENY = frozenset({"pre-bad-signature", "pre-revoked", "pre-expired", "pre-dcc-key-usage"})


def _gate_reason(rid: str) -> dict[str, str]:
    zh, en = GATE_REASONS[rid]
    return {"zh": zh, "en": en}


def _reason_after_restart(rid: str, bundle: Any, credential_kind: str | None) -> tuple[dict[str, str], bool, bool]:
    """(shown text, overridable, locks the gate for 60 s) of a logged reason id, without the decision's data.

    Rule reasons are rendered without data ({{path}} placeholders show as ?, rules.md §3.4).
    """
    from edge.policy.engine import PRE_TEXTS

    if rid in GATE_REASONS:
        return _gate_reason(rid), rid in ("gate-manual-check", "gate-storage-full"), False
    if rid == "pre-unpaired":
        t = PRE_TEXTS["pre-unpaired-driver" if credential_kind == "pass" else "pre-unpaired-pass"]
        return {"zh": t.zh, "en": t.en}, True, False
    if rid in PRE_TEXTS:
        t = PRE_TEXTS[rid]
        return {"zh": t.zh, "en": t.en}, rid not in _PRE_DENY, False
    if rid.endswith(":error"):
        r = rid[: -len(":error")]
        return {"zh": f"规则执行错误，请人工核验（{r}）", "en": f"Rule error: check by hand ({r})"}, True, False
    rule = bundle.rules.get(rid) if bundle is not None else None
    if rule is None:
        return {"zh": rid, "en": rid}, False, False
    text = rule.render_reason({})
    return {"zh": text.zh, "en": text.en}, rule.override == "guard", rule.override == "none"


def _venue_bound_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "venue": {"venue_id": row["venue_id"], "zone": row["zone"], "door": row.get("door")},
        "firm_id": row.get("firm_id"), "source": row.get("source", "venue_code"), "kid": row.get("kid"),
        "venue_name": row.get("venue_name"), "by": row.get("bound_by"),
    }


def _write_marker(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _system_stopping() -> bool:
    try:
        out = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True, timeout=2,
                             check=False)
        return out.stdout.strip() == "stopping"
    except (OSError, subprocess.SubprocessError):
        return False


_OUTCOME_WORDS = {"admit": ("准许通行", "ADMIT"), "deny": ("禁止通行", "DENY"), "refer": ("人工核验", "CHECK BY HAND")}


def _decision_line(view: Mapping[str, Any]) -> str:
    """One line per decision (the demo prints it): seq, masked name, outcome, reasons in both languages."""
    outcome = view.get("override", None)
    oc = view["outcome"] if not outcome else outcome["to"]
    zh, en = _OUTCOME_WORDS.get(oc, ("?", "?"))
    subject = view.get("subject") or {}
    who = subject.get("name_m") or "-"
    extra = ""
    p = view.get("pass") or {}
    if p.get("plate"):
        extra += f" {p['plate']}"
    t = view.get("temp") or {}
    if t.get("body_centi_c") is not None:
        extra += f" {t['body_centi_c'] / 100:.2f}°C"
    reasons = "; ".join(f"{r['zh']} / {r['en']}" for r in view.get("reasons") or []) or "-"
    return f"#{view.get('seq')} {who}{extra} {zh} / {en}: {reasons}"


def _banners(st: Mapping[str, Any], fresh: Any, reading: Any, on_full: str) -> list[dict[str, str]]:
    """Banners of bundles.md §4.4 and §5.4, hardware.md and sync.md §1.8."""
    out: list[dict[str, str]] = []

    def add(level: str, zh: str, en: str) -> None:
        out.append({"level": level, "zh": zh, "en": en})

    state = st["bundle"]["state"]
    if state == "none":
        add("red", "无规则：全部人工核验", "No rules: check everyone by hand")
    elif state == "expired":
        if fresh is not None and fresh.cause in ("signer_revoked", "corrupt"):
            add("red", "规则已失效：受限模式", "Rules invalid: restricted mode")
        else:
            add("red", "规则已过期：受限模式", "Rules expired: restricted mode")
    elif state == "stale":
        if fresh is not None and fresh.cause == "clock":
            add("amber", "时间未确认，规则时效未知", "Clock not confirmed: rules age unknown")
        else:
            h = st["bundle"]["age_h"]
            add("amber", f"规则已 {h} 小时未更新", f"Rules not updated for {h} h")
    failed = st["bundle"].get("update_failed")
    if failed:
        add("amber", f"规则更新失败：{failed}", f"Rules update failed: {failed}")
    if st["mode"]["mode"] == "emergency":
        since = st["mode"].get("since") or ""
        add("red", f"应急模式（{since} 起）", f"Emergency mode since {since}")
    if reading.state == "untrusted":
        add("amber", "时钟超前，按上限计时", "Clock ahead: time capped")
    elif reading.state == "floor":
        add("amber", "时间未确认，按最后可信时间计时", "Clock not confirmed: counting from the last trusted time")
    elif reading.offset_ms is not None and abs(reading.offset_ms) > 120_000:
        s = abs(reading.offset_ms) // 1000
        add("grey", f"系统时钟偏差 {s} 秒", f"System clock off by {s} s")
    if st["gate"]["binding"] is None:
        add("amber", "本门岗未绑定场所", "This gate is not bound to a venue")
    if st["camera"]["state"] != "ok":
        add("amber", "摄像头无画面", "Camera: no picture")
    if st["thermometer"]["state"] in ("stale", "fault"):
        add("amber", "体温计离线", "Thermometer offline")
    level = st["storage"]["level"]
    if level in ("full", "error"):
        if on_full == "refer_all":
            add("red", "存储已满：全部人工核验", "Storage full: check everyone by hand")
        else:
            add("red", "存储故障：记录暂存内存", "Storage failing: events kept in memory")
    elif level in ("warn", "prune"):
        add("amber", "存储将满", "Storage nearly full")
    if st["beam"] == "blocked":
        add("amber", "光栅被遮挡", "Beam blocked")
    return out

