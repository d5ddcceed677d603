"""Shared set-up for the bundle tests: a gate on real SQLite files with a steerable trusted clock.

``StepClock`` is the real ``TrustedClock`` (its row, floor and the ``*_in`` methods
that K6, M13 and T6 use) whose ``read()`` reports the step's trusted time and
clock state, as the vector harness prescribes ("now is the gate's trusted time
for the step and clock its clock state"); the floor it reports is the real one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from edge.bundles import BundleUpdater, Pointer, read_pointer
from edge.clock import ClockReading, TrustedClock
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.errors import Unreachable
from sync.keys import KeyFile, generate_key
from sync.timefmt import parse_ms

BOOT = "11111111-2222-3333-4444-555555555555"
FLEET, SITE, DEVICE = "test-fleet", "site-a", "gate-test-01"


class StepClock(TrustedClock):
    """A trusted clock whose reading is set per step; floor and row are real."""

    def __init__(self, state: StateDB, *, floor_ms: int, now_ms: int | None = None, boot: str = BOOT) -> None:
        self.step_now = now_ms if now_ms is not None else floor_ms
        self.step_state = "floor"
        self.boottime = 1_000
        super().__init__(state, wall_ms=lambda: self.step_now, boottime_ms=lambda: self.boottime, boot=boot,
                         ntp=lambda: False, release_floor_ms=floor_ms)

    def set(self, now: int | str, clock_state: str = "synced") -> None:
        self.step_now = parse_ms(now) if isinstance(now, str) else now
        self.step_state = clock_state

    def read(self) -> ClockReading:
        r = super().read()
        return dataclasses.replace(r, now_ms=self.step_now, state=self.step_state)


class Gate:
    """One gate's data directory with its stores, clock and updater."""

    def __init__(self, data_dir: Path, *, floor: str = "2026-01-01T00:00:00.000Z", site: str | None = SITE,
                 device_id: str = DEVICE) -> None:
        self.dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.state = StateDB(data_dir)
        self.events = EventStore(data_dir, device_id, max_db_mb=64)
        self.clock = StepClock(self.state, floor_ms=parse_ms(floor))
        self.updater = BundleUpdater(data_dir, state=self.state, events=self.events, clock=self.clock,
                                     device_id=device_id, site=site)

    def close(self) -> None:
        self.events.close()
        self.state.close()

    def floor(self) -> int:
        row = self.state.read_row("clock")
        assert row is not None
        return int(row["floor_ms"])

    def snapshot(self) -> dict[str, Any]:
        """Everything a rejection must leave unchanged: the three state rows and the bundle files."""
        rows = {t: self.state.read_row(t) for t in ("clock", "keys", "bundle")}
        files = sorted(p.name for p in (self.dir / "bundles").glob("*.db"))
        parts = sorted(p.name for p in (self.dir / "parts").iterdir() if p.is_file())
        return {"rows": rows, "bundle_files": files, "parts": parts}

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(e.body)["payload"] for e in self.events.iter_all() if e.kind == kind]

    def pointer(self) -> Pointer | None:
        return read_pointer(self.state)


class DictFetcher:
    """A fetcher over dicts, recording what was asked (tests' stand-in for the agent's HTTP fetcher)."""

    def __init__(self, *, current: bytes | None = None, keys: dict[int, bytes] | None = None,
                 manifests: dict[str, bytes] | None = None, parts: dict[str, bytes] | None = None,
                 down: bool = False) -> None:
        self.current_doc = current
        self.keys_docs = keys or {}
        self.manifests = manifests or {}
        self.parts = parts or {}
        self.down = down
        self.fetched: list[str] = []
        self.nonces: list[str] = []

    def _net(self) -> None:
        if self.down:
            raise Unreachable("network down (test)")

    def current(self, nonce: str) -> bytes | None:
        self._net()
        self.fetched.append("current")
        self.nonces.append(nonce)
        return self.current_doc(nonce) if callable(self.current_doc) else self.current_doc

    def keys(self, n: int) -> bytes | None:
        self._net()
        self.fetched.append(f"keys/{n}")
        return self.keys_docs.get(n)

    def manifest(self, sha256: str) -> bytes:
        self._net()
        self.fetched.append(f"manifest/{sha256[:8]}")
        if sha256 not in self.manifests:
            raise Unreachable("404")
        return self.manifests[sha256]

    def part(self, sha256: str, max_bytes: int) -> bytes:
        self._net()
        self.fetched.append(f"part/{sha256[:8]}")
        if sha256 not in self.parts:
            raise Unreachable("404")
        return self.parts[sha256][:max_bytes]


def test_key(label: str, role: str) -> KeyFile:
    """Deterministic test keys (not the vector keys): seed = SHA-256 of the label."""
    return generate_key(role, label, seed=hashlib.sha256(f"checkpoint bundle tests: {label}".encode()).digest())
