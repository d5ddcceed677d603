"""Shared helpers for the thermometer tests: fast options and polling without fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PROTOCOLS = ("gy-mcu90614", "modbus-rtu", "ascii")
PERIOD_S = 0.02  # simulator output period in these tests: 50 frames/lines per second


def fast(**overrides: Any) -> dict[str, Any]:
    """Reader options with short periods so that the pty tests finish in seconds."""
    opts: dict[str, Any] = {
        "settle_s": 0.0,
        "retry_s": 0.05,
        "stale_after_s": 0.5,
        "reopen_after_s": 30.0,
        "gy": {"init_retry_s": 0.2},
        "modbus": {"poll_s": 0.03, "response_timeout_s": 0.15},
        "ascii": {"poll_s": 0.05},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(opts.get(key), dict):
            opts[key] = {**opts[key], **value}
        else:
            opts[key] = value
    return opts


def wait_until(predicate: Callable[[], Any], timeout_s: float = 8.0, step_s: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; return its value, or fail after ``timeout_s``.

    The timeout is only a bound for a broken build, never the thing under test.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {predicate}")
        time.sleep(step_s)


def readings(therm: Any, n: int, timeout_s: float = 8.0) -> list[Any]:
    """The next ``n`` readings (fails if they do not come within ``timeout_s`` in total)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        r = therm.read(max(0.0, deadline - time.monotonic()))
        assert r is not None, f"only {len(out)} of {n} readings; status {therm.status()}"
        out.append(r)
    return out
