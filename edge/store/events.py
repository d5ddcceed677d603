"""The gate's event log: ``events.db`` (sync.md §1.1-1.9).

Rules this module enforces, in the order an append meets them:

1. An event counts as logged only once its transaction is committed with
   ``synchronous=FULL``: ``append`` returns after that commit, never before.
2. Group commit (§1.6 step 2): callers queue their events; whichever caller
   holds the commit lock writes everything queued so far (at most
   ``commit_max_events``) in one transaction. Events that arrive during an
   fsync share the next commit; there is no artificial delay. One caller's
   ``append_many`` is always one transaction: all of it or none of it.
3. ``BEGIN IMMEDIATE`` takes the write lock before ``meta`` is read, so seqs
   stay gapless while the gate and the agent append from two processes.
4. Each event is built, canonicalised, checked against 4096 bytes and hashed
   before anything is written; an event that fails fails alone and uses no seq.
5. On ``SQLITE_FULL``/ENOSPC the full-disk procedure of §1.8 runs inside the
   failing append: acknowledged events go first; unacknowledged ones only with
   ``on_full = "drop_oldest"``, and then always with a ``dropped`` row and a
   ``gap`` event in the same transaction. Nothing is removed silently.
6. Any other failure raises ``StoreUnavailable``; ``append_or_hold`` keeps such
   events in memory (at most 10 000) and writes a ``memory_overflow`` gap for
   what it had to drop once the store works again.

``verify_chain`` re-derives every hash and link from the stored bodies and
names the first seq where the chain is broken (an edited, deleted or
reordered row).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edge.errors import StoreCorrupt, StoreError, StoreUnavailable, WrongDevice
from edge.store.schema import EVENTS_SCHEMA_VERSION, connect, create_events_schema
from sync.canonical import check_profile
from sync.crashpoints import crashpoint
from sync.errors import FormatError
from sync.events import build_event, genesis, hash_body
from sync.timefmt import parse_ms

__all__ = [
    "Appended",
    "ChainReport",
    "EventStore",
    "Head",
    "Hole",
    "OutboxState",
    "StoredEvent",
]

log = logging.getLogger(__name__)

OnFull = Literal["drop_oldest", "refer_all"]
MEMORY_QUEUE_MAX = 10_000
FS_FULL_BYTES = 16 * 1048576  # below this much free space a SQLITE_FULL is the file system's, not the budget's
_AT_KEYS = frozenset({"wall", "clock", "boot", "mono_ms"})


@dataclass(frozen=True)
class Appended:
    """Where an event landed in the chain."""

    seq: int
    hash: str


@dataclass(frozen=True)
class StoredEvent:
    """One row of ``events``: ``body`` is the canonical JSON of the event without ``hash``."""

    seq: int
    kind: str
    wall: str
    body: str
    hash: str

    def event(self) -> dict[str, Any]:
        """The full event object (with ``hash``), as uploaded."""
        ev: dict[str, Any] = json.loads(self.body)
        ev["hash"] = self.hash
        return ev


@dataclass(frozen=True)
class Hole:
    """A range of unacknowledged events removed on purpose (a ``dropped`` row)."""

    from_seq: int
    to_seq: int
    last_hash: str
    cause: str
    gap_seq: int


@dataclass(frozen=True)
class Head:
    device_id: str
    next_seq: int
    head_hash: str
    genesis: str
    rebase_pending: bool

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1


@dataclass(frozen=True)
class OutboxState:
    acked_seq: int
    acked_hash: str
    pruned_through: int
    pruned_hash: str
    state: str
    failures: int
    last_ok_wall: str | None
    last_error: str | None


@dataclass(frozen=True)
class ChainReport:
    """Result of ``verify_chain``; ``first_bad_seq`` is None when the chain is intact."""

    ok: bool
    checked: int
    head_seq: int
    holes: int
    first_bad_seq: int | None = None
    problem: str | None = None


@dataclass
class _Unit:
    """One caller's events: committed together or not at all."""

    items: list[tuple[str, dict[str, Any], dict[str, Any]]]
    done: bool = False
    results: list[Appended] = field(default_factory=list)
    error: BaseException | None = None


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return True
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def wal_autocheckpoint_pages(reserve_mb: int, page_size: int) -> int:
    """WAL pages between automatic checkpoints: a quarter of the reserve, 16 to SQLite's 1000."""
    if reserve_mb <= 0:
        return 1000
    return max(16, min(1000, reserve_mb * 1048576 // (4 * page_size)))


class EventStore:
    """Appender and reader of ``events.db`` for one device.

    Thread-safe: any thread may call ``append``; one commit lock serialises the
    transactions of this process, SQLite's write lock those of other processes.

    Args:
        data_dir: the gate's data directory (it must exist).
        device_id: the enrolled id; a store made for another id is refused.
        max_db_mb: storage budget, enforced with ``max_page_count`` (§1.8).
        reserve_mb: size of ``reserve.bin``, deleted to get room on a full file system.
        on_full: ``drop_oldest`` (default) or ``refer_all`` (§1.8 step 5).
        commit_max_events: the most events one group commit writes.
        recover_corrupt: when the file cannot be opened, keep it as
            ``events.db.corrupt-<stamp>`` and start a provisional chain with
            ``rebase_pending`` (§1.9 step 4). Only the gate process does this.

    Raises:
        WrongDevice: the store belongs to another device id.
        StoreCorrupt: the file is unusable and ``recover_corrupt`` is false.
    """

    def __init__(
        self,
        data_dir: Path | str,
        device_id: str,
        *,
        max_db_mb: int = 1024,
        reserve_mb: int = 20,
        on_full: OnFull = "drop_oldest",
        commit_max_events: int = 256,
        recover_corrupt: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "events.db"
        self.reserve_path = self.data_dir / "reserve.bin"
        self.max_db_mb = max_db_mb
        self.reserve_mb = reserve_mb
        self.on_full: OnFull = on_full
        self.commit_max_events = max(1, commit_max_events)
        self.recovered_from: Path | None = None
        self._queue: collections.deque[_Unit] = collections.deque()
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._held: collections.deque[tuple[str, dict[str, Any], dict[str, Any]]] = collections.deque()
        self._held_dropped = 0
        self._held_first_wall: str | None = None
        self._held_last_wall: str | None = None
        self.last_error: str | None = None
        self.full = False
        self._closed = False
        try:
            self._conn = self._open(device_id)
        except (sqlite3.DatabaseError, StoreCorrupt) as exc:
            if not recover_corrupt or not self.path.exists():
                raise StoreCorrupt(f"{self.path}: {exc}") from exc
            self.recovered_from = self._set_aside()
            log.error("store corrupt, kept as %s; new provisional chain", self.recovered_from.name)
            self._conn = self._open(device_id, rebase_pending=True)
        self.device_id = device_id

    # -- opening ---------------------------------------------------------------------------------

    def _open(self, device_id: str, *, rebase_pending: bool = False) -> sqlite3.Connection:
        conn = connect(self.path, "appender", max_db_mb=self.max_db_mb)
        try:
            # Keep the WAL small beside reserve.bin: on a full file system the frames still in the WAL
            # must be checkpointed into the room the reserve leaves, and once checkpoints start failing
            # the WAL can hold about twice the autocheckpoint size (found by the real-ENOSPC test).
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA wal_autocheckpoint={wal_autocheckpoint_pages(self.reserve_mb, page_size)}")
            create_events_schema(conn)
            row = conn.execute("SELECT device_id, schema_version FROM meta WHERE id = 1").fetchone()
            if row is None:
                g = genesis(device_id)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT OR IGNORE INTO meta (id, schema_version, device_id, genesis, next_seq, head_hash, "
                    "rebase_pending) VALUES (1, ?, ?, ?, 1, ?, ?)",
                    (EVENTS_SCHEMA_VERSION, device_id, g, g, int(rebase_pending)),
                )
                conn.execute(
                    "INSERT OR IGNORE INTO outbox (id, acked_seq, acked_hash, pruned_through, pruned_hash) "
                    "VALUES (1, 0, ?, 0, ?)",
                    (g, g),
                )
                conn.execute("COMMIT")
                row = conn.execute("SELECT device_id, schema_version FROM meta WHERE id = 1").fetchone()
            if row is None or conn.execute("SELECT 1 FROM outbox WHERE id = 1").fetchone() is None:
                raise StoreCorrupt("meta or outbox row missing")
        except BaseException:
            conn.close()
            raise
        if row[0] != device_id:
            conn.close()
            raise WrongDevice(f"{self.path} belongs to device {row[0]!r}, not {device_id!r}")
        if row[1] > EVENTS_SCHEMA_VERSION:
            conn.close()
            raise StoreCorrupt(f"schema version {row[1]} is newer than this software ({EVENTS_SCHEMA_VERSION})")
        return conn

    def _set_aside(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"events.db.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(target) + suffix))
        return target

    def close(self) -> None:
        """Close the connection; idempotent."""
        if not self._closed:
            self._closed = True
            with self._commit_lock:
                self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending -------------------------------------------------------------------------------

    def append(self, kind: str, payload: Mapping[str, Any], at: Mapping[str, Any]) -> Appended:
        """Append one event; returns once it is durable.

        Args:
            kind: an event kind of sync.md §1.5.
            payload: masked, float-free payload.
            at: the ``at`` object taken by the caller when the fact happened.

        Raises:
            FormatError: the event is outside the canonical profile or over 4096 bytes.
            StoreUnavailable: the commit failed (and the full-disk procedure, if it ran, could not help).
        """
        return self.append_many([(kind, payload, at)])[0]

    def append_many(
        self, items: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]
    ) -> list[Appended]:
        """Append several events in one transaction (all or none), in order."""
        if self._closed:
            raise StoreUnavailable("event store is closed")
        unit = _Unit([self._check_item(k, p, a) for k, p, a in items])
        if not unit.items:
            return []
        with self._queue_lock:
            self._queue.append(unit)
        with self._commit_lock:
            while not unit.done:
                self._commit(self._take_batch())
        if unit.error is not None:
            raise unit.error
        return unit.results

    @staticmethod
    def _check_item(
        kind: str, payload: Mapping[str, Any], at: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        if not isinstance(kind, str) or not kind or not kind.replace("_", "a").isalnum() or kind != kind.lower():
            raise FormatError(f"bad event kind {kind!r}")
        at_d, payload_d = dict(at), dict(payload)
        if set(at_d) != _AT_KEYS:
            raise FormatError(f"'at' must have exactly {sorted(_AT_KEYS)}, got {sorted(at_d)}")
        check_profile(at_d)
        check_profile(payload_d)
        return kind, payload_d, at_d

    def _take_batch(self) -> list[_Unit]:
        batch: list[_Unit] = []
        count = 0
        with self._queue_lock:
            while self._queue:
                n = len(self._queue[0].items)
                if batch and count + n > self.commit_max_events:
                    break
                batch.append(self._queue.popleft())
                count += n
        return batch

    def _commit(self, batch: list[_Unit]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            staged = self._insert_units(conn, batch)
            crashpoint("store.before_commit")
            conn.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            if _is_full(exc):
                self._full_procedure(batch, exc)
                return
            err = StoreUnavailable(f"append failed: {exc}")
            err.__cause__ = exc
            self.last_error = str(exc)
            log.error("store append failed events=%d error=%s", sum(len(u.items) for u in batch), exc)
            for unit in batch:
                unit.error, unit.done = err, True
            return
        crashpoint("store.after_commit")
        self.full = False
        self.last_error = None
        for unit, (results, error) in zip(batch, staged, strict=True):
            unit.results, unit.error, unit.done = results, error, True

    def _insert_units(
        self, conn: sqlite3.Connection, batch: list[_Unit]
    ) -> list[tuple[list[Appended], BaseException | None]]:
        """Inside an open transaction: give each unit its seqs, insert, move ``meta``.

        A unit whose events cannot be built (profile, size) gets its error and no
        seq; the others continue from where the chain stands.
        """
        next_seq, head = conn.execute("SELECT next_seq, head_hash FROM meta WHERE id = 1").fetchone()
        rows: list[tuple[int, str, str, str, str]] = []
        staged: list[tuple[list[Appended], BaseException | None]] = []
        for unit in batch:
            seq, prev = next_seq, head
            unit_rows, results = [], []
            try:
                for kind, payload, at in unit.items:
                    _, body, h = build_event(
                        device_id=self.device_id, seq=seq, kind=kind, at=at, payload=payload, prev_hash=prev
                    )
                    unit_rows.append((seq, kind, at["wall"], body.decode("utf-8"), h))
                    results.append(Appended(seq, h))
                    seq, prev = seq + 1, h
            except FormatError as exc:
                staged.append(([], exc))
                continue
            rows.extend(unit_rows)
            staged.append((results, None))
            next_seq, head = seq, prev
        if rows:
            conn.executemany("INSERT INTO events (seq, kind, wall, body, hash) VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("UPDATE meta SET next_seq = ?, head_hash = ? WHERE id = 1", (next_seq, head))
        return staged

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    # -- full disk (§1.8) ------------------------------------------------------------------------

    def _full_procedure(self, batch: list[_Unit], first_exc: BaseException) -> None:
        """Make room and append ``batch`` behind a ``gap`` event, or fail every unit."""
        self.full = True
        log.warning("store full events=%d error=%s", sum(len(u.items) for u in batch), first_exc)
        at = batch[0].items[0][2]
        last_exc: BaseException = first_exc
        for fraction in (0.10, 0.25, 0.50):
            if self._fs_short() and self.reserve_path.exists():
                with contextlib.suppress(FileNotFoundError):
                    self.reserve_path.unlink()
                    log.warning("store full: deleted %s to get room", self.reserve_path.name)
            conn = self._conn
            if self._fs_free() < FS_FULL_BYTES:
                # The file system, not (only) the budget, is full. In WAL mode the deletions below need new
                # WAL frames, which a full file system cannot hold while the WAL still carries pages
                # that could not be checkpointed (the database file could not grow). Move them into
                # the database now (into the room just made) and empty the WAL file; otherwise
                # the procedure fails on a real ENOSPC (found by tests/reliability/test_disk_full.py).
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                # Debian's SQLite is built with SECURE_DELETE: every freed page would be zeroed through
                # the WAL, doubling what a deletion costs exactly when there is no room. FAST still
                # zeroes what shares a page with kept rows; the deleted rows hold masked payloads only.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA secure_delete=FAST")
            try:
                conn.execute("BEGIN IMMEDIATE")
                crashpoint("store.mid_full_procedure")
                gap = self._free_space(conn, fraction)
                if gap is None:
                    conn.execute("ROLLBACK")
                    break
                gap_unit = _Unit([("gap", gap.payload, at)])
                staged = self._insert_units(conn, [gap_unit, *batch])
                gap_results, gap_error = staged[0]
                if gap_error is not None:
                    raise gap_error
                if gap.hole is not None:
                    h = gap.hole
                    conn.execute(
                        "INSERT INTO dropped (from_seq, to_seq, last_hash, cause, gap_seq) VALUES (?, ?, ?, ?, ?)",
                        (h.from_seq, h.to_seq, h.last_hash, h.cause, gap_results[0].seq),
                    )
                conn.execute("COMMIT")
            except Exception as exc:
                self._rollback()
                last_exc = exc
                if _is_full(exc):
                    continue
                break
            log.warning("store full: removed %s; gap seq=%d", gap.summary, gap_results[0].seq)
            self.last_error = None
            for unit, (results, error) in zip(batch, staged[1:], strict=True):
                unit.results, unit.error, unit.done = results, error, True
            return
        msg = (
            "storage full and nothing may be removed (on_full=refer_all)"
            if self.on_full == "refer_all"
            else f"storage full and nothing left to remove: {last_exc}"
        )
        self.last_error = msg
        err = StoreUnavailable(msg)
        for unit in batch:
            unit.error, unit.done = err, True

    def _fs_free(self) -> int:
        try:
            return shutil.disk_usage(self.data_dir).free
        except OSError:
            return 0

    def _fs_short(self) -> bool:
        try:
            return shutil.disk_usage(self.data_dir).free < 2 * self.reserve_mb * 1048576
        except OSError:
            return True

    @dataclass
    class _Gap:
        payload: dict[str, Any]
        hole: Hole | None
        summary: str

    def _free_space(self, conn: sqlite3.Connection, fraction: float) -> EventStore._Gap | None:
        """Inside a transaction: delete enough old events to free ``fraction`` of the budget.

        Returns the payload of the ``gap`` event to append (and the hole to record),
        or None when nothing may be removed.
        """
        page_size, page_count, freelist = (
            conn.execute("PRAGMA page_size").fetchone()[0],
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA freelist_count").fetchone()[0],
        )
        used = (page_count - freelist) * page_size
        budget = min(self.max_db_mb * 1048576, max(used, page_size))
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        if rows == 0:
            return None
        avg = max(1.0, used / rows)
        want = max(1, math.ceil(budget * fraction / avg))
        acked_seq, pruned_through, _pruned_hash = conn.execute(
            "SELECT acked_seq, pruned_through, pruned_hash FROM outbox WHERE id = 1"
        ).fetchone()

        # Step 2: acknowledged events first (the server has them).
        acked = conn.execute(
            "SELECT seq, hash, wall FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (pruned_through, acked_seq, want),
        ).fetchall()
        if acked and (len(acked) >= want or self.on_full == "refer_all"):
            hi_seq, hi_hash, hi_wall = acked[-1]
            conn.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (pruned_through, hi_seq))
            conn.execute(
                "UPDATE outbox SET pruned_through = ?, pruned_hash = ? WHERE id = 1", (hi_seq, hi_hash)
            )
            payload = _gap_payload(
                "disk_full", True, acked[0][0], hi_seq, len(acked), acked[0][2], hi_wall, hi_hash
            )
            return EventStore._Gap(payload, None, f"acked seq={acked[0][0]}..{hi_seq}")
        if self.on_full == "refer_all":
            return None

        # Step 3: the oldest unacknowledged events, one contiguous range (drop_oldest).
        if acked:
            hi_seq, hi_hash, _ = acked[-1]
            conn.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (pruned_through, hi_seq))
            conn.execute(
                "UPDATE outbox SET pruned_through = ?, pruned_hash = ? WHERE id = 1", (hi_seq, hi_hash)
            )
            want -= len(acked)
        first = conn.execute(
            "SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (acked_seq,)
        ).fetchone()
        if first is None:
            return None
        victims = conn.execute(
            "SELECT seq, hash, wall FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (first[0], max(1, want))
        ).fetchall()
        lo_seq, hi_seq, hi_hash = victims[0][0], victims[-1][0], victims[-1][1]
        first_wall, last_wall = victims[0][2], victims[-1][2]
        # Merge with a hole that touches the range (unacknowledged ones only: an
        # acknowledged hole is settled with the server).
        touching = conn.execute(
            "SELECT from_seq, gap_seq FROM dropped WHERE to_seq >= ? - 1 AND from_seq <= ? AND to_seq > ? "
            "ORDER BY from_seq",
            (lo_seq, hi_seq, acked_seq),
        ).fetchall()
        if touching:
            merged_from = min(lo_seq, touching[0][0])
            if merged_from < lo_seq:
                old_gap = conn.execute("SELECT body FROM events WHERE seq = ?", (touching[0][1],)).fetchone()
                if old_gap is not None:
                    first_wall = json.loads(old_gap[0])["payload"].get("first_wall") or first_wall
            lo_seq = merged_from
            conn.execute("DELETE FROM dropped WHERE from_seq >= ? AND from_seq <= ?", (lo_seq, hi_seq))
        conn.execute("DELETE FROM events WHERE seq >= ? AND seq <= ?", (victims[0][0], hi_seq))
        count = hi_seq - lo_seq + 1
        hole = Hole(lo_seq, hi_seq, hi_hash, "disk_full", 0)
        payload = _gap_payload("disk_full", False, lo_seq, hi_seq, count, first_wall, last_wall, hi_hash)
        return EventStore._Gap(payload, hole, f"unacked seq={lo_seq}..{hi_seq}")

    # -- agent operations on the chain (sync.md §1.8, §1.9, §3.4) --------------------------------

    def declare_corrupt(self, from_seq: int, to_seq: int, last_hash: str, at: Mapping[str, Any]) -> Appended:
        """Turn a damaged run into a declared hole (§3.4 step 2.5, §1.9 step 3), in one transaction.

        Removes the rows ``from_seq..to_seq`` (unacknowledged rows whose hash or link
        failed), inserts the ``dropped`` row with ``cause: corrupt`` and appends the
        ``gap`` event describing it, so no unacknowledged event ever disappears
        without a trace. ``last_hash`` is the ``prev_hash`` of the next good row; when
        the run reaches the head it is the head hash.

        Returns:
            Where the ``gap`` event landed.

        Raises:
            StoreError: the range is acknowledged, beyond the head, or overlaps a declared hole.
            StoreUnavailable: the transaction failed.
        """
        _, _, at_d = self._check_item("gap", {}, at)
        if self._closed:
            raise StoreUnavailable("event store is closed")
        with self._commit_lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                next_seq, head_hash = conn.execute("SELECT next_seq, head_hash FROM meta WHERE id = 1").fetchone()
                acked = conn.execute("SELECT acked_seq FROM outbox WHERE id = 1").fetchone()[0]
                if not acked < from_seq <= to_seq < next_seq:
                    raise StoreError(
                        f"damaged run {from_seq}..{to_seq} is not between the ack {acked} and the head {next_seq - 1}"
                    )
                if conn.execute(
                    "SELECT 1 FROM dropped WHERE from_seq <= ? AND to_seq >= ?", (to_seq, from_seq)
                ).fetchone():
                    raise StoreError(f"damaged run {from_seq}..{to_seq} overlaps a declared hole")
                if to_seq == next_seq - 1:
                    last_hash = head_hash
                first_wall = _wall_of(conn, from_seq)
                last_wall = _wall_of(conn, to_seq)
                conn.execute("DELETE FROM events WHERE seq >= ? AND seq <= ?", (from_seq, to_seq))
                payload = _gap_payload(
                    "corrupt", False, from_seq, to_seq, to_seq - from_seq + 1, first_wall, last_wall, last_hash
                )
                (results, error), = self._insert_units(conn, [_Unit([("gap", payload, at_d)])])
                if error is not None:
                    raise error
                conn.execute(
                    "INSERT INTO dropped (from_seq, to_seq, last_hash, cause, gap_seq) VALUES (?, ?, ?, 'corrupt', ?)",
                    (from_seq, to_seq, last_hash, results[0].seq),
                )
                conn.execute("COMMIT")
            except StoreError:
                self._rollback()
                raise
            except (sqlite3.Error, OSError, FormatError) as exc:
                self._rollback()
                raise StoreUnavailable(f"declaring damaged run {from_seq}..{to_seq} failed: {exc}") from exc
        log.error("store damaged run seq=%d..%d declared as a hole; gap seq=%d", from_seq, to_seq, results[0].seq)
        return results[0]

    def prune_acked(
        self, through_seq: int, *, retention_edge_seq: int, at: Mapping[str, Any]
    ) -> tuple[int, Appended | None]:
        """Prune acknowledged events oldest first under storage pressure (§1.8 level ``prune``).

        Deletes the rows ``pruned_through < seq <= min(through_seq, acked_seq)`` in one
        appender transaction and moves ``pruned_through``. If any of them was younger
        than the retention period (above ``retention_edge_seq``: the highest seq whose
        ack is older than ``retain_acked_days``; 0 when the clock cannot tell), a ``gap``
        event with ``acked: true``, ``cause: storage_pressure`` goes in the same transaction.

        Returns:
            ``(events deleted, the gap event or None)``.

        Raises:
            StoreUnavailable: the transaction failed.
        """
        _, _, at_d = self._check_item("gap", {}, at)
        if self._closed:
            raise StoreUnavailable("event store is closed")
        gap: Appended | None = None
        with self._commit_lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                acked, pruned = conn.execute("SELECT acked_seq, pruned_through FROM outbox WHERE id = 1").fetchone()
                hi = min(through_seq, acked)
                # Never stop inside a declared hole: pruned_through must be a row or a hole's end.
                inside = conn.execute(
                    "SELECT from_seq FROM dropped WHERE from_seq <= ? AND to_seq > ?", (hi, hi)
                ).fetchone()
                if inside is not None:
                    hi = inside[0] - 1
                if hi <= pruned:
                    conn.execute("ROLLBACK")
                    return 0, None
                last = conn.execute(
                    "SELECT seq, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq DESC LIMIT 1", (pruned, hi)
                ).fetchone()
                hole_end = conn.execute(
                    "SELECT to_seq, last_hash FROM dropped WHERE to_seq > ? AND to_seq <= ? ORDER BY to_seq DESC "
                    "LIMIT 1", (pruned, hi)
                ).fetchone()
                marks = [m for m in (last, hole_end) if m is not None]
                if not marks:
                    conn.execute("ROLLBACK")
                    return 0, None
                new_through, new_hash = max(marks)
                first = conn.execute(
                    "SELECT min(seq) FROM events WHERE seq > ? AND seq <= ?", (pruned, new_through)
                ).fetchone()[0]
                first_wall = _wall_of(conn, first) if first is not None else None
                last_wall = _wall_of(conn, last[0]) if last is not None else None
                crashpoint("agent.mid_prune")
                deleted = conn.execute(
                    "DELETE FROM events WHERE seq > ? AND seq <= ?", (pruned, new_through)
                ).rowcount
                conn.execute(
                    "UPDATE outbox SET pruned_through = ?, pruned_hash = ? WHERE id = 1", (new_through, new_hash)
                )
                if deleted and new_through > retention_edge_seq:
                    payload = _gap_payload(
                        "storage_pressure", True, pruned + 1, new_through, deleted, first_wall, last_wall, new_hash,
                    )
                    (results, error), = self._insert_units(conn, [_Unit([("gap", payload, at_d)])])
                    if error is not None:
                        raise error
                    gap = results[0]
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError, FormatError) as exc:
                self._rollback()
                raise StoreUnavailable(f"pruning acknowledged events failed: {exc}") from exc
        log.warning("store pressure: pruned acked seq=%d..%d events=%d gap=%s", pruned + 1, new_through, deleted,
                    gap.seq if gap else None)
        return deleted, gap

    def rebase(self, base_seq: int, base_hash: str, at: Mapping[str, Any]) -> Appended:
        """Move a provisional chain behind the server's head (§1.9 step 4), in one transaction.

        After ``events.db`` was lost the gate keeps logging from seq 1 with
        ``rebase_pending`` set. Nobody has seen those events, so they may be
        rewritten: a ``gap`` (``cause: db_lost``) becomes seq ``C + 1`` linking to the
        server's ``H``, and every provisional event ``s`` becomes ``s + C + 1`` with
        fresh ``prev_hash``/``hash``. Seq references inside payloads (``decision_seq``,
        ``delivery_seq``, a ``gap``'s ``from_seq``/``to_seq``) and declared holes move
        with them; a hole keeps its ``last_hash``, which the event after it still links to.
        The outbox becomes ``(C, H)`` and the flag is cleared.

        Returns:
            Where the ``db_lost`` gap event landed (seq ``C + 1``).

        Raises:
            StoreError: no rebase is pending, or a rewritten event would exceed 4096 bytes.
            StoreUnavailable: the transaction failed.
        """
        _, _, at_d = self._check_item("gap", {}, at)
        if self._closed:
            raise StoreUnavailable("event store is closed")
        off = base_seq + 1
        with self._commit_lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                next_seq, pending = conn.execute("SELECT next_seq, rebase_pending FROM meta WHERE id = 1").fetchone()
                if not pending:
                    raise StoreError("no rebase pending")
                holes = conn.execute("SELECT from_seq, to_seq, last_hash, cause, gap_seq FROM dropped").fetchall()
                hole_by_end = {h[1]: h for h in holes}
                gap_payload = _gap_payload("db_lost", False, None, None, None, None, None, None)
                _, gbody, ghash = build_event(
                    device_id=self.device_id, seq=off, kind="gap", at=at_d, payload=gap_payload, prev_hash=base_hash
                )
                conn.execute("DROP TABLE IF EXISTS rebase_new")
                conn.execute("CREATE TABLE rebase_new (seq INTEGER PRIMARY KEY, kind TEXT, wall TEXT, body TEXT, "
                             "hash TEXT)")
                conn.execute("INSERT INTO rebase_new VALUES (?, 'gap', ?, ?, ?)",
                             (off, at_d["wall"], gbody.decode("utf-8"), ghash))
                prev_seq, prev_hash = 0, ghash
                while True:
                    rows = conn.execute(
                        "SELECT seq, kind, wall, body FROM events WHERE seq > ? ORDER BY seq LIMIT 2000", (prev_seq,)
                    ).fetchall()
                    if not rows:
                        break
                    out = []
                    for seq, kind, wall, body in rows:
                        if seq - 1 in hole_by_end:
                            prev_hash = hole_by_end[seq - 1][2]
                        ev = json.loads(body)
                        payload = _renumber(kind, ev["payload"], off, next_seq)
                        try:
                            _, nbody, nhash = build_event(
                                device_id=self.device_id, seq=seq + off, kind=kind, at=ev["at"], payload=payload,
                                prev_hash=prev_hash,
                            )
                        except FormatError as exc:
                            raise StoreError(f"event {seq} cannot be rebased to {seq + off}: {exc}") from exc
                        out.append((seq + off, kind, wall, nbody.decode("utf-8"), nhash))
                        prev_seq, prev_hash = seq, nhash
                    conn.executemany("INSERT INTO rebase_new VALUES (?, ?, ?, ?, ?)", out)
                if next_seq - 1 in hole_by_end:
                    prev_hash = hole_by_end[next_seq - 1][2]
                conn.execute("DELETE FROM events")
                conn.execute("INSERT INTO events (seq, kind, wall, body, hash) SELECT seq, kind, wall, body, hash "
                             "FROM rebase_new ORDER BY seq")
                conn.execute("DROP TABLE rebase_new")
                conn.execute("DELETE FROM dropped")
                conn.executemany(
                    "INSERT INTO dropped (from_seq, to_seq, last_hash, cause, gap_seq) VALUES (?, ?, ?, ?, ?)",
                    [(f + off, t + off, lh, cause, g + off) for f, t, lh, cause, g in holes],
                )
                conn.execute("UPDATE meta SET next_seq = ?, head_hash = ?, rebase_pending = 0 WHERE id = 1",
                             (next_seq + off, prev_hash))
                conn.execute(
                    "UPDATE outbox SET acked_seq = ?, acked_hash = ?, pruned_through = ?, pruned_hash = ?, "
                    "state = 'ok', failures = 0, last_error = NULL WHERE id = 1",
                    (base_seq, base_hash, base_seq, base_hash),
                )
                conn.execute("DELETE FROM acks")
                crashpoint("agent.mid_rebase")
                conn.execute("COMMIT")
            except StoreError:
                self._rollback()
                raise
            except (sqlite3.Error, OSError, FormatError, ValueError, KeyError) as exc:
                self._rollback()
                raise StoreUnavailable(f"rebase failed: {exc}") from exc
        log.warning("store rebased provisional chain: events=%d now seq=%d..%d behind server seq=%d",
                    next_seq - 1, off + 1, next_seq - 1 + off, base_seq)
        return Appended(off, ghash)

    # -- the memory queue (§1.6) -----------------------------------------------------------------

    def append_or_hold(self, kind: str, payload: Mapping[str, Any], at: Mapping[str, Any]) -> Appended | None:
        """Append, or keep the event in memory when the store fails; never raises for storage.

        Events already held are written first, so order is kept. Returns None when
        the event is held. Callers act on the decision either way (the gate must
        decide offline).

        Raises:
            FormatError: the event itself is invalid (a programming error, not storage).
        """
        item = self._check_item(kind, payload, at)
        if self._held:
            self._hold(item)
            return self.flush_held()
        try:
            return self.append_many([item])[0]
        except StoreUnavailable:
            self._hold(item)
            return None

    def _hold(self, item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
        if len(self._held) >= MEMORY_QUEUE_MAX:
            _, _, old_at = self._held.popleft()
            self._held_dropped += 1
            self._held_first_wall = self._held_first_wall or old_at["wall"]
            self._held_last_wall = old_at["wall"]
            if self._held_dropped == 1:
                log.error("store memory queue full: dropping oldest held events")
        self._held.append(item)

    @property
    def held(self) -> int:
        """Events waiting in memory for the store to work again."""
        return len(self._held)

    def flush_held(self) -> Appended | None:
        """Try to write the held events; returns the last one's place, or None if still failing."""
        if not self._held:
            return None
        items = list(self._held)
        if self._held_dropped:
            gap = _gap_payload(
                "memory_overflow", False, None, None, self._held_dropped,
                self._held_first_wall, self._held_last_wall, None,
            )
            items.insert(0, ("gap", gap, items[0][2]))
        try:
            results = self.append_many(items)
        except StoreUnavailable:
            return None
        self._held.clear()
        self._held_dropped = 0
        self._held_first_wall = self._held_last_wall = None
        return results[-1]

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._commit_lock:
            return self._conn.execute(sql, params).fetchall()

    def head(self) -> Head:
        """The chain head as committed (by any process)."""
        row = self._read("SELECT device_id, next_seq, head_hash, genesis, rebase_pending FROM meta WHERE id = 1")[0]
        return Head(row[0], row[1], row[2], row[3], bool(row[4]))

    def outbox(self) -> OutboxState:
        row = self._read(
            "SELECT acked_seq, acked_hash, pruned_through, pruned_hash, state, failures, last_ok_wall, "
            "last_error FROM outbox WHERE id = 1"
        )[0]
        return OutboxState(*row)

    def holes(self) -> list[Hole]:
        return [Hole(*r) for r in self._read("SELECT from_seq, to_seq, last_hash, cause, gap_seq FROM dropped ORDER BY from_seq")]

    def get(self, seq: int) -> StoredEvent | None:
        rows = self._read("SELECT seq, kind, wall, body, hash FROM events WHERE seq = ?", (seq,))
        return StoredEvent(*rows[0]) if rows else None

    def read(self, from_seq: int, limit: int = 500) -> list[StoredEvent]:
        """Stored events with ``seq >= from_seq`` in seq order (holes are skipped, not filled)."""
        rows = self._read(
            "SELECT seq, kind, wall, body, hash FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
        )
        return [StoredEvent(*r) for r in rows]

    def recent(self, kinds: Sequence[str], limit: int = 10) -> list[StoredEvent]:
        """The newest events of the given kinds, newest first (guard console)."""
        marks = ",".join("?" * len(kinds))
        rows = self._read(
            f"SELECT seq, kind, wall, body, hash FROM events WHERE kind IN ({marks}) ORDER BY seq DESC LIMIT ?",
            (*kinds, limit),
        )
        return [StoredEvent(*r) for r in rows]

    def iter_all(self, chunk: int = 2000) -> Iterator[StoredEvent]:
        seq = 0
        while True:
            rows = self._read(
                "SELECT seq, kind, wall, body, hash FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, chunk)
            )
            if not rows:
                return
            for r in rows:
                yield StoredEvent(*r)
            seq = rows[-1][0]

    def storage_bytes(self) -> tuple[int, int]:
        """``(used, budget)`` in bytes: used = (page_count − freelist_count) × page_size."""
        with self._commit_lock:
            c = self._conn
            page_size = c.execute("PRAGMA page_size").fetchone()[0]
            used = (c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0])
        return used * page_size, self.max_db_mb * 1048576

    def quick_check(self) -> str:
        """``PRAGMA quick_check``: ``"ok"`` or the first error line (≤ 200 characters)."""
        rows = self._read("PRAGMA quick_check")
        first = str(rows[0][0]) if rows else "ok"
        return first[:200]

    # -- verification ----------------------------------------------------------------------------

    def verify_chain(self) -> ChainReport:
        """Recompute every stored hash and link; name the first seq where the chain breaks.

        Checks, per stored row in seq order: the seq follows the previous one (or a
        declared hole bridges the gap, or it is the first after pruning); the hash
        recomputes from the body; the body is canonical and names this seq, this
        device and the previous hash. Finally ``meta`` must point at the last row.
        """
        head = self.head()
        ob = self.outbox()
        holes = {h.from_seq: h for h in self.holes()}
        expected = ob.pruned_through + 1
        prev = ob.pruned_hash if ob.pruned_through else head.genesis
        checked = 0

        def bad(seq: int, problem: str) -> ChainReport:
            return ChainReport(False, checked, head.last_seq, len(holes), seq, problem)

        for ev in self.iter_all():
            if ev.seq <= ob.pruned_through:
                continue
            while expected in holes and ev.seq > expected:
                prev, expected = holes[expected].last_hash, holes[expected].to_seq + 1
            if ev.seq != expected:
                return bad(expected, f"event {expected} is missing (next stored is {ev.seq})")
            if hash_body(ev.body.encode("utf-8")) != ev.hash:
                return bad(ev.seq, "stored hash does not match the event body")
            try:
                body = json.loads(ev.body)
            except ValueError:
                return bad(ev.seq, "event body is not JSON")
            if not isinstance(body, dict) or body.get("seq") != ev.seq:
                return bad(ev.seq, f"event body names seq {body.get('seq') if isinstance(body, dict) else '?'}")
            if body.get("device_id") != head.device_id:
                return bad(ev.seq, "event body names another device")
            if body.get("prev_hash") != prev:
                return bad(ev.seq, "prev_hash does not match the previous event")
            prev, expected = ev.hash, expected + 1
            checked += 1
        while expected in holes:
            prev, expected = holes[expected].last_hash, holes[expected].to_seq + 1
        if expected != head.next_seq:
            return bad(expected, f"chain ends at {expected - 1} but meta says {head.last_seq}")
        if prev != head.head_hash:
            return bad(head.last_seq, "meta head_hash does not match the last event")
        return ChainReport(True, checked, head.last_seq, len(holes))


def _gap_payload(
    cause: str,
    acked: bool,
    from_seq: int | None,
    to_seq: int | None,
    count: int | None,
    first_wall: str | None,
    last_wall: str | None,
    last_hash: str | None,
) -> dict[str, Any]:
    return {
        "cause": cause,
        "acked": acked,
        "from_seq": from_seq,
        "to_seq": to_seq,
        "count": count,
        "first_wall": first_wall,
        "last_wall": last_wall,
        "last_hash": last_hash,
    }


def _valid_wall(value: object) -> str | None:
    """A stored ``wall`` value if it is a valid time (damaged rows may hold anything)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    try:
        parse_ms(value)
    except ValueError:
        return None
    return value


def _wall_of(conn: sqlite3.Connection, seq: int) -> str | None:
    row = conn.execute("SELECT CAST(wall AS BLOB) FROM events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else _valid_wall(row[0])


_SEQ_REFS = ("decision_seq", "delivery_seq")


def _renumber(kind: str, payload: dict[str, Any], off: int, next_seq: int) -> dict[str, Any]:
    """Payload with its references to provisional seqs moved by ``off`` (rebase, §1.9)."""
    out = dict(payload)
    keys = (*_SEQ_REFS, "from_seq", "to_seq") if kind == "gap" else _SEQ_REFS
    for key in keys:
        v = out.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and 1 <= v < next_seq:
            out[key] = v + off
    return out
