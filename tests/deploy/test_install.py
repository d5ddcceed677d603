"""``checkpoint install``: the dry run, a real install into a directory tree checked file by file,
idempotence, the site's edits kept, and bad input (hardware.md §4)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import cli, main
from edge.config import load_gate_config
from edge.install import PG_URL, InstallError, render_gate_toml, set_toml_value

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = str(Path(sys.executable).parent / "checkpoint")
GATE_UNITS = ("checkpoint-clock-floor.service", "checkpoint-gate.service", "checkpoint-sync.service")
CAMERA = "/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920-video-index0"
PORT = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"
ROOT = os.geteuid() == 0
SYSUSERS = shutil.which("systemd-sysusers") is not None


def install(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["install", *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def os_tree(path: Path) -> Path:
    """A directory that looks like an OS image: passwd and group with Debian's static groups."""
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\nvideo:x:44:\n")
    return path


def table(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


def snapshot(d: Path) -> dict[str, tuple[int, int, int, int, str]]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(d))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                      os.readlink(p) if p.is_symlink() else "")
    return out


def test_dry_run_on_this_host_changes_nothing():
    watched = [Path(p) for p in ("/etc/checkpoint", "/etc/sysusers.d/checkpoint.conf", "/var/lib/checkpoint",
                                 "/opt/checkpoint", "/etc/systemd/journald.conf.d/checkpoint.conf",
                                 *(f"/etc/systemd/system/{u}" for u in GATE_UNITS))]
    before = {p: p.exists() for p in watched}
    r = subprocess.run([CHECKPOINT, "install", "--role", "gate", "--dry-run"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p: p.exists() for p in watched} == before
    lines = r.stdout.splitlines()
    assert lines[0].startswith("checkpoint install --role gate into / (dry run: nothing is changed")
    steps = [line for line in lines if re.match(r"^\d+\. ", line)]
    assert [s.split(".", 1)[1].split(":")[0].strip() for s in steps] == [
        "packages (apt)", "users and groups", "data directory /var/lib/checkpoint", "venv /opt/checkpoint/venv",
        "configuration /etc/checkpoint/gate.toml", "systemd units checkpoint-clock-floor checkpoint-gate "
        "checkpoint-sync", "journald", "hardware watchdog", "running services"]
    actions = [line for line in lines if line.startswith("   ")]
    assert actions and all(a.startswith(("   would ", "   not done here: ")) for a in actions)
    if not before[Path("/etc/checkpoint")]:
        assert "   would write /etc/checkpoint/gate.toml (0640 root:checkpoint) (camera " in r.stdout
    if not before[Path("/opt/checkpoint")]:
        assert "   would run: /opt/checkpoint/venv/bin/python -m pip install --disable-pip-version-check " \
            f"--root-user-action=ignore {REPO}" in r.stdout
        assert "   would run: /opt/checkpoint/venv/bin/python -m compileall -q -j 0 /opt/checkpoint/venv/lib" \
            in r.stdout
    assert lines[-1].endswith("action(s) would be taken") or lines[-1] == "nothing to do: already installed"


def test_dry_run_into_a_tree_creates_nothing(tmp_path):
    tree = tmp_path / "tree"
    code, out = install("--role", "gate", "--root", str(tree), "--dry-run", "--pi")
    assert code == 0, out
    assert not tree.exists()
    for path in ("etc/sysusers.d/checkpoint.conf", "etc/tmpfiles.d/checkpoint.conf", "etc/checkpoint/gate.toml",
                 "etc/systemd/journald.conf.d/checkpoint.conf", "etc/systemd/system.conf.d/checkpoint-watchdog.conf",
                 *(f"etc/systemd/system/{u}" for u in GATE_UNITS)):
        assert f"   would write {tree / path} (" in out
    assert f"   would create directory {tree}/var/lib/checkpoint (2770 root:checkpoint)" in out
    assert f"   would link {tree}/etc/systemd/system/multi-user.target.wants/checkpoint-gate.service -> " \
           "/etc/systemd/system/checkpoint-gate.service" in out
    assert "venv /opt/checkpoint/venv: skipped (--root: a venv is not relocatable" in out
    assert "packages (apt): skipped (--root: install them in the image: apt-get install python3-venv libzbar0 " \
           "fonts-noto-cjk)" in out
    assert "systemctl" not in out and "apt-get update" not in out
    assert out.splitlines()[-1] == "15 action(s) would be taken"


@pytest.mark.skipif(not SYSUSERS, reason="systemd-sysusers not installed")
def test_gate_install_into_a_tree_file_by_file_then_idempotent(tmp_path):
    tree = os_tree(tmp_path / "tree")
    code, out = install("--role", "gate", "--root", str(tree), "--pi", "--camera", CAMERA,
                        "--thermometer-port", PORT)
    assert code == 0, out
    assert "run: systemd-sysusers --root=" in out and out.splitlines()[-1].startswith("done: ")

    def mode(rel: str) -> int:
        return (tree / rel).lstat().st_mode & 0o7777

    # accounts: the project's sysusers file verbatim, the device groups created only where missing
    assert (tree / "etc/sysusers.d/checkpoint.conf").read_bytes() == (REPO / "systemd/checkpoint.sysusers").read_bytes()
    devices = (tree / "etc/sysusers.d/checkpoint-devices.conf").read_text()
    assert [line for line in devices.splitlines() if not line.startswith("#")] == \
        ["g gpio -", "g dialout -", "g video -"]
    groups, users = table(tree / "etc/group"), table(tree / "etc/passwd")
    assert groups["dialout"][2] == "20" and groups["video"][2] == "44"        # kept, not re-created
    assert {"checkpoint", "gpio"} <= set(groups)
    assert {"checkpoint-gate", "checkpoint-sync", "checkpoint"} <= set(users)
    gid = int(groups["checkpoint"][2])
    assert users["checkpoint-gate"][3] == str(gid) and users["checkpoint-gate"][5] == "/var/lib/checkpoint"
    assert mode("etc/sysusers.d/checkpoint.conf") == 0o644

    # the shared data directory (tmpfiles line) and the agent's identity directory
    assert (tree / "etc/tmpfiles.d/checkpoint.conf").read_bytes() == (REPO / "systemd/checkpoint.tmpfiles").read_bytes()
    data, ident = tree / "var/lib/checkpoint", tree / "var/lib/checkpoint/identity"
    assert mode("var/lib/checkpoint/identity") == 0o750
    if ROOT:
        assert mode("var/lib/checkpoint") == 0o2770
        assert (data.stat().st_uid, data.stat().st_gid) == (0, gid)
        assert (ident.stat().st_uid, ident.stat().st_gid) == (int(users["checkpoint-sync"][2]), gid)
    else:
        assert mode("var/lib/checkpoint") & 0o777 == 0o770

    # configuration: root:checkpoint 0750 / 0640, the example rewritten for the install paths
    assert mode("etc/checkpoint") == 0o750 and mode("etc/checkpoint/gate.toml") == 0o640
    if ROOT:
        assert (tree / "etc/checkpoint/gate.toml").stat().st_gid == gid
    cfg = load_gate_config(tree / "etc/checkpoint/gate.toml")
    assert str(cfg.data_dir) == "/var/lib/checkpoint" and cfg.identity_dir == Path("/var/lib/checkpoint/identity")
    assert (cfg.camera.source, cfg.camera.device, cfg.thermometer.port) == ("device", CAMERA, PORT)
    example = load_gate_config(REPO / "config/gate.example.toml").model_dump()
    changed = {"gate": {"data_dir"}, "camera": {"source", "device"}, "thermometer": {"port"}}
    for section, value in cfg.model_dump().items():
        for key, v in value.items():
            if key not in changed.get(section, ()):
                assert v == example[section][key], (section, key)
    text = (tree / "etc/checkpoint/gate.toml").read_text()
    assert text.startswith("# Installed by `checkpoint install --role gate`")
    assert "# beam = 5                     # optional beam-break sensor" in text     # still a real, commented file
    assert 'port = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0" # a serial device' in text

    # units: verbatim, enabled by the links systemctl enable would make
    for unit in GATE_UNITS:
        assert (tree / "etc/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
        assert mode(f"etc/systemd/system/{unit}") == 0o644
    assert not (tree / "etc/systemd/system/checkpoint-server.service").exists()
    for target, unit in (("multi-user", "checkpoint-gate.service"), ("multi-user", "checkpoint-sync.service"),
                         ("sysinit", "checkpoint-clock-floor.service")):
        link = tree / f"etc/systemd/system/{target}.target.wants/{unit}"
        assert os.readlink(link) == f"/etc/systemd/system/{unit}"

    # journald and the hardware watchdog
    journald = tree / "etc/systemd/journald.conf.d/checkpoint.conf"
    assert tomllib_ini(journald) == {"Journal": {"SystemMaxUse": "200M"}}
    assert tomllib_ini(tree / "etc/systemd/system.conf.d/checkpoint-watchdog.conf") == \
        {"Manager": {"RuntimeWatchdogSec": "15s"}}
    assert not (tree / "opt").exists()                                          # no venv in a tree

    # a second run changes nothing and says so, step by step
    before = snapshot(tree)
    code, out = install("--role", "gate", "--root", str(tree), "--pi", "--camera", "0")
    assert code == 0, out
    assert snapshot(tree) == before
    assert not [line for line in out.splitlines() if line.startswith("   ")]
    assert out.count(": already done") == 6 and out.splitlines()[-1] == "nothing to do: already installed"

    # the site edits its config and someone loosens a mode; an old unit is left from a previous version
    cfg_path = tree / "etc/checkpoint/gate.toml"
    cfg_path.write_text(text.replace('lane = "person"', 'lane = "green_lane"'))
    cfg_path.chmod(0o644)
    old_unit = tree / "etc/systemd/system/checkpoint-gate.service"
    old_unit.write_text(old_unit.read_text().replace("WatchdogSec=10s", "WatchdogSec=20s"))
    code, out = install("--role", "gate", "--root", str(tree), "--pi")
    assert code == 0, out
    assert f"   set {cfg_path} to 0640 root:checkpoint" in out
    assert f"   write {old_unit} (0644 root:root) (replaces the old one)" in out
    assert load_gate_config(cfg_path).gate.lane == "green_lane" and mode("etc/checkpoint/gate.toml") == 0o640
    assert old_unit.read_bytes() == (REPO / "systemd/checkpoint-gate.service").read_bytes()


def tomllib_ini(path: Path) -> dict[str, dict[str, str]]:
    """An INI drop-in read strictly: sections and key=value lines only (comments allowed)."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
        else:
            k, v = line.split("=", 1)
            out[section][k] = v
    return out


def test_tree_that_is_not_an_os_image(tmp_path):
    tree = tmp_path / "plain"
    code, out = install("--role", "gate", "--root", str(tree))
    assert code == 0, out
    assert "has no etc/passwd (not an OS tree): on the target run systemd-sysusers once" in out
    assert "note: ownership by checkpoint, checkpoint-sync not applied" in out
    assert "hardware watchdog: RuntimeWatchdogSec=15s: skipped (not a Raspberry Pi" in out
    assert (tree / "etc/checkpoint/gate.toml").is_file()
    before = snapshot(tree)
    code, out = install("--role", "gate", "--root", str(tree))
    assert code == 0 and out.splitlines()[-1] == "nothing to do: already installed"
    assert snapshot(tree) == before


def test_server_install_into_a_tree(tmp_path):
    from sync.server.config import load_server_config

    tree = os_tree(tmp_path / "tree") if SYSUSERS else tmp_path / "tree"
    code, out = install("--role", "server", "--root", str(tree), "--postgresql")
    assert code == 0, out
    units = sorted(p.name for p in (tree / "etc/systemd/system").glob("*.service"))
    assert units == ["checkpoint-server.service"]
    assert os.readlink(tree / "etc/systemd/system/multi-user.target.wants/checkpoint-server.service") == \
        "/etc/systemd/system/checkpoint-server.service"
    assert not (tree / "etc/tmpfiles.d").exists() and not (tree / "var/lib/checkpoint").exists()
    assert not (tree / "etc/sysusers.d/checkpoint-devices.conf").exists()
    scfg = load_server_config(tree / "etc/checkpoint/server.toml")
    assert str(scfg.data_dir) == "/var/lib/checkpoint-server" and scfg.database == PG_URL
    assert "PostgreSQL role and database checkpoint: skipped (--root" in out
    assert "apt-get install python3-venv postgresql" in out


def test_existing_broken_config_is_kept_and_reported(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc/checkpoint").mkdir(parents=True)
    broken = tree / "etc/checkpoint/gate.toml"
    broken.write_bytes(b"[camera]\nsource = \"devi")
    code, out = install("--role", "gate", "--root", str(tree))
    assert code == 0, out
    assert broken.read_bytes() == b"[camera]\nsource = \"devi"
    assert "present, kept as the site edited it (DOES NOT LOAD, see the notes)" in out
    assert f"note: {broken} kept as it is but does not load: {broken}: invalid TOML" in out


def test_bad_arguments(tmp_path, capsys, monkeypatch):
    assert main(["install", "--role", "bogus", "--dry-run"]) == 2
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["install", "--role", "gate", "--root", str(afile)]) == 2
    assert main(["install", "--role", "gate", "--postgresql", "--root", str(tmp_path / "t")]) == 2
    capsys.readouterr()
    assert main(["install", "--role", "gate", "--source", str(tmp_path), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "is not a checkpoint checkout (no systemd/ and config/)" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["install", "--role", "gate"]) == 1
    assert "installing into / needs root" in capsys.readouterr().err


def test_set_toml_value_keeps_layout_and_refuses_unknown_keys():
    text = ('top = 1\n[a]\nx = "old"            # why x\n# y = "commented"      # why y\n'
            'flag = false\n[b]\nx = 3\n')
    out = set_toml_value(text, "a", "x", "new")
    assert 'x = "new"            # why x\n' in out and "[b]\nx = 3" in out
    out = set_toml_value(out, "a", "y", 'quote " and \\ back')
    assert tomllib.loads(out)["a"]["y"] == 'quote " and \\ back'
    assert tomllib.loads(set_toml_value(out, "b", "x", 7))["b"]["x"] == 7
    assert tomllib.loads(set_toml_value(out, "", "top", 2))["top"] == 2
    assert tomllib.loads(set_toml_value(out, "a", "flag", True))["a"]["flag"] is True
    with pytest.raises(InstallError, match="no key z in \\[a\\]"):
        set_toml_value(text, "a", "z", 1)
    with pytest.raises(InstallError, match="no key x in \\[c\\]"):
        set_toml_value(text, "c", "x", 1)


def test_rendered_gate_toml_with_an_index_camera():
    text = render_gate_toml((REPO / "config/gate.example.toml").read_text(), camera=2, thermometer_port="/dev/serial0")
    doc = tomllib.loads(text)
    assert doc["camera"]["device"] == 2 and doc["thermometer"]["port"] == "/dev/serial0"
    assert doc["gate"]["data_dir"] == "/var/lib/checkpoint"
