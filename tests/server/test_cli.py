"""``checkpoint server``: run (refusals, systemd notify, SIGTERM), tokens, devices, export; the schema.

The server runs as a real process on loopback, as systemd would start it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sync.keys import generate_key
from sync.signing import enroll_text

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edge.cli"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The command in its own process (exit codes and stdout exactly as a shell sees them)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cli_here(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (``edge.cli.main``: the exit-code mapping of the real entry point)."""
    import contextlib
    import io

    from edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_refuses_unsafe_settings(db_url: str, tmp_path: Path) -> None:
    r = cli_here("server", "run", "--database", db_url, "--listen", "0.0.0.0:8080")
    assert r.returncode == 78 and "behind_proxy" in r.stderr
    if db_url.startswith("sqlite"):
        r = cli_here("server", "run", "--database", db_url, "--workers", "2")
        assert r.returncode == 78 and "SQLite" in r.stderr
    else:
        sep = "&" if "?" in db_url else "?"
        r = cli_here("server", "run", "--database", f"{db_url}{sep}options=-c%20synchronous_commit%3Doff",
                     "--listen", f"127.0.0.1:{free_port()}")
        assert r.returncode == 78 and "synchronous_commit" in r.stderr
    bad = tmp_path / "server.toml"
    bad.write_text('listen = "127.0.0.1:8080"\nlisten_port = 5\n')
    r = cli_here("server", "run", "--config", str(bad))
    assert r.returncode == 78 and "unknown key listen_port" in r.stderr
    # One refusal through the installed entry point, as systemd runs it (exit status 78: no restart).
    if db_url.startswith("sqlite"):
        r = cli("server", "run", "--database", db_url, "--listen", "0.0.0.0:8080")
        assert r.returncode == 78 and r.stderr.count("\n") == 1


class Manager:
    """A stand-in for systemd's notify socket: keeps reading, like systemd does."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got: list[str] = []
        self._stop = False
        import threading

        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                self.got += self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                continue
            except OSError:
                return

    def wait_for(self, message: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while message not in self.got:
            assert time.monotonic() < deadline, f"no {message} in {self.got}"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.slow
def test_run_serves_notifies_systemd_and_stops_on_sigterm(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    manager = Manager(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "2000000"}
    config = tmp_path / "server.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\ndatabase = "{db_url}"\nlisten = "127.0.0.1:{port}"\n'
                      'log_format = "logfmt"\n')
    proc = subprocess.Popen([*CLI, "server", "run", "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        manager.wait_for("WATCHDOG=1")
        got = manager.got
        assert "READY=1" in got and got.index("READY=1") < got.index("WATCHDOG=1")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert "/v1/devices/{device_id}/events" in httpx.get(f"{base}/openapi.json").json()["paths"]
        # The key made on first start is 0600.
        key = tmp_path / "data" / "server.key"
        assert key.stat().st_mode & 0o777 == 0o600
        # Tokens and devices from the shell, used against the running server.
        r = cli("server", "token", "create", "--config", str(config), "--role", "admin", "--name", "ops")
        assert r.returncode == 0, r.stderr
        token = r.stdout.strip()
        hdr = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/v1/admin/tokens", headers=hdr).status_code == 200
        assert cli_here("server", "site-add", "--config", str(config), "--site", "fc-plant-1", "--name", "P1"
                        ).returncode == 0
        r = cli_here("server", "device", "add", "--config", str(config), "--device", "gate-cli-01", "--site",
                     "fc-plant-1", "--venue-id", "v-1", "--zone", "A")
        assert r.returncode == 0, r.stderr
        code = r.stdout.strip()
        dev = generate_key("device", "cli")
        ans = httpx.post(f"{base}/v1/enroll", json={"code": code, "public_key": dev.public,
                                                    "proof": dev.sign(enroll_text(code, dev.public)).hex()})
        assert ans.status_code == 200 and ans.json()["keyid"] == dev.keyid
        r = cli_here("server", "fleet", "--config", str(config), "--json")
        assert json.loads(r.stdout)[0]["device_id"] == "gate-cli-01"
        r = cli_here("server", "token", "list", "--config", str(config))
        assert "ops" in r.stdout and token not in r.stdout
        r = cli_here("server", "device", "add", "--config", str(config), "--device", "BAD ID", "--site", "x",
                     "--venue-id", "v", "--zone", "A")
        assert r.returncode == 2
        out = tmp_path / "export.csv"
        r = cli_here("server", "export", "--config", str(config), "--site", "fc-plant-1", "--from",
                     "2022-04-12T00:00:00+08:00", "--to", "2022-04-13T00:00:00+08:00", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes().startswith(b"\xef\xbb\xbfat,clock,site_id") and out.stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        manager.wait_for("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()


@pytest.mark.slow
def test_several_workers_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    manager = Manager(tmp_path)
    proc = subprocess.Popen([*CLI, "server", "run", "--database", pg_url, "--listen", f"127.0.0.1:{port}",
                             "--workers", "2"], cwd=REPO, env={**os.environ, "NOTIFY_SOCKET": manager.path,
                                                             "CHECKPOINT_SERVER_CONFIG": "",
                                                             "WATCHDOG_USEC": "2000000"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        manager.wait_for("READY=1")
        manager.wait_for("WATCHDOG=1")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()


def test_schema_is_created_once_and_matches_the_tables(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from sync.server.db import Database
    from sync.server.tables import HEAD_REVISION, SCHEMA_VERSION, metadata

    db = Database(db_url)
    try:
        first = db.create_schema()
        assert first in ("created", "current")  # PostgreSQL: created once per test run (tests/pg.py)
        assert db.create_schema() == "current"
        assert db.schema_version() == SCHEMA_VERSION and db.alembic_revision() == HEAD_REVISION
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        from sync.server.db import ALEMBIC_DIR

        cfg = Config()
        cfg.set_main_option("script_location", str(ALEMBIC_DIR))
        assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert diff == [], diff
    finally:
        db.dispose()


def test_half_a_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from sync.server.db import Database
    from sync.server.errors import DatabaseError

    path = tmp_path / "half.db"
    sqlite3.connect(path).execute("CREATE TABLE events (x INTEGER)").connection.commit()
    db = Database(f"sqlite:///{path}")
    with pytest.raises(DatabaseError, match="no schema_version"):
        db.create_schema()
    db.dispose()
    with pytest.raises(DatabaseError):
        Database("sqlite:///:memory:")
    with pytest.raises(DatabaseError):
        Database("mysql://x/y")


def test_example_config_lists_every_key_of_appendix_a_with_its_default() -> None:
    import tomllib

    from sync.server.config import ServerConfig, load_server_config

    path = REPO / "config" / "server.example.toml"
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    appendix_a = ["listen", "behind_proxy", "allow_plain_http", "trusted_proxies", "server_key_file",
                  "publisher_key_files", "replay_window_s", "nonce_ttl_s", "max_batch_events", "max_batch_json_bytes",
                  "max_body_bytes", "offline_after_s", "events_retention_days", "heartbeats_retention_days",
                  "alerts_retention_days", "holes_retention_days", "audit_retention_days", "webhook_timeout_s",
                  "webhook_give_up_h", "metrics_allow", "metrics_per_device", "allow_async_commit"]
    assert [k for k in appendix_a if k not in written] == []
    assert "database" in path.read_text()  # documented (commented: its default depends on data_dir)
    assert load_server_config(path).model_dump() == ServerConfig().model_dump()
    # Every model field is in the example.
    assert set(ServerConfig.model_fields) - set(written) == {"database"}
