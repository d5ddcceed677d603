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


def make_key(label: str, role: str) -> KeyFile:
    """Deterministic test keys (not the vector keys): seed = SHA-256 of the label."""
    return generate_key(role, label, seed=hashlib.sha256(f"checkpoint bundle tests: {label}".encode()).digest())


# -- a whole fleet: keys, manifests, parts, statements -------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
H_MS = 3_600_000
DAY_MS = 24 * H_MS
T0 = parse_ms("2026-12-01T08:00:00.000Z")


def default_sources(*, mode: str = "normal", staff: int = 3) -> dict[str, dict[str, Any]]:
    """All eight parts as objects: the repo's default settings, no rules, a small roster."""
    settings = json.loads((REPO / "config" / "rules" / "settings.json").read_text(encoding="utf-8"))
    settings.setdefault("part", "settings")
    settings.setdefault("schema", 1)
    people = [
        {"sub": hashlib.md5(f"sub-{i}".encode()).hexdigest(), "codes": [hashlib.md5(f"code-{i}".encode()).hexdigest()],
         "name": f"P*{i}", "role": "staff", "firm": "F001", "team": "A", "zones": ["Z1"], "closed_loop": False,
         "colour": "green", "flags": [], "last_test": "2026-11-30T08:00:00.000Z"}
        for i in range(staff)
    ]
    return {
        "rules": {"part": "rules", "schema": 1, "rules": []},
        "settings": settings,
        "trust": {"part": "trust", "schema": 1, "keys": []},
        "roster": {"part": "roster", "schema": 1, "roster_key": "ab" * 32, "staff": people,
                   "teams": [{"firm": "F001", "team": "A", "start_min": 480, "end_min": 1020}]},
        "firms": {"part": "firms", "schema": 1, "firms": [
            {"id": "F001", "name": "Test Works", "whitelisted": True, "meltdown": False, "meltdown_at": None,
             "closed_loop": False}]},
        "preregistrations": {"part": "preregistrations", "schema": 1, "visitors": []},
        "revocations": {"part": "revocations", "schema": 1, "entries": []},
        "mode": {"part": "mode", "schema": 1, "mode": mode, "since": "2026-11-01T00:00:00.000Z", "reason": "test",
                 "set_by": "admin-test"},
    }


class Fleet:
    """The upstream side for tests: root/publisher/server keys, keys documents, numbered manifests."""

    def __init__(self, fleet: str = "test-fleet", site: str | None = "site-a", *, issued_at_ms: int = T0 - 30 * DAY_MS,
                 prefix: str = "fleet") -> None:
        from sync.bundle import keys_body, parse_keys, sign_document

        self.fleet, self.site, self.prefix = fleet, site, prefix
        self.roots = [make_key(f"{prefix}-root-{i}", "root") for i in range(1, 4)]
        self.publishers = [make_key(f"{prefix}-pub-1", "publisher")]
        self.server = make_key(f"{prefix}-srv-1", "server")
        body = keys_body(previous=None, fleet=fleet, root=self.roots, publisher=self.publishers, server=[self.server],
                         issued_at_ms=issued_at_ms, expires_ms=issued_at_ms + 365 * DAY_MS)
        self.keys_docs: dict[int, bytes] = {1: sign_document("keys", body, self.roots[:2])}
        self.keys = parse_keys(self.keys_docs[1])
        self.manifests: dict[str, bytes] = {}
        self.parts: dict[str, bytes] = {}
        self.current: Any = None  # the Manifest current for the scope
        self.sources = default_sources()

    def rotate(self, *, roots: list[KeyFile] | None = None, publishers: list[KeyFile] | None = None,
               server: KeyFile | None = None, issued_at_ms: int, expires_ms: int | None = None,
               clock_floor_reset_ms: int | None = None, sign_old: int = 2, sign_new: int = 2,
               publisher_threshold: int | None = None) -> bytes:
        """Keys document N + 1 signed by old and new root thresholds (counts overridable to test failures)."""
        from sync.bundle import keys_body, parse_keys, sign_document

        body = keys_body(previous=self.keys, root=roots, publisher=publishers,
                         publisher_threshold=publisher_threshold, server=[server] if server else None, issued_at_ms=issued_at_ms,
                         expires_ms=expires_ms or issued_at_ms + 365 * DAY_MS,
                         clock_floor_reset_ms=clock_floor_reset_ms)
        old = self.roots[:sign_old]
        new = (roots or self.roots)[:sign_new]
        signers = {k.keyid: k for k in [*old, *new]}
        data = sign_document("keys", body, list(signers.values()))
        self.keys = parse_keys(data)
        self.keys_docs[self.keys.version] = data
        self.roots = roots or self.roots
        self.publishers = publishers or self.publishers
        self.server = server or self.server
        return data

    def publish(self, *, server_time_ms: int, validity_s: int = 7 * 86_400, mode: str | None = None,
                changes: dict[str, dict[str, Any]] | None = None, version: int | None = None,
                previous: Any = "current", site: Any = "default", signers: list[KeyFile] | None = None,
                raw_parts: dict[str, bytes] | None = None, issued_at_ms: int | None = None) -> Any:
        """Number, sign and publish a manifest (server flow); returns the ``Manifest``."""
        from sync.bundle import manifest_body, parse_manifest, part_bytes, sign_manifest

        if mode is not None:
            self.sources["mode"] = {**self.sources["mode"], "mode": mode}
        for name, obj in (changes or {}).items():
            self.sources[name] = obj
        parts = {n: part_bytes(o) for n, o in self.sources.items()}
        parts.update(raw_parts or {})
        for data in parts.values():
            self.parts[hashlib.sha256(data).hexdigest()] = data
        prev = self.current if previous == "current" else previous
        body = manifest_body(
            fleet=self.fleet, site=self.site if site == "default" else site,
            version=version if version is not None else (prev.version + 1 if prev is not None else 1),
            keys_version=self.keys.version, parts=parts,
            issued_at_ms=server_time_ms if issued_at_ms is None else issued_at_ms,
            server_time_ms=server_time_ms, expires_ms=server_time_ms + validity_s * 1000, previous=prev)
        data = sign_manifest(body, signers or self.publishers)
        m = parse_manifest(data)
        self.manifests[m.id] = data
        self.current = m
        return m

    def statement(self, nonce: str, *, server_time_ms: int, device_id: str = DEVICE, manifest: Any = None,
                  key: KeyFile | None = None) -> bytes:
        from sync.bundle import current_body, sign_current

        m = manifest or self.current
        body = current_body(fleet=self.fleet, site=self.site, device_id=device_id, server_time_ms=server_time_ms,
                            nonce=nonce, manifest=m)
        return sign_current(body, key or self.server)

    def fetcher(self, *, server_time_ms: int, **kw: Any) -> DictFetcher:
        """A fetcher answering like the server: statements at ``server_time_ms`` naming the current manifest."""
        f = DictFetcher(keys=dict(self.keys_docs), manifests=dict(self.manifests), parts=dict(self.parts), **kw)
        f.current_doc = (lambda nonce: self.statement(nonce, server_time_ms=f.server_time_ms)  # type: ignore[attr-defined]
                         if self.current is not None else None)
        f.server_time_ms = server_time_ms  # type: ignore[attr-defined]
        return f
