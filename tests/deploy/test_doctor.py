"""``checkpoint doctor`` on the demo's simulated parts (all ok), with a missing serial port (a clear
failure, exit 1), as JSON, on a pretend Raspberry Pi, and with broken config files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_gate_config
from edge.doctor import DoctorEnv, Principal, can, run_checks

CHECKPOINT = str(Path(sys.executable).parent / "checkpoint")
DEVICE = "gate-doctor-01"
ALL = ["config", "gate", "camera", "thermometer", "pins", "zbar", "data_dir", "storage", "clock", "bundle",
       "enrolment", "server"]


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for a dumped GateConfig: tables of scalars and lists, no nulls."""
    scalars = [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in doc.items()
               if v is not None and not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in doc.items():
        if isinstance(v, dict):
            out.append(to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def write_config(path: Path, cfg: Any) -> Path:
    path.write_text(to_toml(cfg.model_dump(mode="json", exclude_defaults=True)), encoding="utf-8")
    assert load_gate_config(path) == cfg
    return path


@pytest.fixture(scope="module")
def demo_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Any]]:
    """A gate set up the way ``checkpoint demo`` sets one up: demo fleet, local server, enrolled,
    bundle fetched by the sync agent (which also anchors the clock), picture folder, pty
    thermometer simulator, mock pins. The agent is stopped before the doctor looks."""
    from edge.demo import DemoWorld, Upstream, blank_image, gate_config, wait_for_bundle, write_image

    base = tmp_path_factory.mktemp("doctor")
    world = DemoWorld(base / "world", log2_n=10)
    up = Upstream(world, base)
    try:
        up.publish(world)
        data = base / DEVICE
        cam = data / "camera"
        cam.mkdir(parents=True)
        write_image(cam, "0000-blank.png", blank_image())
        cfg = gate_config(data, DEVICE, "person", cam, "127.0.0.1:0", thermometer=True, hold_s=0.6,
                          server_url=up.url)
        up.enroll(cfg, {"venue_id": "V0012-01", "zone": "production", "door": "south-1"})
        up.start_agent(cfg)
        assert wait_for_bundle(data, 60, threading.Event()), "the agent did not fetch the demo bundle"
        up.stop.set()
        for agent, thread in up.agents:
            thread.join(30)
            agent.close()
        up.agents.clear()
        toml = write_config(base / "gate.toml", cfg)
        yield toml, data, up
    finally:
        up.close()


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.pop("CHECKPOINT_CONFIG", None)
    e.pop("COLUMNS", None)  # piped output as in a ticket (160 wide); pytest-xdist workers set 80
    e.update(env or {})
    return subprocess.run([CHECKPOINT, "doctor", *args], capture_output=True, text=True, timeout=120, env=e)


def snapshot(d: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(d))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_demo_parts_all_ok_and_nothing_written(demo_gate):
    toml, data, _ = demo_gate
    before = snapshot(data)
    r = doctor("--config", str(toml), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["config"] == str(toml)
    got = {c["name"]: c for c in doc["checks"]}
    assert list(got) == ALL                                       # services: only where systemd runs
    bad = {n: (c["status"], c["detail"]) for n, c in got.items() if c["status"] != "ok"}
    assert bad == {}
    assert doc["summary"] == {"ok": len(ALL), "warn": 0, "fail": 0}
    assert "simulator" in got["thermometer"]["detail"] and "°C" in got["thermometer"]["detail"]
    assert "folder:" in got["camera"]["detail"] and "640x480" in got["camera"]["detail"]
    assert got["pins"]["detail"].startswith("mock pins ([gpio] pin_factory")
    assert got["clock"]["detail"].startswith("synced")
    assert got["bundle"]["detail"].startswith("version 1 fresh")
    assert got["enrolment"]["detail"].startswith(DEVICE) and "venue V0012-01/production/south-1" in \
        got["enrolment"]["detail"]
    assert "answers" in got["server"]["detail"]
    assert snapshot(data) == before                               # read-only: no -wal/-shm, no clock row


def test_table_output(demo_gate):
    toml, _, _ = demo_gate
    r = doctor("--config", str(toml))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed / 全部正常" in r.stdout
    for label in ("camera 摄像头", "thermometer 测温仪", "GPIO pins 引脚", "rule bundle 规则包", "server 服务器"):
        assert label in r.stdout
    assert "FAIL" not in r.stdout and r.stderr == ""


def test_missing_serial_port_is_a_clear_failure(demo_gate, tmp_path):
    toml, _, _ = demo_gate
    port = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0-missing"
    cfg = load_gate_config(toml)
    bad = write_config(tmp_path / "gate.toml", cfg.model_copy(
        update={"thermometer": cfg.thermometer.model_copy(update={"port": port})}))
    r = doctor("--config", str(bad), "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    got = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is False and doc["summary"]["fail"] == 1
    assert got["thermometer"]["status"] == "fail"
    assert got["thermometer"]["detail"] == f"serial port {port} not found 串口不存在"
    assert "docs/THERMOMETER.md" in got["thermometer"]["hint"]
    assert all(c["status"] == "ok" for n, c in got.items() if n != "thermometer")
    text = doctor("--config", str(bad))
    assert text.returncode == 1
    assert "FAIL 故障" in text.stdout and port in text.stdout and "1 failed, 0 warning(s)" in text.stdout
    assert "Traceback" not in text.stdout + text.stderr


def test_unreachable_server_fails_and_no_server_only_warns(demo_gate, tmp_path):
    toml, _, _ = demo_gate
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cfg = load_gate_config(toml)
    down = cfg.model_copy(update={"sync": cfg.sync.model_copy(update={"server_url": f"http://127.0.0.1:{closed}"})})
    got = {c.name: c for c in run_checks(down, toml, DoctorEnv(server_timeout_s=2))}
    assert got["server"].status == "fail" and f"127.0.0.1:{closed}" in got["server"].detail
    # Not enrolled, no bundle, no server: warnings, not failures (a gate being set up).
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    blank = cfg.model_copy(update={
        "gate": cfg.gate.model_copy(update={"data_dir": fresh}),
        "sync": cfg.sync.model_copy(update={"server_url": None}),
        "thermometer": cfg.thermometer.model_copy(update={"enabled": False}),
    })
    got = {c.name: c for c in run_checks(blank, toml, DoctorEnv())}
    assert {n: c.status for n, c in got.items() if c.status != "ok"} == {
        "clock": "warn", "bundle": "warn", "enrolment": "warn", "server": "warn"}
    assert "not enrolled yet" in got["enrolment"].detail and "sync enroll" in got["enrolment"].hint
    assert list(fresh.iterdir()) == []                            # the doctor made no state.db


def test_on_a_raspberry_pi_simulated_parts_fail(demo_gate, tmp_path):
    toml, _, _ = demo_gate
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\x00")
    cfg = load_gate_config(toml)
    got = {c.name: c for c in run_checks(cfg, toml, DoctorEnv(model_file=model))}
    assert got["pins"].status == "fail" and "never move" in got["pins"].detail
    assert got["thermometer"].status == "fail" and "simulated" in got["thermometer"].detail
    assert got["camera"].status == "fail" and "not a camera" in got["camera"].detail
    # $GPIOZERO_PIN_FACTORY=mock with [gpio] pin_factory = "auto" on a Pi: still a failure.
    auto = cfg.model_copy(update={"gpio": cfg.gpio.model_copy(update={"pin_factory": "auto"})})
    got = {c.name: c for c in run_checks(auto, toml, DoctorEnv(model_file=model,
                                                                env={"GPIOZERO_PIN_FACTORY": "mock"}))}
    assert got["pins"].status == "fail" and "$GPIOZERO_PIN_FACTORY" in got["pins"].detail
    # Not a Pi and nothing chose mock: mock pins with a warning.
    got = {c.name: c for c in run_checks(auto, toml, DoctorEnv(env={}))}
    assert got["pins"].status == "warn" and "no Raspberry Pi found" in got["pins"].detail


def test_running_gate_report_is_used_not_the_devices(tmp_path):
    from edge.clock import TrustedClock, boot_id, boottime_ms
    from edge.config import GateConfig
    from edge.store.state import StateDB
    from sync.agent.gate_status import CameraStatus, GateStatus, ThermometerStatus, write_gate_status

    data = tmp_path / "data"
    data.mkdir()
    with StateDB(data) as st:
        TrustedClock(st)
        write_gate_status(st, GateStatus(
            pid=os.getpid(), boot=boot_id(), boottime_ms=boottime_ms(), software="checkpoint test",
            thermometer=ThermometerStatus(status="fault", protocol="modbus-rtu", last_error="no reply from address 1"),
            camera=CameraStatus(status="ok", fps=29.5), storage_level="ok"))
    # The configured port does not exist: were it opened, that would be the failure reported.
    cfg = GateConfig.model_validate({"gate": {"data_dir": str(data)},
                                     "thermometer": {"port": "/dev/ttyUSB-not-here", "protocol": "modbus-rtu"},
                                     "camera": {"source": "device", "device": "/dev/video-not-here"},
                                     "gpio": {"pin_factory": "mock"}})
    got = {c.name: c for c in run_checks(cfg, None, DoctorEnv())}
    assert got["gate"].detail.startswith(f"running (pid {os.getpid()}")
    assert got["camera"].status == "ok" and "29.5 fps" in got["camera"].detail
    assert got["thermometer"].status == "fail" and "no reply from address 1" in got["thermometer"].detail


def test_device_key_readable_by_others_fails(demo_gate):
    toml, data, _ = demo_gate
    key = data / "identity" / "device.key"
    mode = key.stat().st_mode & 0o777
    key.chmod(0o644)
    try:
        got = {c.name: c for c in run_checks(load_gate_config(toml), toml, DoctorEnv())}
    finally:
        key.chmod(mode)
    assert got["enrolment"].status == "fail" and "readable by others" in got["enrolment"].detail


@pytest.mark.parametrize("content", [
    b"\x00\xff garbage \xfe",                                          # not UTF-8
    b"[gate]\ndata_dir = \"/var/lib/checkp",                           # truncated
    b"[gate]\nbogus_key = 1\n",                                        # unknown key
    b"# " + b"x" * (8 << 20) + b"\n[camera\n",                         # oversize, broken at the end
])
def test_broken_config_is_one_failed_row(tmp_path, content):
    from click.testing import CliRunner

    from edge.cli import cli

    bad = tmp_path / "gate.toml"
    bad.write_bytes(content)
    r = CliRunner().invoke(cli, ["doctor", "--config", str(bad), "--json"], env={"CHECKPOINT_CONFIG": None})
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert [(c["name"], c["status"]) for c in doc["checks"]] == [("config", "fail")]
    assert str(bad) in doc["checks"][0]["detail"] and len(doc["checks"][0]["detail"]) < 400
    r = CliRunner().invoke(cli, ["doctor", "--config", str(tmp_path / "absent.toml")], env={"COLUMNS": None})
    assert r.exit_code == 1 and "config file not found" in r.stdout


def test_permission_rule():
    st = os.stat_result((0o100640, 0, 0, 1, 0, 1000, 0, 0, 0, 0))
    gate = Principal("checkpoint-gate", 998, frozenset({1000}))
    other = Principal("nobody", 65534, frozenset({65534}))
    assert can(gate, st, "r") and not can(gate, st, "w") and not can(other, st, "r")
    key = os.stat_result((0o100600, 0, 0, 1, 997, 1000, 0, 0, 0, 0))
    assert not can(gate, key, "r") and can(Principal("checkpoint-sync", 997, frozenset({1000})), key, "rw")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to other users")
def test_data_dir_ownership_as_the_services_see_it(tmp_path, monkeypatch):
    """Files made by hand as root (umask 022) lock the gate out of its own store: a failure."""
    import edge.doctor as d
    from edge.config import GateConfig

    gid = 4242
    people = {"checkpoint-gate": Principal("checkpoint-gate", 998, frozenset({gid})),
              "checkpoint-sync": Principal("checkpoint-sync", 997, frozenset({gid}))}
    monkeypatch.setattr(d, "principal", lambda user, groups=(): people.get(user))
    monkeypatch.setattr(d, "group_gid", lambda name: gid)
    data = tmp_path / "data"
    (data / "identity").mkdir(parents=True)
    cfg = GateConfig.model_validate({"gate": {"data_dir": str(data)}})

    def row() -> d.Check:
        return d.check_data_dir(d.Facts(cfg, None, DoctorEnv()))

    assert row().status == "fail" and "want drwxrws--- root:checkpoint" in row().detail
    os.chown(data, 0, gid)
    data.chmod(0o2770)
    os.chown(data / "identity", 997, gid)
    (data / "identity").chmod(0o750)
    for name, mode, uid in (("events.db", 0o660, 998), ("identity/identity.json", 0o640, 997),
                            ("identity/device.key", 0o600, 997)):
        (data / name).write_bytes(b"x")
        os.chown(data / name, uid, gid)
        (data / name).chmod(mode)
    assert row().status == "ok", row()
    (data / "state.db").write_bytes(b"x")                      # made by root with umask 022
    os.chown(data / "state.db", 0, gid)
    (data / "state.db").chmod(0o644)
    r = row()
    assert r.status == "fail" and "state.db -rw-r--r--" in r.detail and "chmod -R g+rwX" in r.hint
    (data / "state.db").chmod(0o660)
    (data / "identity/identity.json").chmod(0o600)              # the gate needs pid_key from it
    assert row().status == "fail" and "identity.json" in row().detail
