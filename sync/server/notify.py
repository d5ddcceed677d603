"""systemd readiness and watchdog for the server process (hardware.md §4.4).

``READY=1`` once the listening socket is up; ``WATCHDOG=1`` from an asyncio task
on the server's event loop (a hung loop stops the pings, and systemd restarts
the process), at most once a second and at least every ``WATCHDOG_USEC / 2``;
``STOPPING=1`` at shutdown. Without ``NOTIFY_SOCKET`` all of this is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["notify", "watchdog_interval_s", "watchdog_task"]

log = logging.getLogger(__name__)


_lock = threading.Lock()
_notifier: Any = None


def notify(message: str) -> None:
    """Send one message; never blocks (a manager that stops reading must not freeze the event loop)."""
    global _notifier
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify

    with _lock:
        if _notifier is None:
            _notifier = sdnotify.SystemdNotifier()
            if _notifier.socket is not None:
                _notifier.socket.setblocking(False)  # a full queue drops the ping instead of waiting
        _notifier.notify(message)


def watchdog_interval_s() -> float | None:
    """Seconds between pings, or None when systemd wants none (or wants them from another pid)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return min(5.0, max(1.0, int(usec) / 1e6 / 2))


async def watchdog_task(started: Callable[[], bool] = lambda: True) -> None:
    """READY=1 once ``started()``, then WATCHDOG=1 every interval until cancelled (then STOPPING=1)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        while not started():
            await asyncio.sleep(0.1)
        notify("READY=1")
        notify("STATUS=serving")
        interval = watchdog_interval_s()
        while interval is not None:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        notify("STOPPING=1")
        raise
