"""Every case of ../shared/testvectors/bundles/cases.json, step by step, on a real gate data directory.

Each case starts from a fresh gate (keys = the anchor, no manifest, floor = build_floor,
empty part store). A step offers one document at the step's trusted time and clock
state and must give the expected outcome and reason; a rejection must leave the
state rows and the bundle files exactly as they were; ``state_after`` is checked
field by field (the floor counts only signed sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sync.timefmt import format_ms
from tests.bundles.helpers import Gate
from tests.conftest import load_vector, vectors_path

CASES = load_vector("bundles", "cases.json")["cases"] if vectors_path("bundles").exists() else []


class VectorFetcher:
    """Serves parts/<sha256> of the vectors, or another file where a step's ``serve`` says so."""

    def __init__(self, root: Path, serve: dict[str, str] | None) -> None:
        self.root = root
        self.serve = serve or {}
        self.parts: list[str] = []

    def current(self, nonce: str) -> bytes | None:
        raise AssertionError("not used by manifest steps")

    def keys(self, n: int) -> bytes | None:
        raise AssertionError("not used by manifest steps")

    def manifest(self, sha256: str) -> bytes:
        raise AssertionError("manifest steps offer the document directly")

    def part(self, sha256: str, max_bytes: int) -> bytes:
        self.parts.append(sha256)
        path = self.root / self.serve.get(sha256, f"parts/{sha256}")
        with path.open("rb") as f:
            return f.read(max_bytes)


def test_the_vectors_have_38_cases() -> None:
    assert len(load_vector("bundles", "cases.json")["cases"]) == 38


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vector_case(case: dict[str, Any], tmp_path: Path) -> None:
    root = vectors_path("bundles")
    setup = load_vector("bundles", "cases.json")["gate"]
    gate = Gate(tmp_path / "gate", floor=setup["build_floor"], site=setup["site"], device_id=setup["device_id"])
    try:
        gate.updater.install_anchor((root / setup["anchor_keys"]).read_bytes())
        assert gate.updater.keys().fleet == setup["fleet"]
        for i, step in enumerate(case["steps"]):
            where = f"{case['id']} step {i} ({step['doc']})"
            gate.clock.set(step["now"], step["clock"])
            before = gate.snapshot()
            data = (root / step["doc"]).read_bytes()
            if step["offer"] == "keys":
                res = gate.updater.offer_keys(data)
            elif step["offer"] == "manifest":
                res = gate.updater.offer_manifest(data, VectorFetcher(root, step.get("serve")))
            else:
                res = gate.updater.offer_current(data, nonce=step["nonce_sent"], rtt_s=step["rtt_s"])
            got_reason = res.rejection.reason if res.rejection else None
            assert (res.outcome, got_reason) == (step["expect"], step["reason"]), where
            if step["expect"] != "accept":
                assert gate.snapshot() == before, f"{where}: a {step['expect']} changed the gate state"
            if step["expect"] == "reject":
                ev = gate.events_of("bundle_rejected")[-1]
                assert ev["reason"] == step["reason"]
                assert ev["detail"].startswith(f"{step['offer']}:") and len(ev["detail"]) <= 200
            _check_state(gate, step.get("state_after", {}), res, where)
    finally:
        gate.close()


def _check_state(gate: Gate, want: dict[str, Any], res: Any, where: str) -> None:
    p = gate.pointer()
    keys = gate.updater.keys()
    got: dict[str, Any] = {}
    for field in want:
        if field == "keys_version":
            got[field] = keys.version
        elif field == "manifest_version":
            got[field] = p.version if p else None
        elif field == "manifest_sha256":
            got[field] = p.manifest_id if p else None
        elif field == "mode":
            from edge.bundles import SQLiteBundle

            with SQLiteBundle(gate.dir / "bundles" / p.bundle_file, manifest_id=p.manifest_id) as view:
                got[field] = view.mode["mode"]
            assert p.mode == got[field]
        elif field == "clock_floor":
            got[field] = format_ms(gate.floor())
        elif field == "signer_revoked":
            got[field] = bool(p and p.signer_revoked)
        elif field == "last_confirmed_current":
            got[field] = format_ms(p.last_confirmed_ms)
        elif field == "update_needed":
            got[field] = res.update_needed
        else:
            raise AssertionError(f"{where}: unknown state_after field {field}")
    assert got == want, where
