"""The optional Arduino sketch, compiled for the host against a simulated MLX90614.

Its output goes through the gate's own ASCII parser: values within the sensor's
0.02 K resolution, and a failed read (bad PEC, error flag, no ACK) is a refused
line, never a number. Skips when no C++ compiler is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_bridge.protocols.ascii_lines import AsciiLineParser

HERE = Path(__file__).resolve().parent
SKETCH = HERE.parents[1] / "firmware_bridge" / "firmware" / "mlx90614_ascii" / "mlx90614_ascii.ino"


@pytest.fixture(scope="module", params=["passive", "request"])
def sketch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the sketch for the host")
    out = tmp_path_factory.mktemp("fw") / "sketch"
    flags = ["-DCHECKPOINT_REQUEST_MODE=1"] if request.param == "request" else []
    subprocess.run(
        [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", *flags,
         "-I", str(HERE / "firmware_host"), "-include", "Arduino.h", "-x", "c++", str(SKETCH),
         "-x", "none", str(HERE / "firmware_host" / "main.cpp"), "-o", str(out)],
        check=True, capture_output=True, timeout=120,
    )
    return out, request.param


def test_sketch_output_parses_with_the_gate_parser(sketch: tuple[Path, str]) -> None:
    binary, mode = sketch
    run = subprocess.run([binary, mode, "25.0,34.2", "4.5,31.2", "25.0,35.5", "-10.0,-5.5", "25.0,36.5,pec",
                          "25.0,36.5,flag", "25.0,36.5,nack", "22.0,34.9"],
                         capture_output=True, timeout=30, check=True)
    lines = run.stdout.split(b"\r\n")
    assert lines[0] == b"MLX90614 ready" and lines[-1] == b""
    line = re.compile(rb"Ambient = (-?\d+\.\d\d|nan)\*C\tObject = (-?\d+\.\d\d|nan)\*C")
    assert all(line.fullmatch(x) for x in lines[1:-1]), lines  # the exact format of hardware.md §1.11
    parser = AsciiLineParser()
    got = parser.feed(run.stdout)
    expected = [(34.2, 25.0), (31.2, 4.5), (35.5, 25.0), (-5.5, -10.0), (34.9, 22.0)]
    assert len(got) == len(expected)
    for sample, (obj, amb) in zip(got, expected, strict=True):
        assert abs(sample.object_c - obj) <= 0.02 and abs(sample.ambient_c - amb) <= 0.02
    s = parser.stats
    assert (s.readings, s.bad, s.ignored, s.overflow) == (5, 3, 1, 0)  # 3 failed reads refused, banner ignored
