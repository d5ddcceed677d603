"""Urgent copies ahead of the backlog (sync.md §3.6).

Fever and sentinel alerts and urgent decisions must reach the server within
seconds even behind a backlog. Rules:

1. Every second the agent looks at rows above its scan mark for kinds in
   ``[sync] flash_kinds`` (``temp_alert``, ``sentinel_alert``; ``decision`` only
   with ``alert = urgent``). The scan mark starts at the persisted cursor
   ``flash_through`` (``state.db`` kv) and never re-reads a row.
2. Rows already acknowledged need no copy; rows whose ``at`` is older than
   ``MAX_AGE_S`` (same boot: CLOCK_BOOTTIME; other boot: the trusted clock against
   ``at.wall``) are left to the ordered upload: their urgency has passed, and a
   gate back after hours offline must not spend its requests on stale copies.
3. At most 10 events per request (``POST …/flash``, signed); one request per
   agent loop turn, so flash and the ordered upload alternate.
4. Best effort: 3 tries within 30 s, then the copy is given up (the ordered
   upload still carries the event). Flash never moves ``acked_seq``.
5. ``flash_through`` advances past a group once it was sent or given up; after a
   crash the group is sent again (the server's alert is unique per seq and kind).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.clock import TrustedClock, boottime_ms
from edge.store.outbox import Outbox
from edge.store.state import StateDB
from sync.client import DeviceClient
from sync.errors import Rejected, Unreachable
from sync.timefmt import parse_ms

__all__ = ["FLASH_KEY", "Flasher"]

log = logging.getLogger(__name__)

FLASH_KEY = "flash_through"
MAX_PER_REQUEST = 10
TRIES = 3
GIVE_UP_S = 30.0
RETRY_S = (2.0, 8.0)
MAX_AGE_S = 600.0
SCAN_S = 1.0
_FLASHABLE = ("temp_alert", "sentinel_alert", "decision")


@dataclass
class _Group:
    seqs: list[int]
    events: list[bytes]
    first_try: float | None = None
    tries: int = 0
    next_try: float = 0.0
    last_error: str | None = field(default=None)


class Flasher:
    """Sends urgent copies; called from the agent's main loop."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        state: StateDB,
        client: DeviceClient,
        clock: TrustedClock,
        kinds: list[str],
        mono: Callable[[], float] = time.monotonic,
        boottime: Callable[[], int] = boottime_ms,
    ) -> None:
        self.outbox = outbox
        self.state = state
        self.client = client
        self.clock = clock
        self.kinds = tuple(k for k in kinds if k in _FLASHABLE)
        self._mono = mono
        self._boottime = boottime
        raw = state.kv_get(FLASH_KEY)
        if raw is not None and raw.isdigit():
            self.through = int(raw)
        else:
            # first start: anything not yet acknowledged is a candidate (rule 2 filters stale ones)
            self.through = outbox.state().acked_seq
            state.kv_set(FLASH_KEY, str(self.through))
        self.scanned = self.through
        self.pending: list[_Group] = []
        self._next_scan = 0.0
        self.sent = 0
        self.given_up = 0

    def due_in(self) -> float:
        now = self._mono()
        waits = [self._next_scan - now]
        waits += [g.next_try - now for g in self.pending]
        return max(0.0, min(waits))

    # -- scanning --------------------------------------------------------------------------------

    def _urgent(self, kind: str, body: dict[str, object]) -> bool:
        if kind not in self.kinds:
            return False
        if kind == "decision":
            payload = body.get("payload")
            return isinstance(payload, dict) and payload.get("alert") == "urgent"
        return True

    def _fresh(self, at: object) -> bool:
        if not isinstance(at, dict):
            return False
        if at.get("boot") == self.clock.boot and isinstance(at.get("mono_ms"), int):
            return self._boottime() - int(at["mono_ms"]) <= MAX_AGE_S * 1000
        try:
            wall = parse_ms(str(at.get("wall")))
        except ValueError:
            return False
        return abs(self.clock.now() - wall) <= MAX_AGE_S * 1000

    def scan(self) -> None:
        """Queue urgent rows committed since the last scan (rule 1-2)."""
        now = self._mono()
        if now < self._next_scan:
            return
        self._next_scan = now + SCAN_S
        head = self.outbox.head_seq()
        if head <= self.scanned or not self.kinds:
            self.scanned = max(self.scanned, head)
            return
        acked = self.outbox.state().acked_seq
        marks = ",".join("?" * len(self.kinds))
        rows = self.outbox.execute(
            f"SELECT seq, kind, CAST(body AS BLOB), CAST(hash AS BLOB) FROM events "
            f"WHERE seq > ? AND seq <= ? AND kind IN ({marks}) ORDER BY seq",
            (self.scanned, head, *self.kinds),
        ).fetchall()
        found: list[tuple[int, bytes]] = []
        for seq, kind, body, h in rows:
            if seq <= acked:
                continue
            try:
                ev = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                continue  # a damaged row: the upload declares it
            if not isinstance(ev, dict) or not self._urgent(kind, ev) or not self._fresh(ev.get("at")):
                continue
            found.append((seq, bytes(body[:-1]) + b',"hash":"' + bytes(h) + b'"}'))
        self.scanned = head
        for i in range(0, len(found), MAX_PER_REQUEST):
            chunk = found[i:i + MAX_PER_REQUEST]
            self.pending.append(_Group([s for s, _ in chunk], [e for _, e in chunk]))
        if not self.pending:
            self._advance(head)

    def _advance(self, seq: int) -> None:
        if seq > self.through:
            self.through = seq
            self.state.kv_set(FLASH_KEY, str(seq))

    # -- sending ---------------------------------------------------------------------------------

    def step(self) -> bool:
        """Scan, then send at most one due group; True when a request was made."""
        self.scan()
        now = self._mono()
        group = next((g for g in self.pending if g.next_try <= now), None)
        if group is None:
            return False
        acked = self.outbox.state().acked_seq
        if all(s <= acked for s in group.seqs):
            self._finish(group, sent=False, why="already uploaded")
            return False
        if group.first_try is None:
            group.first_try = now
        group.tries += 1
        body = b'{"events":[' + b",".join(group.events) + b"]}"
        try:
            reply = self.client.signed("POST", self.client.device_path("flash"), json_body=body,
                                       deadline_s=min(self.client.request_timeout_s, GIVE_UP_S))
        except (Unreachable, Rejected) as exc:
            group.last_error = str(exc)
            elapsed = self._mono() - group.first_try
            if group.tries >= TRIES or elapsed >= GIVE_UP_S:
                self._finish(group, sent=False, why=str(exc))
            else:
                group.next_try = self._mono() + RETRY_S[min(group.tries - 1, len(RETRY_S) - 1)]
            return True
        accepted = (reply.body or {}).get("accepted")
        log.info("flash seqs=%s accepted=%s", group.seqs, accepted)
        self._finish(group, sent=True, why="")
        return True

    def _finish(self, group: _Group, *, sent: bool, why: str) -> None:
        self.pending.remove(group)
        if sent:
            self.sent += len(group.seqs)
        else:
            self.given_up += len(group.seqs)
            log.warning("flash given up seqs=%s tries=%d: %s", group.seqs, group.tries, why)
        upto = min((g.seqs[0] for g in self.pending), default=self.scanned + 1) - 1
        self._advance(upto)
