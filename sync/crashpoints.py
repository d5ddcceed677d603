"""Named crash points for the kill -9 harness (sync.md §6.2).

``crashpoint(name)`` is a no-op unless ``CHECKPOINT_CRASHPOINTS`` arms it as
``name:n[,name:n...]``: then the process SIGKILLs itself at the n-th hit of that
name. Reading the environment once keeps the unarmed cost to one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["crashpoint", "reload"]

_lock = threading.Lock()
_armed: dict[str, int] = {}


def reload() -> None:
    """(Re)read ``CHECKPOINT_CRASHPOINTS``; tests call it after changing the environment."""
    armed: dict[str, int] = {}
    for item in os.environ.get("CHECKPOINT_CRASHPOINTS", "").split(","):
        name, _, n = item.strip().partition(":")
        if name:
            armed[name] = int(n) if n.isdigit() and int(n) > 0 else 1
    with _lock:
        _armed.clear()
        _armed.update(armed)


def crashpoint(name: str) -> None:
    """Kill this process with SIGKILL if ``name`` is armed and this is its n-th hit."""
    if not _armed:
        return
    with _lock:
        left = _armed.get(name)
        if left is None:
            return
        if left > 1:
            _armed[name] = left - 1
            return
    os.kill(os.getpid(), signal.SIGKILL)


reload()
