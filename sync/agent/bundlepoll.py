"""Bundle polling in its own thread (bundles.md §4.3, sync.md §4.1).

Polls at start-up, then after each poll that reached the server waits
``uniform(0.6, 0.9) × poll_bundle_s``; after the k-th failed poll in a row retries
after ``min(poll_bundle_s, 2^k)`` s; ``poll_now()`` (a heartbeat answer's
``poll_bundle_now``) polls at once. The upload backoff never applies here.

It runs beside the agent's main loop, not in it: a large part over a slow link
may take minutes, and neither the upload loop (with its watchdog pings) nor the
one-interval promise of the emergency switch may wait for the other. The update
algorithm itself (``edge.bundles``) is thread-safe against the gate process by
design (state-database transactions); here it only ever runs in this thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sync.agent.fetcher import HttpFetcher
from sync.agent.timing import PollTimer
from sync.errors import Unreachable

__all__ = ["BundlePoller"]

log = logging.getLogger(__name__)


class BundlePoller:
    """Runs ``update(fetcher)`` on the rhythm of bundles.md §4.3.

    Args:
        update: the gate-side update (T, K, M) run against a ``Fetcher``; its return
            value is only logged. Content rejections are its business (events,
            alerts); network errors surface as ``Unreachable`` or ``fetcher.failed``.
        fetcher: the HTTP fetcher.
        interval_s: ``[sync] poll_bundle_s``.
    """

    def __init__(
        self,
        *,
        update: Callable[[HttpFetcher], Any],
        fetcher: HttpFetcher,
        interval_s: float,
        timer: PollTimer | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.update = update
        self.fetcher = fetcher
        self.timer = timer or PollTimer(interval_s)
        self._mono = mono
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.failed_polls = 0
        self.last_ok_mono: float | None = None
        self.last_result: Any = None
        self.next_in_s = 0.0
        self._last_status: str | None = None

    def poll_now(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sync:bundles", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def poll_once(self) -> bool:
        """One poll; True when it reached the server. Returns the wait before the next."""
        self.fetcher.reset()
        self.polls += 1
        ok = True
        try:
            self.last_result = self.update(self.fetcher)
        except Unreachable as exc:
            log.info("bundle poll: server not reachable: %s", exc)
            ok = False
        # A poll that got no usable answer (network, or another process holding the
        # update lock) retries on the short rhythm; a rejection is an answer.
        status = getattr(self.last_result, "status", None) if ok else None
        ok = ok and not self.fetcher.failed and status not in ("fetch_failed", "busy")
        if status is not None and status != self._last_status:
            log.info("bundle poll status=%s version=%s", status, getattr(self.last_result, "version", None))
        self._last_status = status
        if ok:
            self.last_ok_mono = self._mono()
            self.next_in_s = self.timer.after_success()
        else:
            self.failed_polls += 1
            self.next_in_s = self.timer.after_failure()
        return ok

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug in the update must not end polling for good
                log.exception("bundle poll crashed; next try after the interval")
                self.next_in_s = self.timer.interval_s
            self._wake.wait(self.next_in_s)
            self._wake.clear()
