"""Shared set-up for the policy tests: real issuer keys, minted CK1 credentials, a bundle.

Credentials are minted and verified with ``edge.credentials`` (the real verifier);
the bundle is an ``InMemoryBundle`` built from the shipped ``config/rules`` and
small roster, firms, pre-registration and revocation parts in the shapes of
bundles.md §1.6. Time is fixed: 2022-05-10T08:00:00Z (16:00 in Henan).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sync.keys import KeyFile, generate_key
from sync.timefmt import from_ms, parse_ms

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "config" / "rules"
NOW = parse_ms("2022-05-10T08:00:00.000Z")
ROSTER_KEY = bytes(range(32))

STAFF_SUB = "5d0f3c1e9a7b24c86e1f0a3b5c7d9e21"
LOGISTICS_SUB = "6e1f0a3b5c7d9e215d0f3c1e9a7b24c8"
LOOP_SUB = "7a2b4c69d3e0f1a28d1c0e5f7a2b4c69"
NIGHT_SUB = "8b3c5d7e9f0a1b2c3d4e5f60718293a4"
VISITOR_SUB = "1f2e3d4c5b6a79880f1e2d3c4b5a6978"
DRIVER_SUB = "9c41d0b7e25a8f3361b0c4d7e8a92f15"


def rules_json() -> list[dict[str, Any]]:
    return json.loads((RULES_DIR / "rules.json").read_text(encoding="utf-8"))


def settings_json() -> dict[str, Any]:
    return json.loads((RULES_DIR / "settings.json").read_text(encoding="utf-8"))


def staff(sub: str, *, role: str = "staff", team: str | None = "A", zones: list[str] | None = None,
          closed_loop: bool = False, colour: str | None = "green", last_test: str | None = "2022-05-09T06:12:00.000Z",
          codes: list[str] | None = None, firm: str = "F0012") -> dict[str, Any]:
    return {"sub": sub, "codes": codes or [], "name": "张*三", "role": role, "firm": firm, "team": team,
            "zones": zones or ["production", "canteen"], "closed_loop": closed_loop, "colour": colour,
            "flags": [], "last_test": last_test}


def base_parts(trust: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from edge.credentials import code_hash

    return {
        "rules": {"part": "rules", "schema": 1, "rules": rules_json()},
        "settings": settings_json(),
        "trust": {"part": "trust", "schema": 1, **trust},
        "roster": {
            "part": "roster", "schema": 1, "roster_key": ROSTER_KEY.hex(),
            "staff": [
                staff(STAFF_SUB, codes=[code_hash("EMP-004211", ROSTER_KEY)]),
                staff(LOGISTICS_SUB, role="logistics", team="B"),
                staff(LOOP_SUB, role="closed_loop", closed_loop=True),
                staff(NIGHT_SUB, team="N"),
            ],
            "teams": [
                {"firm": "F0012", "team": "A", "start_min": 480, "end_min": 1020},
                {"firm": "F0012", "team": "N", "start_min": 1320, "end_min": 360},
            ],
        },
        "firms": {"part": "firms", "schema": 1, "firms": [
            {"id": "F0012", "name": "平顶山某机械厂", "whitelisted": True, "meltdown": False, "meltdown_at": None,
             "closed_loop": True},
            {"id": "F0077", "name": "某物流公司", "whitelisted": True, "meltdown": False, "meltdown_at": None,
             "closed_loop": False},
            {"id": "F0099", "name": "熔断企业", "whitelisted": False, "meltdown": True,
             "meltdown_at": "2022-05-10T06:00:00.000Z", "closed_loop": False},
        ]},
        "preregistrations": {"part": "preregistrations", "schema": 1, "visitors": [
            {"sub": VISITOR_SUB, "name": "李*", "host_firm": "F0012", "zones": ["canteen"],
             "valid_from": "2022-05-08T00:00:00.000Z", "valid_until": "2022-05-08T10:00:00.000Z", "ref": "R-OLD"},
            {"sub": VISITOR_SUB, "name": "李*", "host_firm": "F0012", "zones": ["production"],
             "valid_from": "2022-05-10T00:00:00.000Z", "valid_until": "2022-05-10T10:00:00.000Z", "ref": "R-0501"},
        ]},
        "revocations": {"part": "revocations", "schema": 1, "entries": []},
        "mode": {"part": "mode", "schema": 1, "mode": "normal", "since": "2022-05-01T00:00:00.000Z",
                 "reason": "default", "set_by": "admin"},
    }


class World:
    """Keys, a way to mint and verify, and a way to build the bundle and the inputs."""

    def __init__(self) -> None:
        self.issuer: KeyFile = generate_key("issuer", "test-issuer", seed=b"\x11" * 32)
        self.other: KeyFile = generate_key("issuer", "other-issuer", seed=b"\x22" * 32)
        self.trust = {"keys": [{"public_key": base64.b64encode(self.issuer.spki_der()).decode(),
                                "kinds": ["health", "pass", "venue", "material"]}]}
        self.parts = base_parts(self.trust)

    def bundle(self, *, mutate: Callable[[dict[str, Any]], None] | None = None, version: int = 7) -> Any:
        from edge.policy.bundle_view import InMemoryBundle

        parts = copy.deepcopy(self.parts)
        if mutate is not None:
            mutate(parts)
        return InMemoryBundle.from_parts(parts, version=version, rules_digest="r" * 64, settings_digest="s" * 64)

    def mint(self, kind: str, claims: dict[str, Any], *, key: KeyFile | None = None, now_ms: int = NOW - 3_600_000,
             expires_in_s: int | None = None) -> str:
        from edge.credentials import mint

        return mint(kind, claims, key or self.issuer, now_ms=now_ms, expires_in_s=expires_in_s)

    def verify(self, text: str, *, at_ms: int = NOW, trust: Any = None) -> Any:
        from edge.credentials import verify

        return verify(text, trust if trust is not None else self.trust, from_ms(at_ms), skew=timedelta(seconds=300))

    def health(self, sub: str = STAFF_SUB, **over: Any) -> Any:
        claims = {"iss": "HA-410400", "sub": sub, "firm": "F0012", "name": "张*三", "role": "staff",
                  "colour": "green", "flags": [], "last_test": "2022-05-09T06:12:00.000Z"}
        claims.update(over)
        claims = {k: v for k, v in claims.items() if v is not None}
        return self.verify(self.mint("health", claims))

    def pass_(self, sub: str = DRIVER_SUB, **over: Any) -> Any:
        claims = {"iss": "HA-TRAFFIC", "sub": sub, "firm": "F0012", "pass_id": "HA2022050800123", "plate": "豫D12345",
                  "origin": "郑州", "destination": "平顶山", "route": "G4",
                  "nbf": "2022-05-09T00:00:00.000Z", "exp": "2022-05-16T00:00:00.000Z"}
        claims.update(over)
        return self.verify(self.mint("pass", claims))

    def inputs(self, bundle: Any = "default", **over: Any) -> Any:
        from edge.policy.engine import DecisionInputs, GateBinding, Temperature

        if bundle == "default":
            bundle = self.bundle()
        args: dict[str, Any] = {
            "now_ms": NOW,
            "lane": "person",
            "gate": GateBinding(device_id="gate-f0012-s1", venue_id="V0012-01", zone="production", door="south-1",
                                firm_id="F0012", tz="Asia/Shanghai"),
            "bundle": bundle,
            "freshness": "fresh",
            "clock_state": "synced",
            "temperature": Temperature(body_centi_c=3650, measured_at=NOW - 2000, attempt=1),
            "thermometer_status": "ok",
        }
        args.update(over)
        return DecisionInputs(**args)

    def green_gate(self) -> Any:
        from edge.policy.engine import GateBinding

        return GateBinding(device_id="gate-g4-0417-a", venue_id="V-G4-0417", zone="checkpoint", door=None,
                           firm_id=None, tz="Asia/Shanghai")


@pytest.fixture(scope="session")
def world() -> World:
    return World()
