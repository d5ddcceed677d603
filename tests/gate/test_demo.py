"""``checkpoint demo`` from the command line: it exits 0 by itself and prints the mix of decisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKPOINT = str(Path(sys.executable).parent / "checkpoint")


@pytest.mark.slow
def test_demo_runs_and_prints_the_mix(tmp_path: Path):
    # --once ends after the last scene; --duration is the bound (a loaded CI machine is slower
    # than the README's 20 s run).
    out = subprocess.run([CHECKPOINT, "demo", "--once", "--duration", "60", "--port", "0", "--data-dir",
                          str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "console person" in text and "http://127.0.0.1:" in text and "upstream server" in text
    assert "venue bound" in text
    assert "张*三 36.40°C 准许通行 / ADMIT" in text                                  # green staff
    assert "人工核验 / CHECK BY HAND: 无法识别的二维码" in text                       # garbage
    assert "王*" in text and "Close or secondary contact" in text                    # red contact
    assert "请再测一次 / Please measure again" in text and "37.90°C 禁止通行 / DENY" in text   # fever
    assert "temp_alert (fever)" in text
    assert "豫A·D1234 准许通行 / ADMIT" in text and "goods code: recorded" in text     # truck + material
    assert "李* 36.90°C 准许通行 / ADMIT" in text                                    # yellow, whitelisted
    assert "Test overdue" in text and "Not pre-registered" in text                  # expired test, visitor
    assert "upstream:" in text and "events stored" in text
    assert "checkpoint demo: stopped" in text
    assert "Traceback" not in out.stderr
    for line in text.splitlines():
        assert "CK1:" not in line                                                  # no raw code on screen
    assert (tmp_path / "d" / "gate-demo-person" / "events.db").exists()


def test_demo_help():
    out = subprocess.run([CHECKPOINT, "demo", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--duration" in out.stdout and "--offline" in out.stdout
    bad = subprocess.run([CHECKPOINT, "demo", "--duration", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
