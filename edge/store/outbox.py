"""Upload bookkeeping in ``events.db``: the outbox cursor, acks and retention (sync.md §1.6-1.7).

Written only by the sync agent, on its own connection with ``synchronous=NORMAL``:
losing the newest ack after a power cut only causes a re-send, and the next
FULL commit on the same WAL makes it durable anyway. The outbox is the range
``seq > acked_seq``; inserting an event is what enqueues it.

Rules:
- ``acked_seq`` moves only on an ack the caller has verified (a forged ack would
  make the gate prune events the server never stored); it never moves past the
  head, and only goes down through ``rewind`` (server restored from a backup).
- Retention prunes only acknowledged events, measured from the signed server time
  of the ack, never from an event's own ``at.wall``; it is skipped while the
  trusted clock is not ``synced``.
- Pruning goes in chunks of 5 000 seqs per transaction and moves
  ``pruned_through``/``pruned_hash`` in the same transaction, so the chain stays
  verifiable at every instant.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.errors import StoreError
from edge.store.events import OutboxState
from edge.store.schema import connect, create_events_schema
from sync.crashpoints import crashpoint
from sync.timefmt import format_ms, parse_ms

__all__ = ["Outbox"]

PRUNE_CHUNK = 5000
UPLOAD_STATES = ("ok", "backoff", "conflict", "blocked", "revoked")


class Outbox:
    """The agent's view of ``events.db`` bookkeeping tables."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / "events.db"
        if not self.path.exists():
            raise StoreError(f"{self.path} does not exist yet (the gate creates it)")
        self._conn = connect(self.path, "bookkeeping")
        create_events_schema(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self) -> OutboxState:
        row = self._conn.execute(
            "SELECT acked_seq, acked_hash, pruned_through, pruned_hash, state, failures, last_ok_wall, "
            "last_error FROM outbox WHERE id = 1"
        ).fetchone()
        if row is None:
            raise StoreError("outbox row missing")
        return OutboxState(*row)

    def head_seq(self) -> int:
        return int(self._conn.execute("SELECT next_seq FROM meta WHERE id = 1").fetchone()[0]) - 1

    def backlog(self) -> int:
        """Events waiting for an ack (seqs above ``acked_seq``, holes included)."""
        return max(0, self.head_seq() - self.state().acked_seq)

    def hash_of(self, seq: int) -> str | None:
        row = self._conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def set_acked(self, acked_seq: int, acked_hash: str, server_time: str, *, wall: str) -> None:
        """Record a verified ack: move the cursor forward and remember when (server time).

        Raises:
            StoreError: the ack is beyond the local head or goes backwards.
        """
        parse_ms(server_time)
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            cur = c.execute("SELECT acked_seq FROM outbox WHERE id = 1").fetchone()[0]
            head = c.execute("SELECT next_seq FROM meta WHERE id = 1").fetchone()[0] - 1
            if acked_seq > head:
                raise StoreError(f"ack {acked_seq} is beyond the local head {head}")
            if acked_seq < cur:
                raise StoreError(f"ack {acked_seq} is below the current ack {cur}; use rewind()")
            c.execute(
                "UPDATE outbox SET acked_seq = ?, acked_hash = ?, state = 'ok', failures = 0, last_ok_wall = ?, "
                "last_error = NULL WHERE id = 1",
                (acked_seq, acked_hash, wall),
            )
            if acked_seq > cur:
                c.execute("INSERT OR REPLACE INTO acks (acked_seq, server_time) VALUES (?, ?)", (acked_seq, server_time))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def rewind(self, acked_seq: int, acked_hash: str) -> None:
        """Move the cursor back (409 seq_gap: the server lost acknowledged data, sync.md §3.4)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("UPDATE outbox SET acked_seq = ?, acked_hash = ? WHERE id = 1", (acked_seq, acked_hash))
            self._conn.execute("DELETE FROM acks WHERE acked_seq > ?", (acked_seq,))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def set_state(self, state: str, *, error: str | None = None, failed: bool = False) -> None:
        if state not in UPLOAD_STATES:
            raise ValueError(f"unknown upload state {state!r}")
        self._conn.execute(
            "UPDATE outbox SET state = ?, last_error = ?, failures = failures + ? WHERE id = 1",
            (state, error[:500] if error else None, int(failed)),
        )

    def prune_retention(self, now_ms: int, retain_days: float) -> int:
        """Delete acknowledged events whose ack is older than the retention period (§1.7).

        The caller must only call this while the trusted clock is ``synced``.
        Returns the number of events deleted.
        """
        cutoff = format_ms(now_ms - int(retain_days * 86_400_000))
        c = self._conn
        row = c.execute("SELECT max(acked_seq) FROM acks WHERE server_time < ?", (cutoff,)).fetchone()
        if row is None or row[0] is None:
            return 0
        p = row[0]
        deleted = 0
        while True:
            c.execute("BEGIN IMMEDIATE")
            try:
                acked_seq, pruned = c.execute("SELECT acked_seq, pruned_through FROM outbox WHERE id = 1").fetchone()
                limit = min(p, acked_seq)
                hi = min(limit, pruned + PRUNE_CHUNK)
                # A chunk never ends inside a declared hole (a disk_full hole can span far more than
                # one chunk): pruned_through is always a row or a hole's end, or retention stalls there.
                inside = c.execute(
                    "SELECT from_seq, to_seq FROM dropped WHERE from_seq <= ? AND to_seq > ?", (hi, hi)
                ).fetchone()
                if inside is not None:
                    hi = inside[1] if inside[1] <= limit else inside[0] - 1
                if hi <= pruned:
                    c.execute("COMMIT")
                    break
                last = c.execute(
                    "SELECT seq, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq DESC LIMIT 1", (pruned, hi)
                ).fetchone()
                cur = c.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (pruned, hi))
                deleted += cur.rowcount
                crashpoint("agent.mid_prune")
                # The new mark: the last row or the end of a hole, whichever is later (a hole
                # moves the mark past it with its last hash).
                hole = c.execute(
                    "SELECT to_seq, last_hash FROM dropped WHERE to_seq > ? AND to_seq <= ? ORDER BY to_seq DESC "
                    "LIMIT 1", (pruned, hi),
                ).fetchone()
                marks = [m for m in (last, hole) if m is not None]
                if not marks:
                    c.execute("COMMIT")
                    break
                c.execute("UPDATE outbox SET pruned_through = ?, pruned_hash = ? WHERE id = 1", tuple(max(marks)))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        c.execute("DELETE FROM acks WHERE acked_seq < ?", (p,))
        return deleted

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        """Raw access for the agent's own bookkeeping queries."""
        return self._conn.execute(sql, params)
