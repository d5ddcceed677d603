"""Database access and every SQLite/PostgreSQL difference, in one module (sync.md §5.1).

- SQLite: pragmas on connect (``journal_mode=WAL``, ``synchronous=FULL`` so an ack
  survives a power cut, ``busy_timeout=5000``, ``foreign_keys=ON``); the DBAPI
  connection runs with ``isolation_level=None`` and a ``begin`` event emits
  ``BEGIN IMMEDIATE`` for writers. Readers use a second engine whose
  transactions are deferred, so dashboards and trace queries never wait for
  the write lock. One server process only; inside it, writers also take a
  process lock so threads queue in Python instead of in SQLite's busy handler.
- PostgreSQL: ``pool_pre_ping``; ``SELECT … FOR UPDATE`` for the device row,
  ``SKIP LOCKED`` for webhook work, ``pg_try_advisory_lock`` so one process runs
  the periodic jobs; refuses to start with ``synchronous_commit = off`` unless
  allowed.
- Upserts are ``insert(…).on_conflict_do_nothing()`` of the dialect.
- Schema: ``create_all`` on an empty database plus a ``schema_version`` row and
  an Alembic stamp; an existing database is upgraded with Alembic.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, Table, create_engine, event, inspect, select, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url

from sync.server import tables as t
from sync.server.errors import DatabaseError, StartupRefused

__all__ = ["Database", "insert_ignore", "insert_rows"]

log = logging.getLogger(__name__)

ALEMBIC_DIR = Path(__file__).with_name("migrations")
_JOB_LOCK_KEY = 0x636B7074  # "ckpt": the advisory lock of the periodic jobs


def insert_ignore(conn: Connection, table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return pg_dialect.insert(table).on_conflict_do_nothing()
    return sqlite_dialect.insert(table).on_conflict_do_nothing()


_insert_sql: dict[tuple[str, str], tuple[str, list[str], bool]] = {}


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows with one DBAPI ``executemany`` (the ingest hot path).

    The statement is compiled once per dialect; the rows go to the driver as tuples
    (SQLite, ``qmark``) or dicts (psycopg, ``pyformat``) without SQLAlchemy's per-row
    parameter processing, which is safe here because every column is a plain
    integer, string or boolean.
    """
    if not rows:
        return
    key = (conn.dialect.name, table.name)
    hit = _insert_sql.get(key)
    if hit is None:
        cols = [c.name for c in table.columns]
        compiled = table.insert().compile(dialect=conn.dialect, column_keys=cols)
        positional = bool(compiled.positional)
        order = list(compiled.positiontup) if positional and compiled.positiontup else cols
        hit = _insert_sql[key] = (str(compiled), order, positional)
    sql, order, positional = hit
    if positional:
        conn.exec_driver_sql(sql, [tuple(map(r.get, order)) for r in rows])
    else:
        conn.exec_driver_sql(sql, [{c: r.get(c) for c in order} for r in rows])


class Database:
    """Engines for one server database; ``write()`` and ``read()`` give transactions.

    Args:
        url: ``sqlite:///FILE`` or ``postgresql+psycopg://…``.
        pool_size: connections per engine on PostgreSQL.
    """

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise DatabaseError(f"unsupported database {self.dialect!r}: use sqlite:/// or postgresql+psycopg://")
        self._write_lock: threading.Lock | None = None
        if self.is_sqlite:
            if parsed.database in (None, "", ":memory:"):
                raise DatabaseError("the server needs a SQLite file, not an in-memory database")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = self._sqlite_engine(url, immediate=True)
            self.reader = self._sqlite_engine(url, immediate=False)
            self._write_lock = threading.Lock()
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
            self.reader = self.engine

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @staticmethod
    def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5.0}, pool_size=8,
                               max_overflow=8)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000", "foreign_keys=ON"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed on normal exit, rolled back on an exception."""
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """One read transaction (deferred on SQLite: never waits for a writer)."""
        with self.reader.connect() as conn, conn.begin():
            yield conn

    @staticmethod
    def for_update(stmt: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """Row lock on PostgreSQL; on SQLite the ``BEGIN IMMEDIATE`` write lock already holds."""
        return stmt.with_for_update(skip_locked=skip_locked)

    @contextlib.contextmanager
    def job_lock(self) -> Iterator[bool]:
        """True in the one process that may run the periodic jobs (advisory lock on PostgreSQL)."""
        if self.is_sqlite:
            yield True
            return
        with self.engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _JOB_LOCK_KEY}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _JOB_LOCK_KEY})
                    conn.commit()

    def check_durability(self, *, allow_async_commit: bool) -> None:
        """Refuse PostgreSQL with ``synchronous_commit = off`` (an ack could be lost, §5.1).

        Raises:
            StartupRefused: the setting is off and not explicitly allowed (a configuration error, exit 78).
        """
        if self.is_sqlite:
            return
        with self.engine.connect() as conn:
            value = conn.execute(text("SHOW synchronous_commit")).scalar()
        if str(value).lower() == "off" and not allow_async_commit:
            raise StartupRefused(
                "PostgreSQL synchronous_commit is off: a crash could lose acknowledged events "
                "(set it to on, or allow_async_commit = true if you accept that)"
            )

    def ping(self) -> None:
        with self.reader.connect() as conn:
            conn.execute(text("SELECT 1"))

    # -- schema -------------------------------------------------------------------------------

    def create_schema(self) -> str:
        """Create or upgrade the schema; returns what was done (``created`` / ``upgraded`` / ``current``)."""
        with self.engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
        if "schema_version" not in names:
            if names & {tbl.name for tbl in t.metadata.sorted_tables}:
                raise DatabaseError("the database holds some checkpoint tables but no schema_version row; refusing")
            with self.write() as conn:
                t.metadata.create_all(conn)
                conn.execute(t.schema_version.insert().values(version=t.SCHEMA_VERSION))
            self._alembic("stamp")
            log.info("schema created version=%d", t.SCHEMA_VERSION)
            return "created"
        before = self.alembic_revision()
        if before == t.HEAD_REVISION:
            return "current"  # the common start: no need to load the migration scripts
        self._alembic("upgrade")
        after = self.alembic_revision()
        return "current" if before == after else "upgraded"

    def alembic_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _alembic(self, action: str) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(ALEMBIC_DIR))
        cfg.attributes["database"] = self
        if action == "stamp":
            command.stamp(cfg, "head")
        else:
            command.upgrade(cfg, "head")

    def schema_version(self) -> int | None:
        with self.read() as conn:
            return conn.execute(select(t.schema_version.c.version)).scalar()

    def truncate_all(self) -> None:
        """Empty every table but the schema bookkeeping (tests: between tests on one database)."""
        keep = {"schema_version", "alembic_version"}
        names = [tbl.name for tbl in reversed(t.metadata.sorted_tables) if tbl.name not in keep]
        with self.write() as conn:
            if self.is_sqlite:
                for name in names:
                    conn.exec_driver_sql(f"DELETE FROM {name}")
            else:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")  # fail loudly, never hang on a leaked lock
                conn.exec_driver_sql(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")

    def dispose(self) -> None:
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

