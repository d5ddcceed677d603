"""The agent's storage upkeep: levels, pressure pruning, ``reserve.bin``, retention (sync.md §1.7-1.8).

Rules:

1. Every 60 s (and whenever asked) the level is computed: ``used = (page_count −
   freelist_count) × page_size`` against ``max_db_mb``, and the file system's free
   space against ``2 × reserve_mb``. ``full`` and ``error`` happen inside the gate's
   appends, so the gate's own report (``gate_status.storage_level``) can raise the
   level; it never lowers what the agent measures.
2. Level ``prune`` (used ≥ 90 %): acknowledged events go, oldest first, ignoring
   ``retain_acked_days``, until used < 80 %. When any of them was younger than the
   retention period a ``gap`` (``acked: true``, ``storage_pressure``) is appended in
   the same transaction. Unacknowledged events are never touched here (only the
   store's full-disk procedure may remove them, with a ``dropped`` row).
3. ``reserve.bin`` (``reserve_mb`` of zeros, fsynced) is recreated once the file
   system has ``2 × reserve`` free.
4. Retention (§1.7) runs at start and every 10 min, only while the trusted clock
   is ``synced``: age is measured from the signed server time of the ack.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.clock import TrustedClock
from edge.errors import StoreError
from edge.store.events import EventStore
from edge.store.outbox import Outbox
from sync.timefmt import format_ms

__all__ = ["LEVELS", "StorageKeeper", "StorageReport"]

log = logging.getLogger(__name__)

LEVELS = ("ok", "warn", "prune", "full", "error")
PRUNE_AT, TARGET = 0.90, 0.80
MAX_PRUNE_PER_TX = 20_000
MiB = 1 << 20


@dataclass(frozen=True)
class StorageReport:
    """The heartbeat's ``storage`` block."""

    level: str
    db_bytes: int
    budget_bytes: int
    fs_free_bytes: int
    dropped_unacked_total: int

    def heartbeat(self) -> dict[str, object]:
        return {"level": self.level, "db_bytes": self.db_bytes, "budget_bytes": self.budget_bytes,
                "fs_free_bytes": self.fs_free_bytes, "dropped_unacked_total": self.dropped_unacked_total}


class StorageKeeper:
    """Storage upkeep on behalf of the gate; called from the agent's main loop."""

    def __init__(
        self,
        *,
        store: EventStore,
        outbox: Outbox,
        clock: TrustedClock,
        data_dir: Path,
        reserve_mb: int,
        retain_acked_days: float,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.data_dir = Path(data_dir)
        self.reserve_mb = reserve_mb
        self.retain_acked_days = retain_acked_days
        self.reserve_path = self.data_dir / "reserve.bin"
        self.last: StorageReport | None = None
        self.pruned_total = 0

    def _fs_free(self) -> int:
        try:
            return shutil.disk_usage(self.data_dir).free
        except OSError:
            return 0

    def measure(self, gate_level: str | None = None) -> StorageReport:
        used, budget = self.store.storage_bytes()
        free = self._fs_free()
        if used >= PRUNE_AT * budget:
            level = "prune"
        elif used >= TARGET * budget or free < 2 * self.reserve_mb * MiB:
            level = "warn"
        else:
            level = "ok"
        if self.store.full:
            level = "full"
        if gate_level in LEVELS and LEVELS.index(gate_level) > LEVELS.index(level):
            level = gate_level
        row = self.outbox.execute("SELECT coalesce(sum(to_seq - from_seq + 1), 0) FROM dropped").fetchone()
        report = StorageReport(level, used, budget, free, int(row[0]))
        if self.last is None or self.last.level != report.level:
            log.info("storage level=%s used=%d budget=%d fs_free=%d", level, used, budget, free)
        self.last = report
        return report

    def check(self, gate_level: str | None = None) -> StorageReport:
        """The 60-second check: level, pressure pruning, ``reserve.bin`` (rules 1-3)."""
        report = self.measure(gate_level)
        if report.level == "prune" or (report.level in ("full", "error") and report.db_bytes >= PRUNE_AT
                                       * report.budget_bytes):
            if self.prune_pressure():
                report = self.measure(gate_level)
        self.ensure_reserve()
        return report

    def retention_edge_seq(self) -> int:
        """Highest seq whose ack is older than the retention period; 0 when the clock cannot tell."""
        reading = self.clock.read()
        if not reading.trusted:
            return 0
        cutoff = format_ms(reading.now_ms - int(self.retain_acked_days * 86_400_000))
        row = self.outbox.execute("SELECT max(acked_seq) FROM acks WHERE server_time < ?", (cutoff,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def prune_pressure(self) -> int:
        """Rule 2: prune acknowledged events until used < 80 %; returns events deleted."""
        deleted_total = 0
        for _ in range(100):  # bounded: each round deletes at least one row or stops
            used, budget = self.store.storage_bytes()
            if used < TARGET * budget:
                break
            rows = self.outbox.execute("SELECT count(*) FROM events").fetchone()[0]
            ob = self.outbox.state()
            if rows == 0 or ob.acked_seq <= ob.pruned_through:
                log.warning("storage pressure: nothing acknowledged left to prune (acked=%d)", ob.acked_seq)
                break
            avg = max(1.0, used / rows)
            want = min(MAX_PRUNE_PER_TX, max(1, math.ceil((used - (TARGET - 0.02) * budget) / avg)))
            try:
                deleted, gap = self.store.prune_acked(
                    ob.pruned_through + want, retention_edge_seq=self.retention_edge_seq(), at=self.clock.read().at()
                )
            except StoreError as exc:
                log.error("storage pressure prune failed: %s", exc)
                break
            if deleted == 0:
                break
            deleted_total += deleted
        self.pruned_total += deleted_total
        return deleted_total

    def ensure_reserve(self) -> bool:
        """Rule 3: recreate ``reserve.bin``; True when it was (re)written now."""
        if self.reserve_mb <= 0 or self.reserve_path.exists():
            return False
        if self._fs_free() < 2 * self.reserve_mb * MiB:
            return False
        tmp = self.reserve_path.with_name(".reserve.bin.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
            try:
                zeros = b"\0" * MiB
                for _ in range(self.reserve_mb):
                    os.write(fd, zeros)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve_path)
            dfd = os.open(self.data_dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("reserve.bin not recreated: %s", exc)
            return False
        log.info("reserve.bin recreated size_mb=%d", self.reserve_mb)
        return True

    def retention(self) -> int:
        """Rule 4: prune acknowledged events whose ack is older than ``retain_acked_days``."""
        reading = self.clock.read()
        if not reading.trusted:
            log.info("retention skipped: clock state is %s", reading.state)
            return 0
        try:
            deleted = self.outbox.prune_retention(reading.now_ms, self.retain_acked_days)
        except (StoreError, sqlite3.Error) as exc:
            log.error("retention failed: %s", exc)
            return 0
        if deleted:
            log.info("retention pruned events=%d", deleted)
        return deleted
