"""``state.db``: the clock row, keys and bundle pointer, venue binding and a cache (sync.md §1.6).

Every change of the clock, keys, bundle or binding row is one ``BEGIN IMMEDIATE``
transaction with ``synchronous=FULL`` that adds 1 to the row's ``generation``;
readers keep their copy and re-read only when the generation changed. ``kv`` is
a cache (backoff, poll timing, flash cursor) written with ``synchronous=NORMAL``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from edge.store.schema import connect, create_state_schema
from sync.timefmt import format_ms, utc_now_ms

__all__ = ["StateDB"]

T = TypeVar("T")


class StateDB:
    """Shared state of the gate process and the sync agent."""

    def __init__(self, data_dir: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(data_dir) / "state.db"
        self._lock = threading.RLock()
        if readonly:
            self._conn = connect(self.path, "reader")
            self._cache = self._conn
        else:
            self._conn = connect(self.path, "state")
            create_state_schema(self._conn)
            self._cache = connect(self.path, "cache")
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                if self._cache is not self._conn:
                    self._cache.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def read_row(self, table: str) -> dict[str, Any] | None:
        """The single row (id = 1) of ``clock``, ``keys``, ``bundle`` or ``binding``."""
        if table not in ("clock", "keys", "bundle", "binding"):
            raise ValueError(f"no such state row: {table}")
        with self._lock:
            cur = self._conn.execute(f"SELECT * FROM {table} WHERE id = 1")
            row = cur.fetchone()
            if row is None:
                return None
            return {d[0]: v for d, v in zip(cur.description, row, strict=True)}

    def generation(self, table: str) -> int:
        """The row's generation (0 when there is no row yet): cheap change detection."""
        if table not in ("clock", "keys", "bundle", "binding"):
            raise ValueError(f"no such state row: {table}")
        with self._lock:
            row = self._conn.execute(f"SELECT generation FROM {table} WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def update_row(self, table: str, fn: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Read-modify-write one state row in one transaction; ``fn`` returns the new columns or None.

        The generation is incremented when ``fn`` returns a change. Returns the row as written.
        """
        if table not in ("clock", "keys", "bundle", "binding"):
            raise ValueError(f"no such state row: {table}")
        with self.transaction() as c:
            cur = c.execute(f"SELECT * FROM {table} WHERE id = 1")
            raw = cur.fetchone()
            old = {d[0]: v for d, v in zip(cur.description, raw, strict=True)} if raw else None
            new = fn(dict(old) if old else None)
            if new is None:
                return old
            row = dict(old or {})
            row.update(new)
            row["id"] = 1
            row["generation"] = (old["generation"] if old else 0) + 1
            cols = sorted(row)
            c.execute(
                f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [row[k] for k in cols],
            )
            return row

    def kv_get(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._cache.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def kv_set(self, key: str, value: str) -> None:
        with self._lock:
            self._cache.execute(
                "INSERT OR REPLACE INTO kv (key, value, updated_wall) VALUES (?, ?, ?)",
                (key, value, format_ms(utc_now_ms())),
            )
