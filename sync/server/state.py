"""The one typed object a server process shares between its routes and workers.

Routes get it through ``request.app.state.server`` (``ServerState``); nothing
else is set on the app. The clock is injectable so that tests can reproduce the
signed answers of the test vectors; everything else reads ``now_ms()``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from sync.errors import KeyFileError
from sync.keys import KeyFile, generate_key, load_key_file, write_key_file
from sync.server import tables as t
from sync.server.config import ServerConfig
from sync.server.db import Database, insert_ignore
from sync.server.errors import DatabaseError, StartupRefused
from sync.server.metrics import Metrics
from sync.server.ratelimit import RateLimiter
from sync.signing import ack_text, time_text
from sync.timefmt import format_ms, utc_now_ms

__all__ = ["ServerState", "open_state"]

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    config: ServerConfig
    db: Database
    server_key: KeyFile
    publisher_keys: list[KeyFile]
    clock: Callable[[], int] = utc_now_ms
    limiter: RateLimiter = field(default_factory=RateLimiter)
    metrics: Metrics = field(default_factory=Metrics)
    pid_keys: dict[int, bytes] = field(default_factory=dict)

    def now_ms(self) -> int:
        return self.clock()

    # -- signed answers (sync.md §2.5) -------------------------------------------------------

    def signed_time(self, device_id: str, nonce: str, now_ms: int | None = None) -> dict[str, str]:
        server_time = format_ms(self.now_ms() if now_ms is None else now_ms)
        sig = self.server_key.sign(time_text(device_id, nonce, server_time)).hex()
        return {"server_time": server_time, "nonce": nonce, "sig": sig}

    def signed_ack(self, device_id: str, nonce: str, acked_seq: int, acked_hash: str) -> dict[str, object]:
        sig = self.server_key.sign(ack_text(device_id, nonce, acked_seq, acked_hash)).hex()
        return {"acked_seq": acked_seq, "acked_hash": acked_hash, "ack_sig": sig}

    # -- secrets derived from the server key --------------------------------------------------

    def derived_secret(self, purpose: str) -> bytes:
        """A per-purpose secret (CSRF, cursors) derived from the server key: survives restarts,
        differs per server, never stored."""
        seed = bytes.fromhex(self.server_key.seed or "")
        return hmac.new(seed, b"checkpoint/server-secret/v1\n" + purpose.encode(), hashlib.sha256).digest()

    @property
    def can_publish(self) -> bool:
        """Server flow (bundles.md §2.4): the server holds at least one publisher key."""
        return bool(self.publisher_keys)


def _server_key(config: ServerConfig) -> KeyFile:
    path = config.path(config.server_key_file)
    if not path.exists() and config.server_key_file == Path("server.key"):
        # Like an SSH host key: a new server makes its own online key on first start.
        # Root holders then list its public half in the next keys document (bundles.md §2.2).
        path.parent.mkdir(parents=True, exist_ok=True)
        key = generate_key("server", "server")
        write_key_file(path, key)
        log.warning("server key created path=%s keyid=%s (add it to the keys document)", path, key.keyid)
        return key
    try:
        return load_key_file(path, role="server")
    except KeyFileError as exc:
        raise StartupRefused(f"server_key_file: {exc}") from exc


def _publisher_keys(config: ServerConfig) -> list[KeyFile]:
    keys: list[KeyFile] = []
    for p in config.publisher_key_files:
        path = config.path(p)
        if not path.exists() and p == Path("publisher.key"):
            log.info("no publisher key at %s: offline flow (bundles.md §2.4)", path)
            continue
        try:
            keys.append(load_key_file(path, role="publisher"))
        except KeyFileError as exc:
            raise StartupRefused(f"publisher_key_files: {exc}") from exc
    return keys


def ensure_pid_key(db: Database, now_ms: int) -> dict[int, bytes]:
    """The fleet's pid keys (sync.md §1.4): made once, on the first start of a new database."""
    with db.write() as conn:
        conn.execute(insert_ignore(conn, t.pid_keys).values(pid_kid=1, key=secrets.token_hex(32), created_ms=now_ms))
        rows = conn.execute(select(t.pid_keys.c.pid_kid, t.pid_keys.c.key)).all()
    return {int(r.pid_kid): bytes.fromhex(r.key) for r in rows}


def open_state(
    config: ServerConfig, *, clock: Callable[[], int] = utc_now_ms, server_key: KeyFile | None = None,
    publisher_keys: list[KeyFile] | None = None, migrate: bool = True,
) -> ServerState:
    """Open the database (creating or upgrading the schema) and load the keys.

    Raises:
        StartupRefused, DatabaseError, ConfigError: the server cannot start as configured.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url)
    try:
        db.check_durability(allow_async_commit=config.allow_async_commit)
        if migrate:
            db.create_schema()
        elif db.schema_version() is None:
            raise DatabaseError("the database has no schema; start the server once to create it")
    except Exception:
        db.dispose()
        raise
    key = server_key or _server_key(config)
    if not key.has_private:
        raise StartupRefused("server_key_file: the private key file is needed")
    pubs = publisher_keys if publisher_keys is not None else _publisher_keys(config)
    state = ServerState(config=config, db=db, server_key=key, publisher_keys=pubs, clock=clock,
                        limiter=RateLimiter(config.rate_limit))
    state.pid_keys = ensure_pid_key(db, state.now_ms())
    return state
