"""Fixtures of the gate-process tests: one demo fleet per session, a gate per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.demo import DemoWorld
from tests.gate.harness import Harness

GUARD_PIN, ADMIN_PIN = "246810", "13579135"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    # Short windows so that the pairing and re-measure waits end within a test.
    return DemoWorld(tmp_path_factory.mktemp("world"), guard_pin=GUARD_PIN, admin_pin=ADMIN_PIN, log2_n=10,
                     policy={"pair_window_s": 2, "remeasure_wait_s": 3})


@pytest.fixture(scope="session")
def bundle_dir(world: DemoWorld) -> Path:
    return world.build_bundle()


@pytest.fixture(scope="session")
def installed(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A data directory with the bundle applied, per device id, made once and copied per test."""
    from edge.demo import install_bundle

    made: dict[str, Path] = {}

    def get(device_id: str) -> Path:
        if device_id not in made:
            d = tmp_path_factory.mktemp(f"installed-{device_id}")
            install_bundle(bundle_dir, d, device_id)
            made[device_id] = d
        return made[device_id]

    return get


@pytest.fixture
def make_gate(world: DemoWorld, installed: Callable[[str], Path], tmp_path: Path,
              mock_pins: Any) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(*, bundle: bool = True, start: bool = True, name: str = "gate", **kw: Any) -> Harness:
        template = None
        if bundle:
            template = installed("gate-test-01" if kw.get("lane", "person") == "person" else "gate-test-truck")
        h = Harness(world, template, tmp_path / name, mock_pins, **kw)
        made.append(h)
        return h.start() if start else h

    yield make
    for h in made:
        if h.thread.is_alive():
            h.stop()
