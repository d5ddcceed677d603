"""The unit files pass `systemd-analyze verify` silently and keep their exposure scores (hardware.md §4.5)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def check(units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts" / "check-systemd")], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CHECKPOINT_UNITS_DIR": str(units)},
                          timeout=120)


def test_shipped_units_are_clean() -> None:
    r = check(REPO / "systemd")
    assert r.returncode == 0, r.stderr
    assert "exposure checkpoint-server.service: 1.1" in r.stderr


def test_a_typo_in_a_unit_fails_the_check(tmp_path: Path) -> None:
    units = tmp_path / "units"
    shutil.copytree(REPO / "systemd", units)
    gate = units / "checkpoint-gate.service"
    gate.write_text(gate.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nProtectSytem=strict"))
    r = check(units)
    assert r.returncode == 1 and "ProtectSytem" in r.stderr


def test_weakened_hardening_fails_the_check(tmp_path: Path) -> None:
    units = tmp_path / "units"
    shutil.copytree(REPO / "systemd", units)
    srv = units / "checkpoint-server.service"
    srv.write_text("\n".join(line for line in srv.read_text().splitlines()
                             if not line.startswith(("Protect", "Private", "SystemCall", "Restrict"))) + "\n")
    r = check(units)
    assert r.returncode == 1 and "exposure" in r.stderr
