"""Fixtures for the sync agent's tests: a gate data directory, an enrolled identity, real stores."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.clock import TrustedClock
from edge.config import GateConfig
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.agent.core import Agent
from sync.agent.notify import Notifier
from sync.identity import Identity, Venue, write_identity
from sync.keys import KeyFile, generate_key, write_key_file
from tests.agent.fakeserver import FakeServer

DEVICE_ID = "gate-fc-0007"
HOST = {"cpu_temp_centi_c": 4500, "load1": 0.1, "throttled": None}


def seeded_key(role: str, label: str) -> KeyFile:
    return generate_key(role, label, seed=hashlib.sha256(f"checkpoint agent test {label}".encode()).digest())


@dataclass
class Gate:
    """One gate's files: config, identity, keys, and a writer store like the gate process's."""

    cfg: GateConfig
    identity: Identity
    device_key: KeyFile
    server_key: KeyFile
    data_dir: Path

    def clock(self, state: StateDB) -> TrustedClock:
        return TrustedClock(state, ntp=lambda: True)

    def writer(self, **kw: Any) -> EventStore:
        return EventStore(self.data_dir, self.identity.device_id, **kw)

    def fake_server(self, **kw: Any) -> FakeServer:
        return FakeServer(self.identity.device_id, self.device_key.public, self.server_key, **kw)


def make_gate(tmp: Path, *, server_url: str = "http://127.0.0.1:9", device_id: str = DEVICE_ID,
              server_key: KeyFile | None = None, **sync_kw: Any) -> Gate:
    data = tmp / "gate"
    data.mkdir(parents=True, exist_ok=True)
    cfg = GateConfig.model_validate({
        "gate": {"device_id": device_id, "data_dir": str(data)},
        "store": {"reserve_mb": 0},
        "sync": {"server_url": server_url, **sync_kw},
    })
    dkey = seeded_key("device", f"device-{device_id}")
    skey = server_key or seeded_key("server", "server")
    ident_dir = cfg.identity_dir
    ident_dir.mkdir(parents=True, exist_ok=True)
    write_key_file(ident_dir / "device.key", dkey, overwrite=True)
    ident = Identity(device_id=device_id, server_url=server_url, server_key=skey.public, keyid=dkey.keyid,
                     pid_key="00" * 32, pid_kid=1, site_id="fc-plant-1",
                     venue=Venue(venue_id="411322-0031-01", zone="A", door="east"), firm_id="F0012")
    write_identity(ident_dir, ident)
    return Gate(cfg, ident, dkey, skey, data)


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return make_gate(tmp_path)


def at_now(clock: TrustedClock) -> dict[str, Any]:
    return clock.read().at()


def decision(n: int, *, alert: str = "none") -> dict[str, Any]:
    return {"venue": {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}, "lane": "person",
            "mode": "normal", "bundle": {"version": 1, "state": "fresh"}, "outcome": "admit", "alert": alert,
            "credential": {"kind": "health", "status": "valid"},
            "subject": {"pid": f"{n:032x}", "pid_kid": 1, "name_m": "张*三", "role": "staff", "firm_id": "F0012",
                        "whitelisted": True},
            "health": {"code": "green", "test_age_min": 60, "flags": []},
            "temp": {"body_centi_c": 3650, "status": "ok"}, "reasons": [f"r{n}"]}


def fever(decision_seq: int | None) -> dict[str, Any]:
    return {"cause": "fever", "decision_seq": decision_seq, "body_centi_c": 3790, "threshold_centi_c": 3730,
            "subject": None, "venue": {"venue_id": "411322-0031-01", "zone": "A", "door": "east"},
            "observation_point": None}


def fill(store: EventStore, clock: TrustedClock, n: int, *, start: int = 0, batch: int = 200) -> list[int]:
    """Append ``n`` decision events in transactions of up to ``batch``; returns their seqs."""
    seqs: list[int] = []
    at = at_now(clock)
    for i in range(0, n, batch):
        items = [("decision", decision(start + i + j), at) for j in range(min(batch, n - i))]
        seqs += [a.seq for a in store.append_many(items)]
    return seqs


@pytest.fixture
def make_agent(gate: Gate) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(transport: httpx.BaseTransport, *, g: Gate | None = None, **kw: Any) -> Agent:
        g = g or gate
        kw.setdefault("bundle_update", None)
        kw.setdefault("rng", random.Random(7))
        kw.setdefault("host", HOST)
        kw.setdefault("notifier", Notifier(env={}))
        kw.setdefault("ntp", lambda: True)  # no timedatectl here; the host clock is fine
        agent = Agent(g.cfg, transport=transport, **kw)
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.close()
