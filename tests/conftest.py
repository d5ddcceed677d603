"""Fixtures shared by every test.

Test vectors live in ``../shared/testvectors`` beside the clone (CI puts them
there). In a plain clone that folder is absent: tests that need it skip with a
visible reason and everything else still runs. ``CHECKPOINT_SHARED`` overrides
the location.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# For subprocesses (gate run, demo) and for gpiozero in this process (hardware.md §3.7).
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
os.environ.setdefault("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CHECKPOINT_SHARED", REPO.parent / "shared"))
VECTORS = SHARED / "testvectors"


def vectors_path(*parts: str) -> Path:
    """Path inside the shared test vectors; skips the calling test when they are absent."""
    path = VECTORS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test vectors not found at {path} (CI provides ../shared beside the clone)")
    return path


def load_vector(*parts: str) -> Any:
    return json.loads(vectors_path(*parts).read_text(encoding="utf-8"))


@pytest.fixture
def mock_pins():
    """gpiozero's MockFactory with PWM-capable pins, reset after the test."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The reliability figures (sync.md §6.7) at the end of the run. Here, not only in the
    conftests of ``tests/crash`` and ``tests/reliability``: the controller of a pytest-xdist run
    never loads those (its workers collect), yet it is the one that writes the terminal."""
    from tests.crash import figures

    figures.summary(terminalreporter)
