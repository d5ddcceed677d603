"""Loaded only into processes run under libfaketime by tests/reliability/test_clock_jumps.py.

libfaketime 0.9.10 (Debian 12) breaks ``time.sleep`` of Python ≥ 3.11, which sleeps with
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``: the call fails with EINVAL or never
returns even with ``FAKETIME_DONT_FAKE_MONOTONIC=1``. ``select``, ``Event.wait`` and asyncio
are unaffected, so ``time.sleep`` becomes a ``select`` loop on the (real) monotonic clock.
Nothing else changes: the wall clock stays faked, which is the point.
"""

import select
import time

_monotonic = time.monotonic


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    end = _monotonic() + seconds
    while (left := end - _monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
