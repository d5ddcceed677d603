"""The bundle in force as the policy reads it (bundles.md §3.5 M12–M14): the SQLite bundle file
implements ``BundleView`` with the same answers as ``InMemoryBundle`` over the same parts, and the
holder swaps bundles only between decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.bundles import BundleHolder, SQLiteBundle
from sync.bundle import validate_parts
from tests.bundles.helpers import H_MS, T0, Fleet, Gate
from tests.conftest import vectors_path


@pytest.fixture
def vector_bundle(tmp_path: Path) -> tuple[SQLiteBundle, dict[str, Any], Any]:
    """Manifest 2 of the vectors (emergency, meltdown, revocation), applied on a real gate."""
    from tests.bundles.test_vectors import VectorFetcher

    root = vectors_path("bundles")
    gate = Gate(tmp_path / "g", floor="2026-01-01T00:00:00.000Z")
    gate.updater.install_anchor((root / "docs/keys-1.json").read_bytes())
    gate.clock.set("2026-11-22T09:00:00.000Z")
    assert gate.updater.offer_keys((root / "docs/keys-2.json").read_bytes()).outcome == "accept"
    for n in (1, 2):
        assert gate.updater.offer_manifest((root / f"docs/manifest-{n}.json").read_bytes(),
                                           VectorFetcher(root, None)).outcome == "accept"
    p = gate.pointer()
    m = p.parsed()
    raw = {name: (root / "parts" / ref.sha256).read_bytes() for name, ref in m.parts.items()}
    view = SQLiteBundle(gate.dir / "bundles" / p.bundle_file, manifest_id=p.manifest_id)
    yield view, raw, m
    view.close()
    gate.close()


def test_sqlite_bundle_is_a_bundle_view_with_the_same_answers_as_in_memory(vector_bundle: Any) -> None:
    from edge.policy.bundle_view import BundleView, InMemoryBundle

    view, raw, m = vector_bundle
    assert isinstance(view, BundleView)
    parts = {n: json.loads(b) for n, b in raw.items()}
    mem = InMemoryBundle.from_parts(parts, version=m.version, rules_digest=m.parts["rules"].sha256,
                                    settings_digest=m.parts["settings"].sha256)
    for attr in ("version", "rules_digest", "settings_digest", "settings", "policy", "roster_key"):
        assert getattr(view, attr) == getattr(mem, attr), attr
    assert view.mode == {k: mem.mode[k] for k in ("mode", "since", "reason", "set_by")}
    assert view.mode["mode"] == "emergency"
    assert len(view.rules) == len(mem.rules)
    roster = parts["roster"]
    for s in roster["staff"]:
        assert view.person_by_sub(s["sub"]) == mem.person_by_sub(s["sub"]) == s
        for c in s["codes"]:
            assert view.person_by_code(c) == s
        assert view.visitors(s["sub"], "F001") == mem.visitors(s["sub"], "F001")
    for t in roster["teams"]:
        assert view.team(t["firm"], t["team"]) == mem.team(t["firm"], t["team"]) == t
    for f in parts["firms"]["firms"]:
        assert view.firm(f["id"]) == mem.firm(f["id"]) == f
    assert view.firm("F002")["meltdown"] is True
    v = parts["preregistrations"]["visitors"][0]
    assert view.visitors(v["sub"], v["host_firm"]) == mem.visitors(v["sub"], v["host_firm"]) == [v]
    for e in parts["revocations"]["entries"]:
        assert view.is_revoked(e["hash"]) and mem.is_revoked(e["hash"])
    for miss in ("0" * 32, "f" * 32):
        assert view.person_by_sub(miss) is None and view.person_by_code(miss) is None
        assert not view.is_revoked(miss) and view.visitors(miss, "F001") == []
    assert view.team("F001", "nope") is None and view.firm("F404") is None
    assert type(view.trust).__name__ == "Trust" and len(view.trust.entries) == 1


def test_bundle_file_is_read_only_and_immutable(vector_bundle: Any) -> None:
    import sqlite3

    view, _, _ = vector_bundle
    assert view.path.stat().st_mode & 0o777 == 0o440
    with pytest.raises(sqlite3.OperationalError):
        view._conn.execute("DELETE FROM staff")


def test_holder_swaps_between_decisions_and_a_decision_keeps_its_view(tmp_path: Path) -> None:
    fleet = Fleet()
    gate = Gate(tmp_path / "g", floor="2026-11-01T00:00:00.000Z")
    try:
        gate.updater.install_anchor(fleet.keys_docs[1])
        gate.clock.set(T0)
        holder = BundleHolder(gate.state, gate.dir)
        assert holder.current() == (None, None)
        fleet.publish(server_time_ms=T0 - H_MS)
        gate.updater.poll(fleet.fetcher(server_time_ms=T0))
        v1, p1 = holder.current()
        assert v1.version == 1 and holder.current()[0] is v1, "no change: the same view, no re-open"
        gen = gate.state.generation("bundle")
        gate.updater.poll(fleet.fetcher(server_time_ms=T0 + 1000))  # a statement: last confirmed only
        assert gate.state.generation("bundle") > gen
        assert holder.current()[0] is v1, "a pointer change that names the same file keeps the view"
        in_decision = v1  # a decision holds the view it started with
        sub = fleet.sources["roster"]["staff"][0]["sub"]
        fleet.publish(server_time_ms=T0 + 2000, mode="emergency")
        gate.updater.poll(fleet.fetcher(server_time_ms=T0 + 3000))
        assert not (gate.dir / "bundles" / "1.db").exists(), "M15 deleted the old file"
        assert in_decision.person_by_sub(sub)["sub"] == sub and in_decision.mode["mode"] == "normal"
        v2, p2 = holder.current()
        assert v2 is not v1 and v2.version == 2 and v2.mode["mode"] == "emergency"
    finally:
        gate.close()


def test_validated_parts_build_the_same_file_as_applied(tmp_path: Path) -> None:
    from edge.bundles import BundleFiles
    from sync.bundle import part_bytes

    fleet = Fleet()
    parts = {n: part_bytes(o) for n, o in fleet.sources.items()}
    files = BundleFiles(tmp_path)
    path = files.build_bundle_file("7.db", validate_parts(parts), manifest_id="ab" * 32, version=7, keys_version=1,
                                   rules_digest="r" * 64, settings_digest="s" * 64, issued_at="2026-12-01T08:00:00.000Z")
    with SQLiteBundle(path, manifest_id="ab" * 32, check=True) as view:
        assert view.counts == {"staff": 3, "firms": 1, "visitors": 0, "revocations": 0}
    assert list((tmp_path / "bundles" / "tmp").iterdir()) == []
    with pytest.raises(Exception, match="holds manifest"):
        SQLiteBundle(path, manifest_id="cd" * 32)
