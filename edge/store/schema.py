"""The gate's SQLite files, their tables and connection settings (sync.md §1.6).

``events.db`` holds only events and their bookkeeping; ``state.db`` holds the
shared clock, the keys document and bundle pointer in force, the venue binding
and a small cache. Durability per table is realised by which connection writes
it: ``synchronous`` is a per-connection setting.

| connection   | file      | synchronous | writes                                  |
|--------------|-----------|-------------|-----------------------------------------|
| appender     | events.db | FULL        | meta, events, dropped (EventStore only) |
| bookkeeping  | events.db | NORMAL      | outbox, acks (the agent)                |
| state        | state.db  | FULL        | clock, keys, bundle, binding            |
| cache        | state.db  | NORMAL      | kv                                      |
| reader       | either    | (query_only)| the guard console, status commands      |

Every connection: ``isolation_level=None`` (we issue ``BEGIN IMMEDIATE``
ourselves, so the write lock is taken before anything is read), busy_timeout
5000 ms, journal_size_limit 64 MiB, temp_store MEMORY. Never VACUUM (SD wear).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import sqlite_utils

__all__ = [
    "EVENTS_SCHEMA_VERSION",
    "STATE_SCHEMA_VERSION",
    "Role",
    "connect",
    "create_events_schema",
    "create_state_schema",
]

EVENTS_SCHEMA_VERSION = 1
STATE_SCHEMA_VERSION = 1
Role = Literal["appender", "bookkeeping", "state", "cache", "reader"]

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS meta (
  id             INTEGER PRIMARY KEY CHECK (id = 1),
  schema_version INTEGER NOT NULL,
  device_id      TEXT    NOT NULL,
  genesis        TEXT    NOT NULL,
  next_seq       INTEGER NOT NULL,
  head_hash      TEXT    NOT NULL,
  rebase_pending INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
  seq   INTEGER PRIMARY KEY,
  kind  TEXT NOT NULL,
  wall  TEXT NOT NULL,
  body  TEXT NOT NULL,
  hash  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped (
  from_seq  INTEGER PRIMARY KEY,
  to_seq    INTEGER NOT NULL,
  last_hash TEXT    NOT NULL,
  cause     TEXT    NOT NULL,
  gap_seq   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
  id             INTEGER PRIMARY KEY CHECK (id = 1),
  acked_seq      INTEGER NOT NULL DEFAULT 0,
  acked_hash     TEXT    NOT NULL,
  pruned_through INTEGER NOT NULL DEFAULT 0,
  pruned_hash    TEXT    NOT NULL,
  state          TEXT    NOT NULL DEFAULT 'ok',
  failures       INTEGER NOT NULL DEFAULT 0,
  last_ok_wall   TEXT,
  last_error     TEXT
);
CREATE TABLE IF NOT EXISTS acks (
  acked_seq   INTEGER PRIMARY KEY,
  server_time TEXT NOT NULL
);
"""

# The clock row (bundles.md §5.2), the keys document and bundle pointer in force
# (bundles.md §3.6), and the venue binding (sync.md §2.3). Each row carries a
# generation that every change increments, so readers re-read only on change.
STATE_DDL = """
CREATE TABLE IF NOT EXISTS state_meta (
  id             INTEGER PRIMARY KEY CHECK (id = 1),
  schema_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clock (
  id                    INTEGER PRIMARY KEY CHECK (id = 1),
  floor_ms              INTEGER NOT NULL,
  floor_source          TEXT    NOT NULL,
  floor_boot            TEXT,
  floor_boottime_ms     INTEGER,
  confirmed_ms          INTEGER,
  confirmed_source      TEXT,
  confirmed_boot        TEXT,
  confirmed_boottime_ms INTEGER,
  generation            INTEGER NOT NULL DEFAULT 0
);
-- keys: the keys document in force (bundles.md §3.4 K6), bytes as received (no semicolons in
-- these comments: the DDL is split on them).
CREATE TABLE IF NOT EXISTS keys (
  id          INTEGER PRIMARY KEY CHECK (id = 1),
  version     INTEGER NOT NULL,
  fleet       TEXT    NOT NULL,
  sha256      TEXT    NOT NULL,            -- document id (§1.2)
  bytes       BLOB    NOT NULL,
  expires_ms  INTEGER NOT NULL,
  applied_seq INTEGER,                     -- seq of its keys_applied event, NULL until written (§3.6)
  generation  INTEGER NOT NULL DEFAULT 0
);
-- bundle: the bundle pointer (bundles.md §3.6). The version lives only here, with the bundle it
-- belongs to. Times and the stale threshold are copied from the manifest and settings part so
-- that freshness (§4.1) is computed from this row alone.
CREATE TABLE IF NOT EXISTS bundle (
  id                INTEGER PRIMARY KEY CHECK (id = 1),
  manifest          BLOB    NOT NULL,
  manifest_id       TEXT    NOT NULL,
  keys_version      INTEGER NOT NULL,
  version           INTEGER NOT NULL,
  previous_version  INTEGER,               -- the version it replaced (bundle_applied payload)
  gate_site         TEXT,                  -- the gate's site when applied (M6/M7 scope)
  bundle_file       TEXT    NOT NULL,      -- file name under bundles/
  issued_at_ms      INTEGER NOT NULL,
  server_time_ms    INTEGER NOT NULL,
  expires_ms        INTEGER NOT NULL,
  stale_after_s     INTEGER NOT NULL,
  mode              TEXT    NOT NULL,
  last_confirmed_ms INTEGER NOT NULL,
  signer_revoked    INTEGER NOT NULL DEFAULT 0,
  corrupt           INTEGER NOT NULL DEFAULT 0,
  applied_seq       INTEGER,               -- seq of its bundle_applied event, NULL until written
  generation        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS binding (
  id          INTEGER PRIMARY KEY CHECK (id = 1),
  venue_id    TEXT NOT NULL,
  zone        TEXT NOT NULL,
  door        TEXT,
  firm_id     TEXT,
  venue_name  TEXT,
  source      TEXT NOT NULL,
  kid         TEXT,
  bound_by    TEXT,
  event_seq   INTEGER,
  generation  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS kv (
  key          TEXT PRIMARY KEY,
  value        TEXT NOT NULL,
  updated_wall TEXT NOT NULL
);
"""


def connect(path: Path, role: Role, *, max_db_mb: int | None = None) -> sqlite3.Connection:
    """Open one connection with the pragmas of its role.

    Args:
        path: the database file.
        role: decides ``synchronous`` (and ``query_only`` for readers).
        max_db_mb: for appender connections to ``events.db``: the storage budget,
            enforced through ``max_page_count`` (not persistent, so set on every open).
    """
    if role == "reader":
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=5.0
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA busy_timeout=5000")
    if role != "reader":
        # WAL is a property of the file; the first writer sets it and it sticks.
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA journal_size_limit=67108864")
    conn.execute("PRAGMA temp_store=MEMORY")
    sync = "FULL" if role in ("appender", "state") else "NORMAL"
    conn.execute(f"PRAGMA synchronous={sync}")
    if role == "reader":
        conn.execute("PRAGMA query_only=ON")
    if max_db_mb is not None and role == "appender":
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={max(64, max_db_mb * 1048576 // page_size)}")
    return conn


def create_events_schema(conn: sqlite3.Connection) -> None:
    """Create the ``events.db`` tables if missing (sqlite-utils runs the DDL and reports tables)."""
    db = sqlite_utils.Database(conn, recursive_triggers=False)
    if not {"meta", "events", "dropped", "outbox", "acks"} <= set(db.table_names()):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, EVENTS_DDL.split(";")):
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def create_state_schema(conn: sqlite3.Connection) -> None:
    """Create the ``state.db`` tables if missing."""
    db = sqlite_utils.Database(conn, recursive_triggers=False)
    if "state_meta" in db.table_names():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in filter(str.strip, STATE_DDL.split(";")):
            conn.execute(stmt)
        conn.execute(
            "INSERT OR IGNORE INTO state_meta (id, schema_version) VALUES (1, ?)", (STATE_SCHEMA_VERSION,)
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
