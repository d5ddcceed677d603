"""Timers of the sync agent: upload backoff, bundle poll rhythm, server-time estimate.

Every timer runs on the monotonic clock, so clock steps neither fire nor starve
them (sync.md §3.4 step 3, §6.5). The one wall-clock quantity here is the estimate
of *server* time for ``X-Checkpoint-Time`` (§2.5), anchored on the last verified
signed time and advanced with CLOCK_BOOTTIME.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.clock import TrustedClock, boot_id, boottime_ms
from edge.store.state import StateDB

__all__ = ["Backoff", "PollTimer", "ServerClock"]

log = logging.getLogger(__name__)

SERVER_TIME_KEY = "server_time"
FUTURE_TOLERANCE_MS = 300_000  # bundles.md §5.3: a signed time > 300 s ahead of a synced clock is refused


class Backoff:
    """Full-jitter exponential backoff (sync.md §3.4 step 3).

    After the n-th consecutive failure wait ``uniform(0, min(cap, base × 2^(n−1)))``
    seconds, at least ``Retry-After`` when the server gave one. ``reset`` after a 200.
    """

    def __init__(self, base_s: float = 2.0, cap_s: float = 600.0, *, rng: random.Random | None = None) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def failure(self, retry_after_s: float | None = None) -> float:
        """Count one failure and return the delay before the next try."""
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures - 1, 40))
        delay = self._rng.uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s))
        return delay

    def reset(self) -> None:
        self.failures = 0


class PollTimer:
    """Bundle poll rhythm (bundles.md §4.3, the one definition).

    After a poll that reached the server: wait ``uniform(0.6, 0.9) × interval`` (jitter
    only shortens it). After the k-th failed poll in a row (k = 0, 1, …): retry after
    ``min(interval, 2^k)`` s. No wait is ever longer than the interval, so an
    emergency switch reaches every online gate within one interval.
    """

    def __init__(self, interval_s: float, *, rng: random.Random | None = None) -> None:
        self.interval_s = interval_s
        self.failed_in_row = 0
        self._rng = rng or random.Random()

    def after_success(self) -> float:
        self.failed_in_row = 0
        return self._rng.uniform(0.6, 0.9) * self.interval_s

    def after_failure(self) -> float:
        k = self.failed_in_row
        self.failed_in_row += 1
        return min(self.interval_s, float(2 ** min(k, 30)))


@dataclass(frozen=True)
class _Sample:
    server_ms: int
    boottime_ms: int
    boot: str


class ServerClock:
    """The gate's estimate of server time, and the hand-off of signed times to the shared clock.

    sync.md §2.5: a verified ``time`` gives ``(server_time, mono at receipt)``, kept in
    ``state.db`` (kv ``server_time``); the estimate is ``server_time + (mono_now −
    mono_at_receipt)``, with CLOCK_BOOTTIME as the monotonic clock so the sample
    survives agent restarts within one boot. Before any verified time: the system
    time. Each verified time is also written to the shared clock row
    (``TrustedClock.accept_signed_time``), except one more than 300 s ahead of a
    synced clock (bundles.md §5.3, ``issued_in_future``) or below the floor, which
    are only used for the request time (that is what the server checks).
    """

    def __init__(
        self,
        state: StateDB,
        clock: TrustedClock | None,
        *,
        boottime: Callable[[], int] = boottime_ms,
        boot: str | None = None,
        system_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._state = state
        self._clock = clock
        self._boottime = boottime
        self._boot = boot if boot is not None else (clock.boot if clock is not None else boot_id())
        self._system_ms = system_ms
        self._sample = self._load()
        self.accepted = 0

    def _load(self) -> _Sample | None:
        raw = self._state.kv_get(SERVER_TIME_KEY)
        if not raw:
            return None
        try:
            d = json.loads(raw)
            s = _Sample(int(d["server_ms"]), int(d["boottime_ms"]), str(d["boot"]))
        except (ValueError, KeyError, TypeError):
            return None
        return s if s.boot == self._boot else None

    @property
    def has_sample(self) -> bool:
        return self._sample is not None

    def now_ms(self) -> int:
        """Estimated server time in epoch ms (the system time until a signed time was verified)."""
        s = self._sample
        if s is None:
            return self._system_ms()
        return s.server_ms + max(0, self._boottime() - s.boottime_ms)

    def now_s(self) -> int:
        return self.now_ms() // 1000

    def accept(self, server_ms: int, rtt_s: float) -> None:
        """A verified signed server time arrived (``DeviceClient`` ``on_time``)."""
        b = self._boottime()
        # The signature was made while the server handled the request: about half a
        # round trip before receipt.
        anchor = _Sample(server_ms + int(rtt_s * 500), b, self._boot)
        self._sample = anchor
        self.accepted += 1
        self._state.kv_set(SERVER_TIME_KEY, json.dumps(
            {"server_ms": anchor.server_ms, "boottime_ms": anchor.boottime_ms, "boot": anchor.boot}))
        if self._clock is None:
            return
        reading = self._clock.read()
        if reading.trusted and server_ms > reading.now_ms + FUTURE_TOLERANCE_MS:
            log.warning("signed server time %d ms ahead of the synced clock: not written to the clock row",
                        server_ms - reading.now_ms)
            return
        if server_ms < reading.lo_ms - FUTURE_TOLERANCE_MS:
            log.warning("signed server time %d ms below the clock floor: not written to the clock row",
                        reading.lo_ms - server_ms)
            return
        self._clock.accept_signed_time(server_ms, rtt_s=rtt_s, source="time")
