"""The ``checkpoint`` command: groups, help on every command, exit codes, gate state commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge.cli import cli, main

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, cwd=cwd or REPO,
    )


def test_help_lists_the_groups() -> None:
    r = run("--help")
    assert r.returncode == 0
    for group in ("gate", "admin"):
        assert f"  {group} " in r.stdout


def _walk(cmd: click.Command, path: list[str]) -> list[list[str]]:
    out = [path]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                out.extend(_walk(sub, [*path, name]))
    return out


def test_every_command_has_help() -> None:
    runner = CliRunner()
    paths = _walk(cli, [])
    assert len(paths) > 5
    for path in paths:
        res = runner.invoke(cli, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "Usage:" in res.output


def test_usage_errors_exit_2() -> None:
    assert main(["no-such-command"]) == 2
    assert main(["gate", "status", "--no-such-flag"]) == 2


def test_config_error_is_one_line_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "g.toml"
    bad.write_text("[store]\nmax_db_mb = 'x'\n")
    r = run("gate", "status", "--config", str(bad))
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_db_mb" in lines[0] and "Traceback" not in r.stderr


def test_missing_data_dir_is_one_line_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gate]\ndata_dir = "{tmp_path / "absent"}"\n')
    r = run("gate", "status", "--config", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_init_status_verify_clock(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gate]\ndata_dir = "{tmp_path / "data"}"\ndevice_id = "gate-cli-01"\n')
    env = {"CHECKPOINT_CONFIG": str(cfg)}
    r = run("gate", "init", env=env)
    assert r.returncode == 0, r.stderr
    r = run("gate", "init", env=env)
    assert r.returncode == 0, "init is idempotent"
    r = run("gate", "status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["device_id"] == "gate-cli-01" and doc["head_seq"] == 0 and doc["clock"]["state"] in (
        "synced", "floor", "untrusted")
    assert run("gate", "verify-log", env=env).returncode == 0
    r = run("gate", "clock", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] in ("synced", "floor", "untrusted")
    r = run("gate", "clock-floor", env=env)
    assert r.returncode == 0 and r.stdout.startswith("clock-floor:")


def test_verify_log_names_the_broken_seq(tmp_path: Path) -> None:
    import sqlite3

    from edge.store.events import EventStore

    data = tmp_path / "data"
    data.mkdir()
    with EventStore(data, "gate-cli-01") as s:
        for i in range(5):
            s.append("decision", {"i": i}, {"wall": "2026-11-23T00:00:00.000Z", "clock": "floor",
                                           "boot": "b", "mono_ms": i})
    conn = sqlite3.connect(data / "events.db")
    conn.execute("DELETE FROM events WHERE seq = 3")
    conn.commit()
    conn.close()
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gate]\ndata_dir = "{data}"\ndevice_id = "gate-cli-01"\n')
    r = run("gate", "verify-log", "--config", str(cfg))
    assert r.returncode == 1 and "seq 3" in r.stderr


def test_clock_floor_on_a_fresh_install_is_not_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gate]\ndata_dir = "{tmp_path / "nothing"}"\n')
    r = run("gate", "clock-floor", "--config", str(cfg))
    assert r.returncode == 0 and "fresh install" in r.stdout


def test_keygen_writes_a_private_file_0600(tmp_path: Path) -> None:
    out = tmp_path / "issuer.key"
    r = run("admin", "keygen", "--role", "issuer", "--alg", "es256", "--label", "county", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out.stat().st_mode & 0o777) == 0o600
    doc = json.loads(out.read_text())
    assert doc["alg"] == "es256" and len(doc["public"]) == 130 and doc["keyid"] in r.stdout
    assert "seed" not in json.loads((tmp_path / "issuer.key.pub").read_text())
    r = run("admin", "keygen", "--role", "issuer", "--label", "again", "--out", str(out))
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr
    r = run("admin", "keygen", "--role", "root", "--alg", "es256", "--label", "x", "--out", str(tmp_path / "r"))
    assert r.returncode == 2


@pytest.mark.parametrize("text", ["CK1:NCF9A0710FFWTWGSLK/-4$49:1OYY2J2C EMB8BV%K", "110101199003071234", "13800138000"])
def test_log_lines_never_carry_raw_credentials_or_ids(text: str) -> None:
    from sync.logformat import redact

    assert text not in redact(f"scanned {text} at gate")


def test_log_handler_follows_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command run in-process may swap and close its stderr; a later record must go to the
    stderr of that moment, never to a closed file ("I/O operation on closed file")."""
    import io
    import logging

    from sync.logformat import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO", "logfmt")
    try:
        logging.getLogger("checkpoint.test").warning("one k=%s", 1)
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("checkpoint.test").warning("two k=%s", 2)
        assert 'msg="two k=2"' in second.getvalue()
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_checkpoint", False)]:
            root.removeHandler(h)
