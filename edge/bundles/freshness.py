"""Freshness of the bundle in force (bundles.md §4.1) and its ``bundle_state`` events.

last confirmed = the later of the in-force manifest's ``server_time`` and the
``server_time`` of the latest accepted current statement naming it;
age = now − last confirmed, with now = ``trusted_now()``. First state that holds:

| state     | condition                                                             |
|-----------|-----------------------------------------------------------------------|
| ``none``    | no manifest in force                                                |
| ``expired`` | now ≥ ``expires``, or ``signer_revoked``, or ``corrupt`` (restricted mode) |
| ``stale``   | age ≥ ``stale_after_s``, or the clock is not ``synced`` (age unproven) |
| ``fresh``   | otherwise                                                           |

A bundle is atomic: one state covers every part. Whoever sees the state change
writes one ``bundle_state`` event (sync.md §1.5); the last reported state is
kept in ``state.db``'s kv cache so that the gate process and the agent do not
both report the same change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from edge.bundles.view import Pointer
from edge.clock import ClockReading
from edge.errors import StoreError
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.timefmt import format_ms

__all__ = ["REPORTED_KEY", "Freshness", "FreshnessMonitor", "freshness", "report_state"]

log = logging.getLogger(__name__)

FreshnessState = Literal["none", "fresh", "stale", "expired"]
REPORTED_KEY = "bundle.freshness_reported"


@dataclass(frozen=True)
class Freshness:
    """One evaluation of §4.1 and the facts behind it (for screens, heartbeats and events)."""

    state: FreshnessState
    cause: str | None  # why it is not fresh: age | clock | signer_revoked | corrupt (None when fresh/none)
    version: int
    age_s: int | None
    issued_at: str | None
    last_confirmed: str | None
    expires: str | None
    clock_state: str

    @property
    def restricted(self) -> bool:
        """Restricted mode (§4.2): the policy's stage 2 applies."""
        return self.state == "expired"

    def event_bundle(self) -> dict[str, Any]:
        """The ``bundle`` object of a decision event (sync.md §1.5): no bundle is version 0, expired."""
        if self.state == "none":
            return {"version": 0, "state": "expired"}
        return {"version": self.version, "state": self.state}


def freshness(pointer: Pointer | None, reading: ClockReading, *, unreadable: bool = False) -> Freshness:
    """§4.1 for the pointer in force at ``reading`` (one trusted_now for the whole evaluation).

    Args:
        unreadable: the gate process could not open the bundle file (counts as ``corrupt``).
    """
    if pointer is None:
        return Freshness("none", None, 0, None, None, None, None, reading.state)
    now = reading.now_ms
    age_ms = max(0, now - pointer.last_confirmed_ms)
    common = dict(version=pointer.version, age_s=age_ms // 1000, issued_at=format_ms(pointer.issued_at_ms),
                  last_confirmed=format_ms(pointer.last_confirmed_ms), expires=format_ms(pointer.expires_ms),
                  clock_state=reading.state)
    if pointer.corrupt or unreadable:
        return Freshness("expired", "corrupt", **common)  # type: ignore[arg-type]
    if pointer.signer_revoked:
        return Freshness("expired", "signer_revoked", **common)  # type: ignore[arg-type]
    if now >= pointer.expires_ms:
        return Freshness("expired", "age", **common)  # type: ignore[arg-type]
    if not reading.trusted:
        return Freshness("stale", "clock", **common)  # type: ignore[arg-type]
    if age_ms >= pointer.stale_after_s * 1000:
        return Freshness("stale", "age", **common)  # type: ignore[arg-type]
    return Freshness("fresh", None, **common)  # type: ignore[arg-type]


def report_state(
    state: StateDB,
    events: EventStore,
    reading: ClockReading,
    new: Freshness,
    *,
    cause: str | None = None,
    force: bool = False,
) -> bool:
    """Write a ``bundle_state`` event when the state differs from the last one reported.

    Args:
        cause: the event's cause; default: the new state's own cause, ``confirmed`` for a state
            that improved.
        force: write even without a change (``keys_expired`` and ``gap`` have from = to).

    Returns:
        True when an event was written.
    """
    if cause in ("keys_expired", "gap"):
        # sync.md §1.5: for these two from = to; they report a fact, not a change of state.
        return _append(events, {"from": new.state, "to": new.state, "cause": cause, "version": new.version}, reading)
    prev = state.kv_get(REPORTED_KEY) or "none"
    if prev == new.state and not force:
        return False
    if cause is None:
        order = {"none": 0, "expired": 1, "stale": 2, "fresh": 3}
        cause = new.cause if (new.cause and order[new.state] <= order.get(prev, 0)) else "confirmed"
    payload = {"from": prev, "to": new.state, "cause": cause, "version": new.version}
    if not _append(events, payload, reading):
        return False  # not recorded as reported: the next check tries again
    state.kv_set(REPORTED_KEY, new.state)
    if new.state == "expired" and prev != "expired":
        # §3.6: freshness turning expired alerts at once (the server raises bundle_expired from the event).
        log.error("bundle expired: restricted mode version=%d cause=%s", new.version, cause)
    else:
        log.info("bundle state from=%s to=%s cause=%s version=%d", prev, new.state, cause, new.version)
    return True


def _append(events: EventStore, payload: dict[str, Any], reading: ClockReading) -> bool:
    try:
        events.append("bundle_state", payload, reading.at())
    except StoreError as exc:  # the gate keeps deciding; the state is reported once the store works
        log.error("bundle_state event not written: %s", exc)
        return False
    return True


class FreshnessMonitor:
    """The gate process's freshness watcher: evaluate §4.1 and report changes as events."""

    def __init__(self, state: StateDB, events: EventStore) -> None:
        self.state = state
        self.events = events
        self.last: Freshness | None = None

    def check(self, pointer: Pointer | None, reading: ClockReading, *, unreadable: bool = False) -> Freshness:
        f = freshness(pointer, reading, unreadable=unreadable)
        if (self.last is None or f.state != self.last.state) and not report_state(self.state, self.events, reading, f):
            if self.state.kv_get(REPORTED_KEY) != f.state:
                return f  # not reported yet (store failing): keep self.last so the next check retries
        self.last = f
        return f
