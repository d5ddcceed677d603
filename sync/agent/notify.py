"""Readiness and watchdog pings to systemd (hardware.md §4.4).

``sdnotify`` is a silent no-op without ``NOTIFY_SOCKET`` and understands an
abstract socket ``@…``. Rules: ``READY=1`` once; ``STATUS=…`` on every change;
``WATCHDOG=1`` from the loop that must stay alive (the agent's main loop), at
most once a second and at least every ``WATCHDOG_USEC / 2``; no pings when
``WATCHDOG_PID`` names another process; ``STOPPING=1`` on SIGTERM.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import sdnotify

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, *, mono: Callable[[], float] = time.monotonic) -> None:
        self._n = sdnotify.SystemdNotifier()  # connects to $NOTIFY_SOCKET of this process
        if env is not None and env is not os.environ:
            self._n.socket = _connect(env.get("NOTIFY_SOCKET"))
        env = os.environ if env is None else env
        self._mono = mono
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._last_ping = -1e9
        self._status: str | None = None
        self.readied = False

    @property
    def ping_every_s(self) -> float:
        """How often the loop must come round to keep the watchdog fed."""
        if self.watchdog_s is None:
            return 5.0
        return max(1.0, self.watchdog_s / 2)

    def _send(self, message: str) -> None:
        # sdnotify encodes latin-1 and drops anything else silently; STATUS lines may be Chinese.
        sock = self._n.socket
        if sock is None:
            return
        try:
            sock.sendall(message.encode("utf-8"))
        except OSError:
            pass  # no manager listening: notifications are best effort by definition

    def ready(self) -> None:
        if not self.readied:
            self.readied = True
            self._send("READY=1")

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self._send(f"STATUS={text}")

    def ping(self) -> None:
        if self.watchdog_s is None:
            return
        now = self._mono()
        if now - self._last_ping >= 1.0:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")


def _connect(addr: str | None) -> socket.socket | None:
    """A datagram socket to ``addr`` (``@name``: abstract), or None: notifications become no-ops."""
    if not addr:
        return None
    target = "\0" + addr[1:] if addr.startswith("@") else addr
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        return None
    return sock
