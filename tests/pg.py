"""A real PostgreSQL server for the tests (sync.md §5.10), shared by every suite that needs one.

1. Find the server programs: ``$CHECKPOINT_PG_BINDIR``, else ``pg_config --bindir``,
   else the newest of Debian's ``/usr/lib/postgresql/<major>/bin``.
2. A short temporary directory (Unix socket paths are limited to ~100 bytes);
   as root, chown it to ``postgres`` and run every server command through
   ``runuser -u postgres --`` (``initdb`` refuses to run as root).
3. ``initdb -U checkpoint --auth=trust --encoding=UTF8 --no-locale -N``.
4. ``pg_ctl start`` on a free loopback TCP port (``127.0.0.1`` only; the server talks to
   PostgreSQL over TCP as a deployed one does) plus a Unix socket in the directory for the
   admin commands, ``fsync=off``, ``full_page_writes=off`` (tests kill our server, never PostgreSQL).
5. ``createdb checkpoint_test``; URL ``postgresql+psycopg://checkpoint@127.0.0.1:<port>/checkpoint_test``.
6. The schema is created once per run; between tests every table is emptied
   (``TRUNCATE … RESTART IDENTITY CASCADE``).
7. Teardown: ``pg_ctl -m immediate stop``, remove the directory.
8. ``CHECKPOINT_TEST_PG=auto`` (default) skips the PostgreSQL half with a reason
   when no binaries are found; ``require`` makes that a failure; ``off`` skips it.

Use: ``from tests.pg import db_url, pg_url  # noqa: F401`` in a conftest, then ask
for ``db_url`` (parametrised ``sqlite`` / ``postgresql``) in a test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "db_url", "find_bindir", "pg_mode", "pg_url"]


def pg_mode() -> str:
    mode = os.environ.get("CHECKPOINT_TEST_PG", "auto").strip().lower()
    if mode not in ("auto", "require", "off"):
        raise pytest.UsageError(f"CHECKPOINT_TEST_PG must be auto, require or off, not {mode!r}")
    return mode


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live (step 1)."""
    env = os.environ.get("CHECKPOINT_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
            path = Path(out.stdout.strip())
            if (path / "initdb").exists():
                return path
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        majors = sorted((p for p in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)),
                        key=lambda p: [int(x) for x in p.name.split(".")], reverse=True)
        for p in majors:
            if (p / "bin" / "initdb").exists():
                return p / "bin"
    return None


def _free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it; pytest-xdist workers each start one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throw-away PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable  # benchmarks: fsync on, as a real server runs
        self.dir = Path(tempfile.mkdtemp(prefix="ckpg", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://checkpoint@127.0.0.1:{self.port}/checkpoint_test"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-2000:] if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr.strip()[-1000:]}\n{log}")
        return res

    def start(self) -> str:
        if self._as_postgres:
            shutil.chown(self.dir, user="postgres", group="postgres")
        self._run("initdb", "-D", str(self.data), "-U", "checkpoint", "--auth=trust", "--encoding=UTF8",
                  "--no-locale", "-N")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                "-c max_connections=200")
        if not self.durable:
            opts += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", opts, "start")
        self._run("createdb", "-h", str(self.dir), "-p", str(self.port), "-U", "checkpoint", "checkpoint_test")
        return self.url

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The URL of a running PostgreSQL with the server schema created (once per test run)."""
    mode = pg_mode()
    if mode == "off":
        pytest.skip("PostgreSQL tests are off (CHECKPOINT_TEST_PG=off)")
    bindir = find_bindir()
    if bindir is None:
        msg = ("no PostgreSQL server programs found (set CHECKPOINT_PG_BINDIR, or apt-get install postgresql)")
        if mode == "require":
            pytest.fail(f"CHECKPOINT_TEST_PG=require: {msg}")
        pytest.skip(msg)
    server = PostgresServer(bindir)
    try:
        url = server.start()
        from sync.server.db import Database

        db = Database(url)
        db.create_schema()
        db.dispose()
    except Exception:
        server.stop()
        raise
    yield url
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A server database URL: a fresh SQLite file, or the shared PostgreSQL emptied after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    url = request.getfixturevalue("pg_url")
    from sync.server.db import Database

    db = Database(url)
    try:
        db.truncate_all()  # before, not after: a failed test's rows never leak into the next one
    finally:
        db.dispose()
    yield url
