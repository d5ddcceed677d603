"""gate.toml loading: defaults, the example file, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import GateConfig, ensure_data_dir, load_gate_config
from edge.errors import DataDirError
from sync.errors import ConfigError


def test_defaults_work_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHECKPOINT_CONFIG", raising=False)
    cfg = load_gate_config(None)
    assert cfg.gate.lane == "person" and cfg.store.max_db_mb == 1024
    assert cfg.thermometer.port == "sim" and cfg.camera.source == "folder"
    assert cfg.identity_dir == cfg.data_dir / "identity"


def test_example_file_equals_the_defaults(repo: Path) -> None:
    cfg = load_gate_config(repo / "config" / "gate.example.toml")
    assert cfg.model_dump() == GateConfig().model_dump()


def test_environment_variable_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "g.toml"
    p.write_text('[gate]\nlane = "green_lane"\n')
    monkeypatch.setenv("CHECKPOINT_CONFIG", str(p))
    assert load_gate_config(None).gate.lane == "green_lane"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[gate\nlane = 1", "invalid TOML"),
        ("[store]\nmax_db_mb = 1024\nmax_db_mbb = 3\n", "unknown key [store] max_db_mbb"),
        ("[store]\nmax_db_mb = 'lots'\n", "[store] max_db_mb"),
        ("[thermometer.modbus]\naddress = 400\n", "[thermometer.modbus] address"),
        ("[gate]\ndevice_id = 'Gate 7'\n", "[gate] device_id"),
        ("[gate]\ntz = 'Mars/Olympus'\n", "unknown time zone"),
        ("[gpio]\nred = 17\n", "GPIO17 is given to both relay and red"),
        ("[thermometer]\nsite = 'wrist'\n", "wrist"),
        ("nonsense = true\n", "unknown key nonsense"),
        ("\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_files_give_one_line_naming_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_gate_config(p)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and needle in msg


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_gate_config(tmp_path / "nope.toml")


def test_data_dir_missing_is_an_error_unless_created(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        ensure_data_dir(tmp_path / "gone")
    assert ensure_data_dir(tmp_path / "made", create=True).is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        ensure_data_dir(f)
