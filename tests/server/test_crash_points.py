"""Kill -9 of the real server process at its ingest crash points (sync.md §3.2, §6.2).

One gate, one batch, the server killed at ``server.before_commit`` (nothing may
be stored; ``server.after_verify`` comes earlier, before the transaction, and is
exercised by the kill -9 harness of tests/crash), then at
``server.after_commit_before_response`` (everything stored, the gate never
heard back); after a plain restart the same batch is a duplicate: the ack is
the highest contiguous seq durably stored, and nothing is stored twice.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sync.keys import generate_key, load_key_file
from sync.server.db import Database
from sync.server.tokens import create_token
from sync.timefmt import utc_now_ms
from tests.server.harness import Gate, decision
from tests.server.test_cli import free_port

pytestmark = pytest.mark.slow


class Remote:
    """What ``Gate`` needs from a harness, for a server running in its own process."""

    def __init__(self, url: str, server_key_path: Path) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        self.server_key = load_key_file(server_key_path, role="server", private=False)

    @staticmethod
    def clock() -> int:
        return utc_now_ms()


def _serve(config_text: str, crash: str | None) -> None:
    """The server process: what ``checkpoint server run`` does, in a child of a preloaded fork server."""
    import tomllib

    import uvicorn

    from sync import crashpoints
    from sync.server.app import create_app
    from sync.server.config import ServerConfig
    from sync.server.state import open_state

    if crash:
        os.environ["CHECKPOINT_CRASHPOINTS"] = f"{crash}:1"
    else:
        os.environ.pop("CHECKPOINT_CRASHPOINTS", None)
    crashpoints.reload()
    cfg = ServerConfig.model_validate(tomllib.loads(config_text))
    uvicorn.run(create_app(open_state(cfg)), host=cfg.listen_host, port=cfg.listen_port, log_level="warning")


_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["sync.server.app", "sync.server.state", "uvicorn", "tests.server.test_crash_points"])


def start(config: Path, crash: str | None) -> Any:
    text = config.read_text()
    proc = _CTX.Process(target=_serve, args=(text, crash), daemon=True)
    proc.start()
    url = text.split('listen = "')[1].split('"')[0]
    key = Path(text.split('data_dir = "')[1].split('"')[0]) / "server.key"
    deadline = time.monotonic() + 60
    while True:
        try:
            # Our process is up once its key exists (written after the schema) and the port answers.
            if key.exists() and httpx.get(f"http://{url}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.is_alive() and time.monotonic() < deadline, f"server exited {proc.exitcode}"
        time.sleep(0.1)


def test_killed_at_each_crash_point_then_resent(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\ndatabase = "{db_url}"\nlisten = "127.0.0.1:{port}"\n'
                      'log_level = "WARNING"\nbackground_jobs = false\n')
    base = f"http://127.0.0.1:{port}"
    proc = start(config, "server.before_commit")
    procs: list[Any] = [proc]
    try:
        db = Database(db_url)
        with db.write() as conn:
            token, _ = create_token(conn, role="admin", name="crash", now_ms=utc_now_ms(), expires_days=None)
        admin = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{base}/v1/admin/sites", json={"site_id": "fc-plant-1", "name": "P1"},
                          headers=admin).status_code == 201
        code = httpx.post(f"{base}/v1/admin/devices", headers=admin, json={
            "device_id": "gate-fc-0007", "site_id": "fc-plant-1",
            "venue": {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}}).json()["enrollment_code"]
        remote = Remote(base, tmp_path / "data" / "server.key.pub")
        key = generate_key("device", "crash")
        gate = Gate(remote, "gate-fc-0007", key)  # type: ignore[arg-type]
        from sync.signing import enroll_text

        assert httpx.post(f"{base}/v1/enroll", json={"code": code, "public_key": key.public,
                                                     "proof": key.sign(enroll_text(code, key.public)).hex()}
                          ).status_code == 200
        for _ in range(50):
            gate.chain.append("decision", decision(), wall_ms=utc_now_ms())

        def count() -> tuple[int, int]:
            from sqlalchemy import text

            with db.read() as conn:
                n = conn.execute(text("SELECT count(*) FROM events")).scalar()
                acked = conn.execute(text("SELECT acked_seq FROM devices")).scalar()
            return int(n or 0), int(acked or 0)

        for point, stored in (("server.before_commit", 0), ("server.after_commit_before_response", 50)):
            if point != "server.before_commit":
                procs.append(proc := start(config, point))
            with pytest.raises(httpx.TransportError):
                gate.upload_range(1, 50)
            proc.join(30)
            assert proc.exitcode == -9, point
            assert count() == (stored, stored), point
        procs.append(proc := start(config, None))
        r = gate.upload_range(1, 50)
        assert r.status_code == 200, r.text
        assert (r.json()["stored"], r.json()["duplicates"]) == (0, 50)
        assert gate.check_ack(r.json()) == (50, gate.chain.hash_of(50))
        assert count() == (50, 50)
        db.dispose()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(30)
