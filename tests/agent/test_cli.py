"""``checkpoint sync`` argument and configuration errors: one line, the documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import cli, main
from tests.agent.conftest import make_gate


def test_help_lists_every_command():
    r = CliRunner().invoke(cli, ["sync", "--help"])
    assert r.exit_code == 0
    for name in ("run", "enroll", "status", "drain"):
        assert name in r.output


@pytest.mark.parametrize("args,code", [
    (["sync", "enroll", "--server", "https://x.org"], 2),                # --code missing
    (["sync", "enroll", "--code", "7KQ4-9MZT-H2XC"], 2),                 # --server missing
    (["sync", "drain", "--timeout", "0"], 2),
    (["sync", "nonsense"], 2),
])
def test_usage_errors_exit_2(args, code):
    assert main(args) == code


def test_bad_config_exits_78(tmp_path: Path, capsys):
    cfg = tmp_path / "g.toml"
    cfg.write_text("[sync]\nserver_urll = 'x'\n")
    assert main(["sync", "status", "--config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert "server_urll" in err and len(err.strip().splitlines()) == 1
    cfg.write_text("\x00\xff garbage [[[")
    assert main(["sync", "status", "--config", str(cfg)]) == 78


def test_enroll_with_a_garbage_url_or_code(tmp_path: Path, capsys):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gate]\ndata_dir = "{tmp_path / "gd"}"\n')
    assert main(["sync", "enroll", "--config", str(cfg), "--server", "not a url", "--code", "7KQ4-9MZT-H2XC"]) == 78
    assert main(["sync", "enroll", "--config", str(cfg), "--server", "https://127.0.0.1:9",
                 "--code", "x" * 5000]) == 1
    # an unreachable server: one line, exit 1, nothing enrolled
    assert main(["sync", "enroll", "--config", str(cfg), "--server", "http://127.0.0.1:9",
                 "--code", "7KQ4-9MZT-H2XC"]) == 1
    assert "not reachable" in capsys.readouterr().err
    assert not (tmp_path / "gd" / "identity" / "identity.json").exists()


def test_status_before_enrolment_and_after(tmp_path: Path):
    cfg = tmp_path / "g.toml"
    (tmp_path / "gd").mkdir()
    cfg.write_text(f'[gate]\ndata_dir = "{tmp_path / "gd"}"\n')
    r = CliRunner().invoke(cli, ["sync", "status", "--config", str(cfg)])
    assert r.exit_code == 0 and "not enrolled" in r.output
    gate = make_gate(tmp_path / "second")
    cfg2 = tmp_path / "g2.toml"
    cfg2.write_text(f'[gate]\ndevice_id = "{gate.identity.device_id}"\ndata_dir = "{gate.data_dir}"\n')
    gate.writer().close()
    r = CliRunner().invoke(cli, ["sync", "status", "--config", str(cfg2), "--json"])
    doc = json.loads(r.output)
    assert doc["enrolled"] and doc["upload"]["head_seq"] == 0 and doc["agent_running"] is False


def test_status_on_a_missing_data_dir_is_one_line(tmp_path: Path, capsys):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gate]\ndata_dir = "{tmp_path / "nope"}"\n')
    assert main(["sync", "status", "--config", str(cfg)]) == 1
    assert "does not exist" in capsys.readouterr().err
