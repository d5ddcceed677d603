"""From the decision loop's thread to every open event stream (console.md §2, "Stream").

The loop calls ``publish`` and never waits: each subscriber has a bounded queue
on its own event loop, filled with ``call_soon_threadsafe``. A client that
falls 256 messages behind is dropped (its browser reconnects and is replayed the
last ten decisions), so a stuck phone can never slow the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Broadcaster", "Message", "Subscription", "sse"]

log = logging.getLogger(__name__)
QUEUE_MAX = 256


@dataclass(frozen=True)
class Message:
    event: str            # decision | prompt | status
    data: dict[str, Any]
    id: int | None = None


def sse(msg: Message) -> bytes:
    """One Server-Sent Events frame."""
    lines = []
    if msg.id is not None:
        lines.append(f"id: {msg.id}")
    lines.append(f"event: {msg.event}")
    lines.append("data: " + json.dumps(msg.data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


class Subscription:
    def __init__(self, owner: Broadcaster, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self.loop = loop
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(QUEUE_MAX)
        self.dropped = False

    def _put(self, msg: Message | None) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped = True
            log.warning("console stream client too slow: disconnected")
            self._owner.unsubscribe(self)
            # Make room for the end marker so the handler returns at once.
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def close(self) -> None:
        self._owner.unsubscribe(self)


class Broadcaster:
    """Thread-safe fan-out of console messages."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[Message], None]] = []
        self._closed = False

    def add_listener(self, fn: Callable[[Message], None]) -> None:
        """Call ``fn(message)`` synchronously on every publish (the demo's director); keep it cheap."""
        with self._lock:
            self._listeners.append(fn)

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscription:
        sub = Subscription(self, loop)
        with self._lock:
            if self._closed:
                sub.queue.put_nowait(None)
            else:
                self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, event: str, data: dict[str, Any], *, id: int | None = None) -> None:
        msg = Message(event, data, id)
        with self._lock:
            subs = list(self._subs)
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(msg)
            except Exception:
                log.exception("console listener failed")
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._put, msg)
            except RuntimeError:           # that event loop is closed
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        with self._lock:
            self._closed = True
            subs, self._subs = list(self._subs), set()
        for sub in subs:
            with contextlib.suppress(RuntimeError):     # that event loop is already closed
                sub.loop.call_soon_threadsafe(sub._put, None)
