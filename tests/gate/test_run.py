"""``checkpoint gate run`` and ``safe-state`` as processes: signals, exit codes, systemd notifications."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.demo import install_bundle, qr_image
from edge.store.schema import connect

CHECKPOINT = str(Path(sys.executable).parent / "checkpoint")
pytestmark = pytest.mark.slow       # each test starts a gate process (imports: seconds on a Pi)


def write_config(tmp: Path, data: Path, *, listen: str = "127.0.0.1:0", extra: str = "") -> Path:
    cam = data / "camera"
    cam.mkdir(parents=True, exist_ok=True)
    toml = tmp / "gate.toml"
    toml.write_text(
        f'[gate]\ndevice_id = "gate-run-01"\ndata_dir = "{data}"\n'
        f'[camera]\nsource = "folder"\npath = "{cam}"\nimage_hold_s = 0.5\n'
        '[thermometer]\nenabled = false\n[decode]\ndeep_interval_s = 0\n'
        f'[gpio]\npin_factory = "mock"\n[console]\nlisten = "{listen}"\n[log]\nlevel = "INFO"\nformat = "logfmt"\n'
        + extra
    )
    return toml


def events(data: Path, kind: str | None = None) -> list[dict]:
    conn = connect(data / "events.db", "reader")
    try:
        rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    out = [json.loads(r[0]) for r in rows]
    return [e for e in out if kind is None or e["kind"] == kind]


def start(toml: Path, env: dict[str, str] | None = None, *args: str) -> subprocess.Popen[str]:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([CHECKPOINT, "gate", "run", "--config", str(toml), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e)


def wait_for(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.fixture
def gate_dir(tmp_path: Path, bundle_dir: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    install_bundle(bundle_dir, data, "gate-run-01")
    return data


def test_sigterm_stops_cleanly_and_prints_decisions(tmp_path, gate_dir, world):
    import cv2

    toml = write_config(tmp_path, gate_dir)
    cv2.imwrite(str(gate_dir / "camera" / "0001.png"), qr_image("HELLO-RUN-1"))
    proc = start(toml, None, "--print-decisions")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "人工核验 / CHECK BY HAND" in line and "Unknown code" in line
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    stop = events(gate_dir, "device_stop")[-1]["payload"]
    assert stop["reason"] in ("signal", "shutdown") and stop["uptime_s"] >= 0
    assert not (gate_dir / "edge.running").exists()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "HELLO-RUN-1" not in stderr                         # never log a raw code


def test_loop_fault_exits_non_zero(tmp_path, gate_dir):
    toml = write_config(tmp_path, gate_dir)
    proc = start(toml, {"CHECKPOINT_TEST_FAULT": "raise-loop-after:2", "WATCHDOG_USEC": "400000",
                        "CHECKPOINT_TESTING": "1"})
    code = proc.wait(30)
    assert code == 70
    assert "decision loop" in (proc.stderr.read() if proc.stderr else "")
    assert (gate_dir / "edge.running").exists()                 # the next start reports unclean


def run_in_process(capsys, *args: str) -> tuple[int, str]:
    """The CLI's own exit-code mapping, without a process start (these fail before the loop runs)."""
    from edge.cli import main

    code = main(["gate", "run", *args])
    return code, capsys.readouterr().err


def test_missing_data_dir_is_one_line_exit_1(tmp_path, capsys):
    toml = write_config(tmp_path, tmp_path / "nope" / "data")
    (tmp_path / "nope" / "data" / "camera").rmdir()
    (tmp_path / "nope" / "data").rmdir()
    code, err = run_in_process(capsys, "--config", str(toml))
    assert code == 1
    assert "does not exist" in err and "Traceback" not in err


def test_lan_console_without_tls_is_a_config_error(tmp_path, gate_dir, capsys):
    toml = write_config(tmp_path, gate_dir, listen="0.0.0.0:0")
    code, err = run_in_process(capsys, "--config", str(toml))
    assert code == 78 and "tls_cert_file" in err


def test_ready_and_watchdog_pings_then_hang_stops_them(tmp_path, gate_dir):
    sock_path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(20)
    toml = write_config(tmp_path, gate_dir)
    proc = start(toml, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000",
                        "CHECKPOINT_TEST_FAULT": "hang-loop-after:4", "CHECKPOINT_TESTING": "1"})
    try:
        got: list[str] = []
        while got.count("WATCHDOG=1") < 4:
            got.append(s.recv(4096).decode())
        assert "READY=1" in got and got.index("READY=1") < got.index("WATCHDOG=1")
        assert any(m.startswith("STATUS=camera=") and "backlog=" in m for m in got)
        s.settimeout(2.5)
        late = []
        with pytest.raises(TimeoutError):
            while True:
                late.append(s.recv(4096).decode())
                if "WATCHDOG=1" in late:
                    break
        assert proc.poll() is None                                 # hung, still alive
    finally:
        proc.kill()
        proc.wait(10)
        s.close()


def test_safe_state_command(tmp_path, gate_dir):
    toml = write_config(tmp_path, gate_dir)
    out = subprocess.run([CHECKPOINT, "gate", "safe-state", "--config", str(toml)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "relay de-energised" in out.stdout


@pytest.mark.parametrize("content", ["[gate\nlane = ", "[gate]\nlane = \"diagonal\"\n", "x" * 100_000])
def test_garbage_config_is_exit_78(tmp_path, content, capsys):
    toml = tmp_path / "gate.toml"
    toml.write_text(content)
    code, err = run_in_process(capsys, "--config", str(toml))
    assert code == 78
    assert "configuration error" in err and "Traceback" not in err
