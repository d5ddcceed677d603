"""``checkpoint thermometer`` and ``checkpoint thermometer-sim`` (hardware.md §1.11, §1.12)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from firmware_bridge import ThermometerSim, open_thermometer
from tests.thermometer.helpers import PERIOD_S, fast, readings

pytestmark = pytest.mark.timeout(60)

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_lines_against_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    with ThermometerSim("modbus-rtu", period_s=PERIOD_S) as sim:
        sim.present(35.5, 25.0)
        rc = main(["thermometer", "--port", sim.port, "--protocol", "modbus-rtu", "--count", "3", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    for d in lines:
        assert list(d) == ["at", "object_c", "ambient_c", "body_c"] and TIME_RE.match(d["at"])
        assert (d["object_c"], d["ambient_c"], d["body_c"]) == (35.5, 25.0, 37.9)


def test_human_lines_and_baud(capsys: pytest.CaptureFixture[str]) -> None:
    with ThermometerSim("gy-mcu90614", period_s=PERIOD_S) as sim:
        sim.present(34.2, 25.0)
        rc = main(["thermometer", "--port", sim.port, "--protocol", "gy-mcu90614", "--baud", "115200",
                   "--count", "2"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 2
    assert "object 34.20 °C" in out[0] and "ambient 25.00 °C" in out[0] and "body 36.4 °C" in out[0]


def test_sim_port_keyword_starts_an_in_process_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["thermometer", "--port", "sim", "--protocol", "gy-mcu90614", "--count", "2", "--json"])
    assert rc == 0 and len(capsys.readouterr().out.splitlines()) == 2


def test_no_reading_names_port_state_and_counters(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"
    rc = main(["thermometer", "--port", str(missing), "--protocol", "gy-mcu90614", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.startswith(f"no reading from {missing} in 0.5 s: fault, 0 bad frames; last error: port missing")
    assert err.count("\n") == 1


def test_only_bad_frames_is_stale_with_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    with ThermometerSim("gy-mcu90614", period_s=PERIOD_S, faults="bad_checksum=1.0") as sim:
        sim.present(35.5)
        rc = main(["thermometer", "--port", sim.port, "--protocol", "gy-mcu90614", "--timeout", "0.6"])
    err = capsys.readouterr().err
    m = re.match(rf"no reading from {re.escape(sim.port)} in 0.6 s: stale, (\d+) bad frames", err)
    assert rc == 1 and m and int(m.group(1)) > 0


def test_busy_port_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with ThermometerSim("gy-mcu90614", period_s=PERIOD_S) as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "gy-mcu90614", **fast()) as gate:
            readings(gate, 1)
            rc = main(["thermometer", "--port", sim.port, "--protocol", "gy-mcu90614", "--timeout", "0.4"])
    err = capsys.readouterr().err
    assert rc == 1 and ": fault, " in err and "last error: port busy" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["thermometer"],
        ["thermometer", "--port", "/dev/null"],
        ["thermometer", "--port", "/dev/null", "--protocol", "gy-mcu90615"],
        ["thermometer", "--port", "/dev/null", "--protocol", "ascii", "--count", "0"],
        ["thermometer", "--port", "/dev/null", "--protocol", "ascii", "--timeout", "-1"],
        ["thermometer", "--port", "/dev/null", "--protocol", "ascii", "--baud", "12"],
        ["thermometer", "--port", "/dev/null", "--protocol", "ascii", "--baud", "x" * 10_000],
        ["thermometer-sim"],
        ["thermometer-sim", "--protocol", "ascii", "--faults", "lightning=1"],
        ["thermometer-sim", "--protocol", "ascii", "--faults", "silence=1"],
        ["thermometer-sim", "--protocol", "ascii", "--people", "99"],
        ["thermometer-sim", "--protocol", "ascii", "--every", "1", "--stay", "2"],
        ["thermometer-sim", "--protocol", "modbus-rtu", "--address", "0"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "Error" in capsys.readouterr().err


def test_oversize_port_path_is_a_clear_failure(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["thermometer", "--port", "/dev/" + "x" * 5000, "--protocol", "ascii", "--timeout", "0.3"])
    assert rc == 1 and "port" in capsys.readouterr().err


def _start_sim(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())", "thermometer-sim",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def test_sim_cli_prints_one_json_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, info = _start_sim(tmp_path, "--protocol", "modbus-rtu", "--people", "35.5", "--every", "1",
                            "--stay", "0.5", "--seed", "3")
    try:
        link = tmp_path / "checkpoint" / "thermometer-modbus-rtu"  # the $XDG_RUNTIME_DIR default
        assert info == {"port": info["port"], "link": str(link), "protocol": "modbus-rtu"}
        assert info["port"].startswith("/dev/pts/") and os.readlink(link) == info["port"]
        with open_thermometer(str(link), "modbus-rtu", **fast()) as therm:
            assert therm.read(8.0) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    assert rc == 0 and not os.path.lexists(link)
    assert proc.stdout.read() == ""  # exactly one line


def test_sim_cli_duration_and_link_option(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "thermo"
    proc, info = _start_sim(tmp_path, "--protocol", "ascii", "--link", str(link), "--duration", "0.5",
                            "--format", "bare", "--faults", "garbage=0.1,reset=0.1")
    assert proc.wait(timeout=10) == 0 and info["link"] == str(link) and not os.path.lexists(link)


def test_sim_cli_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())", "thermometer-sim",
         "--protocol", "ascii", "--link", str(victim), "--duration", "0.1"],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2 and "not a symlink" in proc.stderr and victim.read_text() == "keep me"
