"""Token buckets of sync.md §2.8, per server process.

A bucket holds up to ``burst`` tokens and refills at ``per_min / 60`` per
second (monotonic clock: a wall-clock step neither fills nor drains it). A
request takes one token; an empty bucket answers ``429`` with ``Retry-After``
= seconds until one token is back. Failed authentication (401) is counted per
client IP; over the limit the IP is blocked for ``failed_auth_block_s``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sync.server.config import RateLimitConfig
from sync.server.errors import ApiError

__all__ = ["RateLimiter"]

_MAX_KEYS = 100_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    def __init__(self, config: RateLimitConfig | None = None, *, monotonic: Callable[[], float] = time.monotonic):
        self.config = config or RateLimitConfig.model_validate({})
        self._now = monotonic
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._blocked: dict[str, float] = {}

    def _take(self, name: str, key: str, per_min: float, burst: int) -> float:
        """Take one token; 0.0 when granted, else seconds until the next token."""
        now = self._now()
        rate = per_min / 60.0
        with self._lock:
            if len(self._buckets) > _MAX_KEYS:
                self._buckets.clear()  # a flood of distinct keys: forget rather than grow without bound
            b = self._buckets.get((name, key))
            if b is None:
                b = self._buckets[(name, key)] = _Bucket(float(burst), now)
            b.tokens = min(float(burst), b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / rate

    def _left(self, name: str, key: str, per_min: float, burst: int) -> float:
        """Tokens in the bucket now, without taking one."""
        now = self._now()
        with self._lock:
            b = self._buckets.get((name, key))
            if b is None:
                return float(burst)
            return min(float(burst), b.tokens + (now - b.stamp) * per_min / 60.0)

    def ensure(self, name: str, key: str, per_min: float, burst: int | None = None) -> None:
        """Raise ``429`` if the bucket is empty, without taking a token (a limit on failures, checked first)."""
        if not self.config.enabled:
            return
        b = max(1, int(per_min)) if burst is None else burst
        left = self._left(name, key, per_min, b)
        if left < 1.0:
            wait = (1.0 - left) / (per_min / 60.0)
            raise ApiError(429, "rate_limited", f"too many requests ({name})",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def check(self, name: str, key: str, per_min: float, burst: int | None = None) -> None:
        """Raise ``429 rate_limited`` when the bucket ``(name, key)`` is empty."""
        if not self.config.enabled:
            return
        wait = self._take(name, key, per_min, max(1, int(per_min)) if burst is None else burst)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"too many requests ({name})",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})

    # -- failed authentication per client IP ------------------------------------------------

    def check_hourly(self, name: str, key: str, per_hour: int, *, peek: bool = False) -> None:
        """An hourly bucket (burst = the hourly allowance, refilled evenly over the hour)."""
        (self.ensure if peek else self.check)(name, key, per_hour / 60.0, per_hour)

    def check_blocked(self, ip: str) -> None:
        if not self.config.enabled:
            return
        with self._lock:
            until = self._blocked.get(ip)
            if until is None:
                return
            left = until - self._now()
            if left <= 0:
                del self._blocked[ip]
                return
        raise ApiError(429, "rate_limited", "too many failed authentications from this address",
                       headers={"Retry-After": str(max(1, math.ceil(left)))})

    def failed_auth(self, ip: str) -> None:
        """Count one 401 for ``ip``; over the limit, block it."""
        if not self.config.enabled:
            return
        c = self.config
        if self._take("auth_fail", ip, c.failed_auth_per_min, c.failed_auth_per_min) > 0:
            with self._lock:
                self._blocked[ip] = self._now() + c.failed_auth_block_s
