"""The trusted clock (bundles.md §5): what time it is, and how far to believe it.

A Pi has no real-time clock, so the system wall clock S is only a candidate.
The gate process and the sync agent share one ``clock`` row in ``state.db``:

- the **floor**: the latest trusted time ever seen, with the boot id and
  CLOCK_BOOTTIME when it was set. ``lo`` = floor + boottime elapsed since then
  (the whole boottime when the floor predates this boot) is a proven lower bound.
- the **confirmation anchor**: the server time of the last verified signed time
  with a round trip ≤ 10 s, valid only within the boot that received it;
  ``est`` = anchor + boottime elapsed since its receipt.

``read()`` applies the table of §5.3, first row that holds:

1. anchor, NTP synced, |S − est| ≤ skew_warn_s   → synced, S
2. anchor (no NTP, or S disagrees: warning skew) → synced, est
3. NTP and lo ≤ S ≤ lo + max_unconfirmed_lead_s  → synced, S
4. NTP and S beyond that (warning ahead)         → untrusted, lo + lead
5. otherwise (warning behind_floor when S < lo)   → floor, lo

and in every row now := max(now, lo), so whatever expired before the last
trusted time stays expired whatever the wall clock says. The floor only goes
up (a lower value is ignored), except through ``reset_floor`` (a root-signed
``clock_floor_reset``, §5.6). The floor never rises from an unconfirmed system
clock, only from signed times, bundle times, NTP within the lead bound, and the
running clock while synced.

Warnings (``clock_warning`` events, sync.md §1.5) are edge-triggered: one when a
condition starts, none while it lasts, none when the state improves.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import RELEASE_FLOOR
from edge.errors import ClockError
from edge.store.state import StateDB
from sync.timefmt import format_ms, parse_ms

__all__ = [
    "ClockReading",
    "ClockSettings",
    "ClockWarning",
    "NtpProbe",
    "TrustedClock",
    "boot_id",
    "boottime_ms",
]

log = logging.getLogger(__name__)

CONFIRM_MAX_RTT_S = 10.0
NTP_TICK_S = 60.0
RUNNING_TICK_S = 600.0


def boottime_ms() -> int:
    """Milliseconds of CLOCK_BOOTTIME (counts suspend, never steps)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def boot_id() -> str:
    """The kernel's boot id (36-character UUID)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "00000000-0000-0000-0000-000000000000"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only modes and status are read.
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


class NtpProbe:
    """Whether the OS reports the clock NTP-synchronised, cached for ``ttl_s`` (monotonic).

    Asks ``timedatectl show -p NTPSynchronized`` (works under the gate's syscall
    filter, through D-Bus); falls back to a read-only ``adjtimex`` (STA_UNSYNC
    clear and maxerror < 16 s, systemd's own test); anything failing means "not synced".
    """

    def __init__(self, ttl_s: float = NTP_TICK_S) -> None:
        self.ttl_s = ttl_s
        self._value = False
        self._at: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self.ttl_s:
                self._value = self._probe()
                self._at = now
            return self._value

    @staticmethod
    def _probe() -> bool:
        try:
            out = subprocess.run(
                ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True, text=True, timeout=2, check=False,
                # The child must not talk to our service manager (it would send ERRNO= on it).
                env={k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")},
            )
            if out.returncode == 0 and out.stdout.strip() in ("yes", "no"):
                return out.stdout.strip() == "yes"
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            tx = _Timex()
            if libc.adjtimex(ctypes.byref(tx)) < 0:
                return False
            sta_unsync = 0x0040
            return not (tx.status & sta_unsync) and tx.maxerror < 16_000_000
        except (OSError, AttributeError):
            return False


@dataclass(frozen=True)
class ClockSettings:
    """``clock`` section of the bundle's settings part (bundles.md §1.6)."""

    skew_warn_s: int = 120
    max_unconfirmed_lead_s: int = 86_400


@dataclass(frozen=True)
class ClockReading:
    """One evaluation of ``trusted_now()`` and everything that led to it."""

    now_ms: int
    state: str
    case: int
    system_ms: int
    lo_ms: int
    est_ms: int | None
    floor_ms: int
    ntp: bool
    boot: str
    boottime_ms: int

    @property
    def wall(self) -> str:
        return format_ms(self.now_ms)

    @property
    def trusted(self) -> bool:
        return self.state == "synced"

    @property
    def offset_ms(self) -> int | None:
        """S − est when an anchor of this boot exists (heartbeat ``clock.offset_ms``)."""
        return None if self.est_ms is None else self.system_ms - self.est_ms

    def at(self) -> dict[str, Any]:
        """The ``at`` object of an event taken at this reading (sync.md §1.2)."""
        return {"wall": self.wall, "clock": self.state, "boot": self.boot, "mono_ms": self.boottime_ms}


@dataclass(frozen=True)
class ClockWarning:
    """A ``clock_warning`` event to write (sync.md §1.5)."""

    from_state: str
    to_state: str
    cause: str
    system_ms: int
    floor_ms: int
    server_ms: int | None = None
    skew_ms: int | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "from": self.from_state,
            "to": self.to_state,
            "cause": self.cause,
            "system_wall": format_ms(max(0, self.system_ms)),
            "floor": format_ms(self.floor_ms),
            "server_wall": None if self.server_ms is None else format_ms(self.server_ms),
            "skew_ms": self.skew_ms,
        }


class TrustedClock:
    """``trusted_now()`` over the shared clock row.

    Args:
        state: the gate's ``state.db``.
        settings: ``skew_warn_s`` and ``max_unconfirmed_lead_s`` from the bundle in force.
        wall_ms, boottime_ms, boot: injectable sources (tests jump them).
        ntp: returns whether the OS reports NTP synchronisation.
        release_floor_ms: the floor written on the very first start.
    """

    def __init__(
        self,
        state: StateDB,
        *,
        settings: ClockSettings | None = None,
        wall_ms: Callable[[], int] = _wall_ms,
        boottime_ms: Callable[[], int] = boottime_ms,
        boot: str | None = None,
        ntp: Callable[[], bool] | None = None,
        release_floor_ms: int | None = None,
    ) -> None:
        self._db = state
        self.settings = settings or ClockSettings()
        self._wall = wall_ms
        self._boottime = boottime_ms
        self.boot = boot if boot is not None else boot_id()
        self._ntp = ntp if ntp is not None else NtpProbe()
        self._lock = threading.Lock()
        self._row: dict[str, Any] | None = None
        self._gen = -1
        self._last_state: str | None = None
        self._active: set[str] = set()
        self._last_offset: int | None = None
        self._warnings: list[ClockWarning] = []
        self._next_ntp_tick = 0.0
        self._next_running_tick = time.monotonic() + RUNNING_TICK_S
        floor0 = parse_ms(RELEASE_FLOOR) if release_floor_ms is None else release_floor_ms
        b = self._boottime()
        try:
            self._db.update_row(
                "clock",
                lambda old: None if old else {
                    "floor_ms": floor0, "floor_source": "build", "floor_boot": self.boot, "floor_boottime_ms": b,
                },
            )
        except Exception as exc:
            raise ClockError(f"cannot initialise the clock row: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------------

    def _current_row(self) -> dict[str, Any]:
        gen = self._db.generation("clock")
        if gen != self._gen or self._row is None:
            row = self._db.read_row("clock")
            if row is None:
                raise ClockError("clock row missing")
            self._row, self._gen = row, gen
        return self._row

    def _lo(self, row: dict[str, Any], b: int) -> int:
        if row["floor_boot"] == self.boot and row["floor_boottime_ms"] is not None:
            return int(row["floor_ms"]) + max(0, b - int(row["floor_boottime_ms"]))
        return int(row["floor_ms"]) + b

    def _est(self, row: dict[str, Any], b: int) -> int | None:
        if row["confirmed_ms"] is None or row["confirmed_boot"] != self.boot:
            return None
        return int(row["confirmed_ms"]) + max(0, b - int(row["confirmed_boottime_ms"]))

    def read(self) -> ClockReading:
        """Evaluate §5.3 once; queue warnings for conditions that just started."""
        with self._lock:
            row = self._current_row()
            s, b = self._wall(), self._boottime()
            ntp = bool(self._ntp())
            lo, est = self._lo(row, b), self._est(row, b)
            skew = self.settings.skew_warn_s * 1000
            lead = self.settings.max_unconfirmed_lead_s * 1000
            conditions: dict[str, int | None] = {}
            if est is not None and ntp and abs(s - est) <= skew:
                case, state, now = 1, "synced", s
            elif est is not None:
                case, state, now = 2, "synced", est
                if abs(s - est) > skew:
                    conditions["skew"] = s - est
            elif ntp and lo <= s <= lo + lead:
                case, state, now = 3, "synced", s
            elif ntp and s > lo + lead:
                case, state, now = 4, "untrusted", lo + lead
                conditions["ahead"] = s - lo
            else:
                case, state, now = 5, "floor", lo
                if s < lo:
                    conditions["behind_floor"] = s - lo
            now = max(now, lo)
            offset = s - b
            if self._last_offset is not None and abs(offset - self._last_offset) > skew:
                conditions["step"] = offset - self._last_offset
            self._last_offset = offset
            reading = ClockReading(now, state, case, s, lo, est, int(row["floor_ms"]), ntp, self.boot, b)
            self._note(reading, conditions)
            return reading

    def _note(self, r: ClockReading, conditions: dict[str, int | None]) -> None:
        prev = self._last_state or r.state
        started = [c for c in conditions if c not in self._active or c == "step"]
        self._active = {c for c in conditions if c != "step"}
        for cause in started:
            self._warnings.append(ClockWarning(prev, r.state, cause, r.system_ms, r.floor_ms, None, conditions[cause]))
        if prev == "synced" and r.state != "synced" and not started:
            self._warnings.append(ClockWarning(prev, r.state, "sync_lost", r.system_ms, r.floor_ms))
        if r.state != self._last_state and self._last_state is not None:
            log.info("clock state from=%s to=%s case=%d", self._last_state, r.state, r.case)
        self._last_state = r.state

    def now(self) -> int:
        """``trusted_now()`` in epoch milliseconds."""
        return self.read().now_ms

    def drain_warnings(self) -> list[ClockWarning]:
        """Warnings queued since the last call; the gate turns each into a ``clock_warning`` event."""
        with self._lock:
            out, self._warnings = self._warnings, []
            return out

    # -- writing ---------------------------------------------------------------------------------

    def _raise_in(self, row: dict[str, Any], value_ms: int, source: str, b: int) -> dict[str, Any] | None:
        if value_ms < self._lo(row, b):
            return None
        return {"floor_ms": value_ms, "floor_source": source, "floor_boot": self.boot, "floor_boottime_ms": b}

    def raise_floor(self, value_ms: int, source: str) -> bool:
        """Raise the floor to ``value_ms`` if that is at or above ``lo``; True when written."""
        b = self._boottime()
        written = False

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal written
            new = self._raise_in(old or {}, value_ms, source, b) if old else None
            written = new is not None
            return new

        self._db.update_row("clock", change)
        return written

    def accept_signed_time(self, server_ms: int, *, rtt_s: float, source: str) -> None:
        """A verified signed server time (T6, sync.md §2.5): raise the floor; anchor if rtt ≤ 10 s."""
        b = self._boottime()

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            assert old is not None
            new = self._raise_in(old, server_ms, source, b) or {}
            if rtt_s <= CONFIRM_MAX_RTT_S:
                new.update(confirmed_ms=server_ms, confirmed_source=source, confirmed_boot=self.boot,
                           confirmed_boottime_ms=b)
            return new or None

        self._db.update_row("clock", change)

    def reset_floor(self, reset_ms: int, issued_at_ms: int) -> bool:
        """Apply a keys document's ``clock_floor_reset`` (§5.6, K6); True when the floor went down."""
        b = self._boottime()
        went_down = False

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal went_down
            assert old is not None
            new: dict[str, Any] = {}
            if int(old["floor_ms"]) > reset_ms:
                went_down = True
                new = {"floor_ms": reset_ms, "floor_source": "clock_floor_reset", "floor_boot": self.boot,
                       "floor_boottime_ms": b}
                old = {**old, **new}
            up = self._raise_in(old, issued_at_ms, "keys", b)
            if up:
                new.update(up)
            return new or None

        self._db.update_row("clock", change)
        return went_down

    # -- inside a caller's state transaction (bundles.md §3.4 K6, §3.5 M13, §3.3 T6) ---------------
    #
    # K6, M13 and T6 change the clock row in the same state.db transaction as the keys or bundle
    # row, so the switch and its floor are one commit. ``conn`` is the connection of an open
    # ``StateDB.transaction()``; each change adds 1 to the clock row's generation.

    def _update_in(self, conn: sqlite3.Connection, fn: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bool:
        cur = conn.execute("SELECT * FROM clock WHERE id = 1")
        raw = cur.fetchone()
        if raw is None:
            raise ClockError("clock row missing")
        old = {d[0]: v for d, v in zip(cur.description, raw, strict=True)}
        new = fn(old)
        if not new:
            return False
        cols = sorted(new)
        conn.execute(
            f"UPDATE clock SET {', '.join(f'{c} = ?' for c in cols)}, generation = generation + 1 WHERE id = 1",
            [new[c] for c in cols],
        )
        return True

    def raise_floor_in(self, conn: sqlite3.Connection, value_ms: int, source: str) -> bool:
        """``raise_floor`` inside the caller's transaction; True when written."""
        b = self._boottime()
        return self._update_in(conn, lambda old: self._raise_in(old, value_ms, source, b))

    def accept_signed_time_in(self, conn: sqlite3.Connection, server_ms: int, *, rtt_s: float, source: str) -> None:
        """``accept_signed_time`` inside the caller's transaction (T6)."""
        b = self._boottime()

        def change(old: dict[str, Any]) -> dict[str, Any] | None:
            new = self._raise_in(old, server_ms, source, b) or {}
            if rtt_s <= CONFIRM_MAX_RTT_S:
                new.update(confirmed_ms=server_ms, confirmed_source=source, confirmed_boot=self.boot,
                           confirmed_boottime_ms=b)
            return new or None

        self._update_in(conn, change)

    def reset_floor_in(self, conn: sqlite3.Connection, reset_ms: int, issued_at_ms: int) -> bool:
        """``reset_floor`` inside the caller's transaction (K6, §5.6); True when the floor went down."""
        b = self._boottime()
        went_down = False

        def change(old: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal went_down
            new: dict[str, Any] = {}
            if int(old["floor_ms"]) > reset_ms:
                went_down = True
                new = {"floor_ms": reset_ms, "floor_source": "clock_floor_reset", "floor_boot": self.boot,
                       "floor_boottime_ms": b}
                old = {**old, **new}
            up = self._raise_in(old, issued_at_ms, "keys", b)
            if up:
                new.update(up)
            return new or None

        self._update_in(conn, change)
        return went_down

    def maintain(self, *, mono: float | None = None) -> None:
        """Periodic floor upkeep, called from the gate's loop (monotonic timers).

        Every 60 s while NTP-synced: floor := S when S ≤ lo + lead (spoofed NTP
        cannot ratchet it far). Every 600 s: floor := trusted_now() when synced, else lo.
        """
        m = time.monotonic() if mono is None else mono
        if m >= self._next_ntp_tick:
            self._next_ntp_tick = m + NTP_TICK_S
            r = self.read()
            if r.ntp and r.system_ms <= r.lo_ms + self.settings.max_unconfirmed_lead_s * 1000:
                self.raise_floor(r.system_ms, "ntp")
        if m >= self._next_running_tick:
            self._next_running_tick = m + RUNNING_TICK_S
            self.checkpoint()

    def checkpoint(self) -> None:
        """Persist the running time as floor (every 600 s and at clean stop)."""
        r = self.read()
        self.raise_floor(r.now_ms if r.trusted else r.lo_ms, "running")
