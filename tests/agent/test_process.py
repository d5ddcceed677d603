"""``checkpoint sync run`` as a real process: kill -9 at every agent crash point, restart, resume;
readiness and watchdog pings; SIGTERM; the CLI commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import cli
from tests.agent.conftest import fill
from tests.agent.test_e2e import DEVICE, E2E, RealClock
from tests.pg import db_url, pg_url  # noqa: F401  (fixtures)
from tests.server.harness import ServerHarness

REPO = Path(__file__).resolve().parents[2]


def write_config(env: E2E, path: Path, **sync: Any) -> Path:
    lines = ["[gate]", f'device_id = "{DEVICE}"', f'data_dir = "{env.cfg.data_dir}"', "[store]", "reserve_mb = 0"]
    for k, v in env.cfg.store.model_dump(exclude_defaults=True).items():
        if k not in ("reserve_mb", "data_dir"):
            lines.append(f"{k} = {json.dumps(v)}")
    lines += ["[sync]", f'server_url = "{env.h.url}"', "poll_bundle_s = 3600"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in sync.items()]
    lines += ["[log]", 'level = "INFO"', 'format = "logfmt"']
    path.write_text("\n".join(lines) + "\n")
    return path


def spawn(config: Path, **env: str) -> subprocess.Popen[str]:
    e = {**os.environ, "PYTHONPATH": str(REPO), **env}
    if "NOTIFY_SOCKET" not in env:
        e.pop("NOTIFY_SOCKET", None)
    exe = Path(sys.executable).with_name("checkpoint")
    proc = subprocess.Popen([str(exe), "sync", "run", "--config", str(config)],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    _spawned.append(proc)
    return proc


_spawned: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_agents() -> Iterator[None]:
    """A failed assertion must not leave an agent running (it would upload into the next test)."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(pred: Any, timeout_s: float = 60.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def live(db_url: str, tmp_path: Path) -> Iterator[E2E]:  # noqa: F811
    h = ServerHarness(db_url, tmp_path, clock=RealClock())  # type: ignore[arg-type]
    env = E2E(h, tmp_path)
    yield env
    env.close()
    h.close()


@pytest.fixture
def live_sqlite(tmp_path: Path) -> Iterator[E2E]:
    """For tests whose subject is the gate side only: the server on a SQLite file."""
    h = ServerHarness(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, clock=RealClock())  # type: ignore[arg-type]
    env = E2E(h, tmp_path)
    yield env
    env.close()
    h.close()


POINTS = ["agent.before_post", "agent.after_post", "agent.after_response_before_ack", "agent.after_ack"]


def test_kill_9_at_every_crash_point_then_resume(live: E2E, tmp_path: Path):
    config = write_config(live, tmp_path / "gate.toml")
    fill(live.store, live.clock, 2400)
    kills = 0
    for point in POINTS:
        before = live.device().acked_seq
        proc = spawn(config, CHECKPOINT_CRASHPOINTS=f"{point}:2")
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, out[-3000:]
        kills += 1
        gate_ack = live.store.outbox().acked_seq
        server_ack = live.device().acked_seq
        assert gate_ack <= server_ack          # G5: the gate never runs ahead of the server
        assert server_ack >= before            # G3: never decreases
        fill(live.store, live.clock, 100, start=10_000 + kills * 100)
    proc = spawn(config)
    try:
        assert wait_for(lambda: live.device().acked_seq == live.store.head().last_seq
                        and live.store.outbox().acked_seq == live.store.head().last_seq, 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert live.server_rows() == live.local_rows()      # G1, G2: all there, once, same hashes
    n = live.h.rows("SELECT count(*) AS n FROM events WHERE device_id = :d", d=DEVICE)[0].n
    assert n == live.store.head().last_seq


def test_kill_9_mid_prune_leaves_a_whole_chain(tmp_path: Path):
    """Retention is gate-side only: no server needed (the agent starts fine without one)."""
    from edge.store.outbox import Outbox
    from edge.store.state import StateDB
    from tests.agent.conftest import make_gate

    gate = make_gate(tmp_path, server_url=f"http://127.0.0.1:{_closed_port()}")
    with StateDB(gate.data_dir) as state, gate.writer() as store, Outbox(gate.data_dir) as ob:
        clock = gate.clock(state)
        fill(store, clock, 6_000, batch=1000)
        head = store.head()
        # acknowledged long ago (a signed server time older than retain_acked_days)
        ob.set_acked(head.last_seq, head.head_hash, "2026-01-01T00:00:00.000Z", wall="2026-01-01T00:00:00.000Z")
        # a signed server time was verified in this boot: the clock is synced, so retention may run (§1.7)
        from edge.clock import boot_id, boottime_ms
        from sync.timefmt import utc_now_ms

        state.update_row("clock", lambda old: {"confirmed_ms": utc_now_ms(), "confirmed_source": "time",
                                               "confirmed_boot": boot_id(), "confirmed_boottime_ms": boottime_ms()})
    config = tmp_path / "gate.toml"
    config.write_text(f'[gate]\ndevice_id = "{gate.identity.device_id}"\ndata_dir = "{gate.data_dir}"\n'
                      f'[store]\nreserve_mb = 0\n[sync]\nserver_url = "{gate.cfg.sync.server_url}"\n'
                      f'poll_bundle_s = 3600\n')
    proc = spawn(config, CHECKPOINT_CRASHPOINTS="agent.mid_prune:2")   # chunks of 5 000: dies in the second
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    with gate.writer() as store:
        assert store.outbox().pruned_through == 5_000
        assert store.verify_chain().ok
    proc = spawn(config)
    try:
        def pruned() -> int:
            with Outbox(gate.data_dir) as ob:
                return ob.state().pruned_through

        assert wait_for(lambda: pruned() >= 6_000, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    with gate.writer() as store:
        assert store.verify_chain().ok


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ready_and_watchdog_pings_then_sigterm(live_sqlite: E2E, tmp_path: Path):
    live = live_sqlite
    config = write_config(live, tmp_path / "gate.toml")
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    proc = spawn(config, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="2000000")
    got: list[str] = []
    try:
        while got.count("WATCHDOG=1") < 3:
            msg = sock.recv(512).decode()
            # timedatectl (the clock's NTP probe) inherits NOTIFY_SOCKET and reports its own
            # ERRNO= where no systemd runs; systemd ignores a child's messages (NotifyAccess=main)
            if not msg.startswith("ERRNO="):
                got.append(msg)
        assert got[0] == "READY=1"
        assert any(m.startswith("STATUS=upload=") for m in got)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        sock.settimeout(2)
        rest = []
        try:
            while True:
                rest.append(sock.recv(512).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0, out[-2000:]


def test_cli_status_enroll_again_and_drain(live_sqlite: E2E, tmp_path: Path):
    live = live_sqlite
    config = write_config(live, tmp_path / "gate.toml")
    fill(live.store, live.clock, 700)
    runner = CliRunner()
    r = runner.invoke(cli, ["sync", "status", "--config", str(config), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["device_id"] == DEVICE and doc["upload"]["backlog"] == 701 and doc["agent_running"] is False
    r = runner.invoke(cli, ["sync", "enroll", "--config", str(config), "--server", live.h.url, "--code",
                            "AAAA-BBBB-CCCC"])
    assert r.exit_code == 0 and "already enrolled" in r.output and live.enrolled.keyid in r.output
    r = runner.invoke(cli, ["sync", "drain", "--config", str(config), "--timeout", "60"])
    assert r.exit_code == 0, r.output
    assert "drained" in r.output
    assert live.device().acked_seq == live.store.head().last_seq
    r = runner.invoke(cli, ["sync", "status", "--config", str(config)])
    assert r.exit_code == 0 and "backlog 0" in r.output


def test_cli_enroll_with_a_real_code(db_url: str, tmp_path: Path):  # noqa: F811
    h = ServerHarness(db_url, tmp_path, clock=RealClock())  # type: ignore[arg-type]
    try:
        code = h.add_device("gate-fc-0099")
        cfg = tmp_path / "g.toml"
        cfg.write_text(f'[gate]\ndevice_id = "gate-fc-0099"\ndata_dir = "{tmp_path / "gd"}"\n')
        runner = CliRunner()
        r = runner.invoke(cli, ["sync", "enroll", "--config", str(cfg), "--server", h.url, "--code", code])
        assert r.exit_code == 0, r.output
        keyid = r.output.strip().splitlines()[-1].split()[-1]
        row = h.rows("SELECT keyid, status FROM devices WHERE device_id = 'gate-fc-0099'")[0]
        assert row.keyid == keyid and row.status == "active"
        # a used code from another key is refused with one line and exit 1
        other = tmp_path / "h.toml"
        other.write_text(f'[gate]\ndevice_id = "gate-fc-0099"\ndata_dir = "{tmp_path / "gd2"}"\n')
        from edge.cli import main

        assert main(["sync", "enroll", "--config", str(other), "--server", h.url, "--code", code]) == 1
        assert main(["sync", "enroll", "--config", str(other), "--server", "http://10.9.9.9:1",
                     "--code", code]) == 78
    finally:
        h.close()


def test_run_without_enrolment_waits_and_stops_on_sigterm(tmp_path: Path):
    cfg = tmp_path / "g.toml"
    (tmp_path / "gd").mkdir()
    cfg.write_text(f'[gate]\ndevice_id = "gate-fc-0098"\ndata_dir = "{tmp_path / "gd"}"\n')
    proc = spawn(cfg)
    assert proc.stdout is not None
    line = proc.stdout.readline()          # the signal handler is installed before this line
    assert "not enrolled" in line, line
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
