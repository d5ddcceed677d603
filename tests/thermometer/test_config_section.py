"""The ``[thermometer]`` section of gate.toml against what the reader accepts (hardware.md §1.13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ThermometerConfig, load_gate_config
from firmware_bridge.options import ThermometerOptions
from sync.errors import ConfigError


def _load(tmp_path: Path, text: str):
    path = tmp_path / "gate.toml"
    path.write_text(text, encoding="utf-8")
    return load_gate_config(path)


def test_every_default_reaches_the_reader_unchanged() -> None:
    cfg = ThermometerConfig()
    opts = ThermometerOptions.parse(None, None, cfg.model_dump())
    assert (opts.protocol, opts.port, opts.settle_s, opts.retry_s, opts.stale_after_s) == (
        "gy-mcu90614", "sim", 0.0, 0.25, 3.0)
    assert (opts.estimate.offset_c, opts.estimate.ambient_k, opts.measure.smooth_n) == (0.9, 0.13, 5)
    assert ThermometerOptions.parse(None, None, ThermometerConfig(protocol="ascii").model_dump()).settle_s == 2.0


def test_float32_without_ambient_and_none_spelled_out(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[thermometer]\nprotocol = "modbus-rtu"\n[thermometer.modbus]\nformat = "float32"\n'
                          "scale = 1.0\n")
    assert cfg.thermometer.modbus.ambient_register is None
    opts = ThermometerOptions.parse(None, None, cfg.thermometer.model_dump())
    assert [(r.start, r.count) for r in opts.modbus.map.requests()] == [(0, 2)]
    cfg = _load(tmp_path, '[thermometer.modbus]\nambient_register = "none"\n')
    assert cfg.thermometer.modbus.ambient_register is None


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[thermometer.ascii]\nobject_pattern = "(unclosed"\n', "object_pattern"),
        ('[thermometer.ascii]\nbare_pattern = "\\\\d+"\n', "group named v"),
        ('[thermometer.modbus]\nformat = "float32"\nambient_register = 1\n', "overlaps"),
        ("[thermometer]\nmin_samples = 7\n", "min_samples"),
        ('[thermometer]\nsite = "wrist"\n', "wrist"),
    ],
)
def test_a_file_the_reader_would_refuse_fails_at_load(tmp_path: Path, toml: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _load(tmp_path, toml)
