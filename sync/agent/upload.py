"""Ordered, signed, idempotent upload of the event log (sync.md §3.1-3.5, §3.7).

State lives in ``events.db`` and ``state.db`` only: after ``kill -9`` or a power
cut the uploader reads ``outbox.acked_seq`` and sends from ``acked_seq + 1``; a
lost response becomes a duplicate the server ignores. Rules, in loop order (§3.4):

1. ``start``: ``GET …/state``; a higher server ``acked_seq`` whose ``acked_hash``
   equals the local hash of that seq is adopted (a lost response).
2. ``step``: ``start = acked_seq + 1``. Seqs already pruned locally (only after a
   ``409 seq_gap``) lead as a skip with ``cause: server_lost``; a ``dropped`` row at
   ``start`` leads as a skip (§3.5). Then up to 500 rows (fewer while isolating a
   refused item), stopping before 1.5 MiB of JSON and before the next hole: a batch
   never spans a hole except its leading skip.
3. Every row's hash is recomputed from its body and every ``prev_hash`` link
   checked before it is sent; a damaged run becomes a declared hole with ``cause:
   corrupt`` and a ``gap`` event (one appender transaction) and nothing damaged is sent.
4. The body is gzipped over 4 KiB, signed (§2.4) and POSTed; at most one request
   is in flight.
5. The cursor moves only on a verified ``ack_sig``; an ack beyond the local head,
   or whose hash differs from the local one, means the gate's database is older
   than the server's view: state ``conflict``, never a silent move.
6. The response table of §3.4 decides what happens next (``UploadResult.delay_s``):
   at once after a 200 with more waiting, full-jitter backoff for network trouble,
   halving for 400/413, a 10-minute probe with ``GET …/state`` in ``conflict``,
   ``blocked`` and ``revoked``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.clock import TrustedClock
from edge.errors import StoreError
from edge.store.events import EventStore
from edge.store.outbox import Outbox
from sync.agent.timing import Backoff
from sync.canonical import canonical, loads_strict
from sync.client import (
    BadBatch,
    ClockSkew,
    Conflict,
    DeviceClient,
    ReplayedNonce,
    Reply,
    Revoked,
    SeqGap,
    TooLarge,
)
from sync.crashpoints import crashpoint
from sync.errors import FormatError, Rejected, Unreachable
from sync.events import hash_body
from sync.keys import KeyFile
from sync.signing import ack_text, head_text
from sync.timefmt import format_ms

__all__ = ["PROBE_S", "Batch", "UploadResult", "Uploader"]

log = logging.getLogger(__name__)

_HEAD = re.compile(rb'\{"at":\{[^{}]*\},"device_id":"([a-z0-9-]+)","kind":"')
_TAIL = re.compile(rb',"prev_hash":"([0-9a-f]{64})","seq":([1-9][0-9]{0,15}),"v":1\}\Z')
PROBE_S = 600.0   # conflict / blocked / revoked: probe GET …/state every 10 min (§3.4)
IDLE_S = 1.0      # nothing to send: look for new rows every second (§3.4 step 2.4)


@dataclass(frozen=True)
class _Row:
    seq: int
    body: bytes | None   # None: the row could not be read at all
    hash: str | None


@dataclass(frozen=True)
class Batch:
    """One upload request as built from the store."""

    first_seq: int
    last_seq: int
    prev_hash: str
    skip: dict[str, Any] | None
    events: list[bytes]      # the JSON of each full event (with ``hash``)
    head_hash: str
    json_bytes: int

    @property
    def count(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class UploadResult:
    """What one step did and when the next one is due (seconds from now)."""

    outcome: str          # sent, idle, backoff, conflict, blocked, revoked, damaged, retry, waiting
    delay_s: float
    acked_seq: int | None = None


class Uploader:
    """The upload half of the agent; single-threaded (called from the agent's main loop).

    Args:
        device_id: the enrolled id.
        store: the agent's appender (for ``gap`` events of damaged runs).
        outbox: the agent's bookkeeping connection.
        client: signed HTTP client.
        device_key: signs ``head_sig``.
        clock: the trusted clock (``at`` of events the agent appends, walls of acks).
        batch_max_events, batch_max_json_bytes: §3.1 / App. A limits.
        backoff: full-jitter backoff state.
    """

    def __init__(
        self,
        *,
        device_id: str,
        store: EventStore,
        outbox: Outbox,
        client: DeviceClient,
        device_key: KeyFile,
        clock: TrustedClock,
        batch_max_events: int = 500,
        batch_max_json_bytes: int = 1_572_864,
        backoff: Backoff | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.store = store
        self.outbox = outbox
        self.client = client
        self.key = device_key
        self.clock = clock
        self.max_events = max(1, min(500, batch_max_events))
        self.max_json = batch_max_json_bytes
        self.backoff = backoff or Backoff()
        self._mono = mono
        self.limit = self.max_events       # lowered while isolating a refused item (400/413)
        self.isolate_through = 0           # keep the lowered limit until the ack passes this seq
        self.genesis = self._meta_genesis()
        self._dev_bytes = device_id.encode()
        # counters for status, heartbeats and the drain benchmark
        self.batches_ok = 0
        self.events_sent = 0
        self.duplicates = 0
        self.last_error: str | None = None
        self._retry_blocked = False

    def _meta_genesis(self) -> str:
        return str(self.outbox.execute("SELECT genesis FROM meta WHERE id = 1").fetchone()[0])

    @property
    def state(self) -> str:
        return self.outbox.state().state

    # -- the local chain -------------------------------------------------------------------------

    def local_hash(self, seq: int) -> str | None:
        """The hash of ``seq`` as this gate knows it: a row, the cursor, the pruned mark or a hole's end."""
        if seq == 0:
            return self.genesis
        row = self.outbox.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            return str(row[0])
        ob = self.outbox.state()
        if seq == ob.acked_seq:
            return ob.acked_hash
        if seq == ob.pruned_through:
            return ob.pruned_hash
        hole = self.outbox.execute("SELECT last_hash FROM dropped WHERE to_seq = ?", (seq,)).fetchone()
        return None if hole is None else str(hole[0])

    def _read_rows(self, from_seq: int, limit: int) -> list[_Row]:
        """Rows from ``from_seq`` on, in seq order; bodies as bytes so damaged text cannot stop us.

        A read that fails on a damaged page falls back to one seq at a time; a seq
        that cannot be read at all is returned with ``body = None``.
        """
        try:
            rows = self.outbox.execute(
                "SELECT seq, CAST(body AS BLOB), CAST(hash AS BLOB) FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (from_seq, limit),
            ).fetchall()
            return [_Row(s, b, h.decode("ascii", "replace") if h is not None else None) for s, b, h in rows]
        except sqlite3.DatabaseError as exc:
            log.error("store read failed from seq=%d: %s; reading row by row", from_seq, exc)
        out: list[_Row] = []
        head = self.outbox.head_seq()
        for seq in range(from_seq, min(head, from_seq + limit - 1) + 1):
            try:
                r = self.outbox.execute(
                    "SELECT CAST(body AS BLOB), CAST(hash AS BLOB) FROM events WHERE seq = ?", (seq,)
                ).fetchone()
            except sqlite3.DatabaseError:
                out.append(_Row(seq, None, None))
                continue
            if r is not None:
                out.append(_Row(seq, r[0], r[1].decode("ascii", "replace") if r[1] is not None else None))
        return out

    def _row_ok(self, row: _Row, *, strict: bool = False) -> tuple[bool, str | None]:
        """Is the row self-consistent (hash recomputes, names its seq and this device)? Returns its prev_hash.

        ``strict`` also requires the body to be exactly the canonical JSON of its parsed value
        (used once a single event was refused, to tell damage from a software fault).
        """
        if row.body is None or row.hash is None:
            return False, None
        if hash_body(row.body) != row.hash:
            return False, None
        if strict:
            try:
                if canonical(loads_strict(row.body)) != row.body:
                    return False, None
            except (FormatError, UnicodeDecodeError, ValueError):
                return False, None
        # Fast path: a stored body is canonical JSON, whose members are sorted, so it starts
        # with the "at" object and "device_id" and ends with prev_hash, seq and v. Both anchors
        # are exact for any valid JSON text; anything else takes the full parse below.
        head = _HEAD.match(row.body)
        tail = _TAIL.search(row.body)
        if not strict and head is not None and tail is not None and head.group(1) == self._dev_bytes:
            if int(tail.group(2)) != row.seq:
                return False, None
            return True, tail.group(1).decode()
        try:
            ev = json.loads(row.body)
        except (UnicodeDecodeError, ValueError):
            return False, None
        if not isinstance(ev, dict) or ev.get("seq") != row.seq or ev.get("device_id") != self.device_id:
            return False, None
        prev = ev.get("prev_hash")
        return True, prev if isinstance(prev, str) else None

    # -- building a batch ------------------------------------------------------------------------

    def _next_hole(self, seq: int) -> tuple[int, int, str, str, int] | None:
        """The first ``dropped`` row that ends at or after ``seq``."""
        row = self.outbox.execute(
            "SELECT from_seq, to_seq, last_hash, cause, gap_seq FROM dropped WHERE to_seq >= ? ORDER BY from_seq "
            "LIMIT 1", (seq,),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4]))

    def build(self) -> Batch | None | tuple[str, int, int, str]:
        """The next batch; None when nothing waits; ``("damaged", from, to, last_hash)`` for a damaged run."""
        ob = self.outbox.state()
        # meta first: rows up to this head are committed together with it, so a
        # concurrent append by the gate cannot look like a damaged head.
        next_seq, meta_head = self.outbox.execute("SELECT next_seq, head_hash FROM meta WHERE id = 1").fetchone()
        head_seq = int(next_seq) - 1
        start = ob.acked_seq + 1
        if start > head_seq:
            return None
        skip: dict[str, Any] | None = None
        first_seq, prev_hash = start, ob.acked_hash
        nxt, link = start, ob.acked_hash
        if start <= ob.pruned_through:
            # §3.4 409 seq_gap: the server asks for seqs this gate pruned after they were acked.
            skip = {"from_seq": start, "to_seq": ob.pruned_through, "cause": "server_lost",
                    "last_hash": ob.pruned_hash, "gap_seq": None}
            nxt, link = ob.pruned_through + 1, ob.pruned_hash
        hole = self._next_hole(nxt)
        if skip is None and hole is not None and hole[0] <= nxt:
            f, t, last_hash, cause, gap_seq = hole
            if f < start:  # a hole straddling the cursor: declare it whole, the server trims (§3.5)
                first_seq = f
                prev_hash = self.local_hash(f - 1) or ob.acked_hash
            skip = {"from_seq": f, "to_seq": t, "cause": cause, "last_hash": last_hash, "gap_seq": gap_seq}
            nxt, link = t + 1, last_hash
            hole = self._next_hole(nxt)
        stop_before = min(hole[0] if hole is not None else head_seq + 1, head_seq + 1)
        limit = min(self.limit, self.max_events, max(0, stop_before - nxt))
        items: list[tuple[int, str, bytes]] = []
        size = 0
        if limit > 0:
            expected, prev = nxt, link
            for row in self._read_rows(nxt, limit):
                if row.seq >= stop_before:
                    break
                ok, row_prev = self._row_ok(row)
                if row.seq != expected or not ok or row_prev != prev:
                    if items or skip:
                        break  # send what is good first; the damage is handled when it leads
                    return self._damaged_run(expected, stop_before, head_seq, str(meta_head))
                assert row.body is not None and row.hash is not None
                item = row.body[:-1] + b',"hash":"' + row.hash.encode() + b'"}'
                if items and size + len(item) + 1 > self.max_json:
                    break
                items.append((row.seq, row.hash, item))
                size += len(item) + 1
                expected, prev = row.seq + 1, row.hash
            if items and items[-1][0] == head_seq and items[-1][1] != meta_head:
                # the head row was rewritten with a matching hash: meta still names the original
                if len(items) > 1:
                    dropped = items.pop()
                    size -= len(dropped[2]) + 1
                elif not skip:
                    return ("damaged", head_seq, head_seq, str(meta_head))
                else:
                    items.clear()
                    size = 0
            if not items and not skip:
                if nxt < stop_before:  # rows expected but none readable at nxt: missing rows are damage too
                    return self._damaged_run(nxt, stop_before, head_seq, str(meta_head))
                return None
        if not items and not skip:
            return None
        if items:
            last_seq, head_hash = items[-1][0], items[-1][1]
        else:
            assert skip is not None
            last_seq, head_hash = int(skip["to_seq"]), str(skip["last_hash"])
        return Batch(first_seq, last_seq, prev_hash, skip, [i[2] for i in items], head_hash, size)

    def _damaged_run(
        self, first_bad: int, stop_before: int, head_seq: int, meta_head: str
    ) -> tuple[str, int, int, str]:
        """Find the end of a damaged run starting at ``first_bad``: up to the next good row (§3.4 step 2.5).

        The run ends before the next row that is self-consistent; ``last_hash`` is
        that row's ``prev_hash``. With no good row before the next hole, the run
        ends there (``last_hash`` "": any consistent value, the hole's skip follows
        it); with none before the head, it reaches the head and ``last_hash`` is the
        head hash, which the next append links to.
        """
        end = stop_before
        seq = first_bad
        while seq + 1 < end:
            rows = [r for r in self._read_rows(seq + 1, 500) if r.seq < end]
            for row in rows:
                ok, prev = self._row_ok(row)
                if ok and prev is not None and not (row.seq == head_seq and row.hash != meta_head):
                    return ("damaged", first_bad, row.seq - 1, prev)
            if not rows:
                break
            seq = rows[-1].seq
        if end <= head_seq:
            return ("damaged", first_bad, end - 1, "")
        return ("damaged", first_bad, head_seq, meta_head)

    def body_of(self, batch: Batch) -> bytes:
        sig = self.key.sign(head_text(self.device_id, batch.last_seq, batch.head_hash)).hex()
        skip = json.dumps(batch.skip, separators=(",", ":")).encode() if batch.skip else b"null"
        return b"".join([
            b'{"device_id":', json.dumps(self.device_id).encode(),
            b',"first_seq":', str(batch.first_seq).encode(),
            b',"last_seq":', str(batch.last_seq).encode(),
            b',"prev_hash":"', batch.prev_hash.encode(),
            b'","skip":', skip,
            b',"events":[', b",".join(batch.events),
            b'],"head_hash":"', batch.head_hash.encode(),
            b'","head_sig":"', sig.encode(), b'"}',
        ])

    # -- acks ------------------------------------------------------------------------------------

    def _verified_ack(self, reply: Reply) -> tuple[int, str] | None:
        body = reply.body or {}
        seq, h, sig = body.get("acked_seq"), body.get("acked_hash"), body.get("ack_sig")
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 and isinstance(h, str)
                and isinstance(sig, str) and reply.nonce):
            return None
        if not self.client.verify_server_sig(ack_text(self.device_id, reply.nonce, seq, h), sig):
            log.error("ack signature does not verify acked_seq=%d nonce=%s", seq, reply.nonce)
            return None
        return seq, h

    def apply_ack(self, reply: Reply, *, source: str) -> str:
        """Act on the signed ack in a 200 (``/events``, ``/state``, ``/heartbeat``).

        Returns ``moved``, ``same``, ``behind`` (the server is behind: the next upload
        finds out), ``conflict`` or ``unverified``.
        """
        ack = self._verified_ack(reply)
        if ack is None or reply.server_time_ms is None:
            return "unverified"
        seq, h = ack
        ob = self.outbox.state()
        if seq < ob.acked_seq:
            return "behind"
        head = self.outbox.head_seq()
        local = self.local_hash(seq)
        if seq > head or (local is not None and local != h):
            self._enter("conflict", f"{source}: server ack {seq} {'beyond head ' + str(head) if seq > head else 'hash differs'}")
            return "conflict"
        if seq == ob.acked_seq and (ob.state == "ok" or source != "upload"):
            # Only an upload's own 200 clears backoff or blocked; an ack that merely repeats
            # the cursor (heartbeat, state) says nothing about the refused batch.
            return "same"
        crashpoint("agent.after_response_before_ack")
        try:
            self.outbox.set_acked(seq, h, format_ms(reply.server_time_ms), wall=self.clock.read().wall)
        except StoreError as exc:  # the head moved under us cannot make it smaller; log and carry on
            log.error("ack not recorded: %s", exc)
            return "unverified"
        crashpoint("agent.after_ack")
        if self.isolate_through and seq >= self.isolate_through:
            self.limit, self.isolate_through = self.max_events, 0
        return "moved" if seq > ob.acked_seq else "same"

    def _enter(self, state: str, error: str) -> None:
        self.last_error = error
        if self.outbox.state().state != state:
            log.error("upload state -> %s: %s", state, error)
        self.outbox.set_state(state, error=error)

    def _backoff(self, error: str, retry_after_s: float | None = None) -> UploadResult:
        delay = self.backoff.failure(retry_after_s)
        self.last_error = error
        self.outbox.set_state("backoff", error=error, failed=True)
        log.warning("upload failed n=%d retry_in_s=%.1f error=%s", self.backoff.failures, delay, error)
        return UploadResult("backoff", delay)

    # -- start and probe -------------------------------------------------------------------------

    def fetch_state(self) -> Reply:
        return self.client.signed("GET", self.client.device_path("state"))

    def start(self) -> None:
        """§3.4 step 1: learn the server's view (and the time) before the first batch."""
        if self.outbox.state().state == "blocked":
            # a restart (often after a software update) retries a refused item
            self.outbox.set_state("ok")
        try:
            reply = self.fetch_state()
        except (Unreachable, Rejected) as exc:
            if isinstance(exc, Revoked):
                self._enter("revoked", str(exc))
            log.warning("start: device state not available: %s", exc)
            return
        self._judge_state(reply, source="start")

    def _judge_state(self, reply: Reply, *, source: str) -> str:
        body = reply.body or {}
        status = body.get("status")
        if status in ("revoked", "retired"):
            self._enter("revoked", f"{source}: server says the device is {status}")
            return "revoked"
        if body.get("conflict") is True:
            self._enter("conflict", f"{source}: server flags a chain conflict at seq {body.get('conflict_seq')}")
            return "conflict"
        result = self.apply_ack(reply, source=source)
        if result in ("same", "behind") and self.outbox.state().state in ("conflict", "revoked", "backoff"):
            self.outbox.set_state("ok")
        return result

    def probe(self) -> UploadResult:
        """conflict / blocked / revoked: one ``GET …/state`` every 10 min (§3.4, §3.7)."""
        state = self.outbox.state().state
        try:
            reply = self.fetch_state()
        except Revoked as exc:
            self._enter("revoked", str(exc))
            return UploadResult("revoked", PROBE_S)
        except (Unreachable, Rejected) as exc:
            log.warning("probe in state=%s failed: %s", state, exc)
            return UploadResult(state, PROBE_S)
        result = self._judge_state(reply, source="probe")
        if state == "blocked" and result not in ("conflict", "revoked"):
            self._retry_blocked = True  # try the refused item once more
            return UploadResult("retry", 0.0)
        new = self.outbox.state().state
        if new in ("conflict", "revoked", "blocked"):
            return UploadResult(new, PROBE_S)
        log.info("probe: upload resumes from state=%s", state)
        return UploadResult("retry", 0.0)

    # -- one step --------------------------------------------------------------------------------

    def step(self) -> UploadResult:
        """Send at most one batch (plus the at-once retries of §3.4) and say when to come back."""
        state = self.outbox.state().state
        if state in ("conflict", "revoked") or (state == "blocked" and not self._retry_blocked):
            return self.probe()
        self._retry_blocked = False
        built = self.build()
        if built is None:
            return UploadResult("idle", IDLE_S)
        if isinstance(built, tuple):
            return self._declare_damage(built)
        batch = built
        body = self.body_of(batch)
        retried: set[str] = set()
        while True:
            crashpoint("agent.before_post")
            try:
                reply = self.client.signed("POST", self.client.device_path("events"), json_body=body)
            except ClockSkew as exc:
                crashpoint("agent.after_post")
                if "skew" not in retried and exc.reply.server_time_ms is not None:
                    retried.add("skew")  # the signed time in the body corrected the estimate
                    log.warning("upload clock_skew: retrying at once with the server's time")
                    continue
                return self._backoff(str(exc))
            except ReplayedNonce as exc:
                crashpoint("agent.after_post")
                if "nonce" not in retried:
                    retried.add("nonce")
                    continue
                return self._backoff(str(exc))
            except SeqGap as exc:
                crashpoint("agent.after_post")
                return self._seq_gap(exc)
            except Conflict as exc:
                crashpoint("agent.after_post")
                self._enter("conflict", str(exc))
                return UploadResult("conflict", PROBE_S)
            except (BadBatch, TooLarge) as exc:
                crashpoint("agent.after_post")
                return self._halve(batch, exc)
            except Revoked as exc:
                crashpoint("agent.after_post")
                self._enter("revoked", str(exc))
                return UploadResult("revoked", PROBE_S)
            except Unreachable as exc:
                crashpoint("agent.after_post")
                return self._backoff(str(exc), getattr(exc, "retry_after_s", None))
            except Rejected as exc:
                crashpoint("agent.after_post")
                return self._backoff(str(exc))
            crashpoint("agent.after_post")
            break
        result = self.apply_ack(reply, source="upload")
        if result == "unverified":
            return self._backoff("upload: 200 without a verifiable ack")
        if result == "conflict":
            return UploadResult("conflict", PROBE_S)
        self.backoff.reset()
        self.batches_ok += 1
        self.events_sent += batch.count
        b = reply.body or {}
        dup = b.get("duplicates") if isinstance(b.get("duplicates"), int) else 0
        self.duplicates += dup
        acked = self.outbox.state().acked_seq
        log.info("upload seq=%d..%d status=%d acked=%d dup=%d", batch.first_seq, batch.last_seq, reply.status,
                 acked, dup)
        more = acked < self.outbox.head_seq()
        return UploadResult("sent", 0.0 if more else IDLE_S, acked)

    def _seq_gap(self, exc: SeqGap) -> UploadResult:
        """409 seq_gap: the server lost acknowledged data (restored from a backup), §3.4."""
        reply = exc.reply
        ack = self._verified_ack(reply)
        expected = (reply.body or {}).get("expected_seq")
        if ack is None or not isinstance(expected, int) or expected < 1:
            return self._backoff(f"{exc} (reply not verifiable)")
        seq, h = expected - 1, ack[1] if ack[0] == expected - 1 else None
        if h is None:
            return self._backoff(f"{exc} (expected_seq and acked_seq disagree)")
        local = self.local_hash(seq)
        if local is not None and local != h:
            self._enter("conflict", f"seq_gap: server head {seq} differs from the local event")
            return UploadResult("conflict", PROBE_S)
        ob = self.outbox.state()
        if seq < ob.acked_seq:
            log.error("server lost acknowledged events: rewinding ack %d -> %d", ob.acked_seq, seq)
            self.outbox.rewind(seq, local or h)
        elif seq > ob.acked_seq:
            self.apply_ack(reply, source="seq_gap")
        return UploadResult("retry", 0.0)

    def _halve(self, batch: Batch, exc: Rejected) -> UploadResult:
        """400 bad_batch / 413: halve the batch to isolate the item; one refused event blocks (§3.4)."""
        if batch.count <= 1:
            if batch.count == 1 and isinstance(exc, BadBatch):
                # One event refused: damage the fast row check cannot see (a body that is not
                # canonical JSON yet hashes right) becomes a declared hole; anything else is a
                # software fault, and the gate says so instead of skipping it silently.
                rows = self._read_rows(batch.last_seq, 1)
                if rows and rows[0].seq == batch.last_seq and not self._row_ok(rows[0], strict=True)[0]:
                    ob = self.outbox.state()
                    next_seq, meta_head = self.outbox.execute(
                        "SELECT next_seq, head_hash FROM meta WHERE id = 1").fetchone()
                    hole = self._next_hole(batch.last_seq + 1)
                    stop = hole[0] if hole is not None else next_seq
                    log.error("refused event seq=%d is damaged: declaring it (acked=%d)", batch.last_seq,
                              ob.acked_seq)
                    return self._declare_damage(self._damaged_run(batch.last_seq, stop, next_seq - 1, meta_head))
            self._enter("blocked", f"{exc} (seq {batch.first_seq}..{batch.last_seq})")
            return UploadResult("blocked", PROBE_S)
        self.limit = max(1, batch.count // 2)
        self.isolate_through = max(self.isolate_through, batch.last_seq)
        log.warning("upload refused (%s); retrying with %d events", exc, self.limit)
        return UploadResult("retry", 0.0)

    def _declare_damage(self, run: tuple[str, int, int, str]) -> UploadResult:
        _, first, last, last_hash = run
        if not last_hash:
            # The run ends right before a declared hole: nothing after it links to it,
            # so any consistent value serves (the hole's skip then follows it).
            last_hash = self.local_hash(last) or "0" * 64
        try:
            self.store.declare_corrupt(first, last, last_hash, self.clock.read().at())
        except StoreError as exc:
            return self._backoff(f"damaged rows {first}..{last}: {exc}")
        return UploadResult("damaged", 0.0)

