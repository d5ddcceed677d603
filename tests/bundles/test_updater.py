"""The gate's update algorithm end to end (bundles.md §3): polls against a fleet, rejections that keep
the old bundle in force, keys rotation and recovery, start-up repairs, events."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from edge.bundles import SQLiteBundle, freshness
from edge.bundles import updater as updater_mod
from sync.bundle import PART_CAPS, PartRef, decode_capped, manifest_body, sign_document, sign_manifest
from sync.timefmt import format_ms
from tests.bundles.helpers import DAY_MS, H_MS, T0, DictFetcher, Fleet, Gate, make_key


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture
def gate(tmp_path: Path, fleet: Fleet):
    g = Gate(tmp_path / "gate", floor="2026-11-01T00:00:00.000Z")
    g.updater.install_anchor(fleet.keys_docs[1])
    g.clock.set(T0, "synced")
    yield g
    g.close()


def poll(gate: Gate, fleet: Fleet, at_ms: int, **kw: Any) -> Any:
    gate.clock.set(at_ms, "synced")
    f = fleet.fetcher(server_time_ms=at_ms, **kw)
    return gate.updater.poll(f), f


def in_force(gate: Gate) -> tuple[int, str, str]:
    """(version, manifest id, mode) of the bundle in force, read through its bundle file."""
    p = gate.pointer()
    assert p is not None
    with SQLiteBundle(gate.dir / "bundles" / p.bundle_file, manifest_id=p.manifest_id) as view:
        assert view.version == p.version
        return p.version, p.manifest_id, view.mode["mode"]


# -- polls -------------------------------------------------------------------------------------------


def test_poll_without_anything_published_is_no_bundle(gate: Gate, fleet: Fleet) -> None:
    res, f = poll(gate, fleet, T0)
    assert res.status == "no_bundle" and res.ok and res.version == 0
    assert f.fetched == ["current"] and gate.pointer() is None


def test_poll_applies_the_current_manifest_then_confirms_it(gate: Gate, fleet: Fleet) -> None:
    m = fleet.publish(server_time_ms=T0 - H_MS)
    res, f = poll(gate, fleet, T0)
    assert (res.status, res.applied, res.version) == ("applied", 1, 1)
    assert f.fetched[:2] == ["current", f"manifest/{m.id[:8]}"] and len(f.fetched) == 2 + 8
    p = gate.pointer()
    assert p.last_confirmed_ms == T0, "M13: last confirmed = the later server_time of the statement"
    assert gate.floor() == T0
    applied = gate.events_of("bundle_applied")
    assert applied == [{"version": 1, "sha256": m.id, "keys_version": 1, "previous_version": None,
                        "issued_at": format_ms(T0 - H_MS), "mode": "normal"}]
    assert p.applied_seq is not None
    res, f = poll(gate, fleet, T0 + H_MS)
    assert res.status == "up_to_date" and f.fetched == ["current"], "nothing downloaded twice"
    assert gate.pointer().last_confirmed_ms == T0 + H_MS
    assert freshness(gate.pointer(), gate.clock.read()).state == "fresh"


def test_only_changed_parts_are_downloaded(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    fleet.publish(server_time_ms=T0, mode="emergency")
    res, f = poll(gate, fleet, T0 + 60_000)
    assert res.status == "applied" and in_force(gate)[2] == "emergency"
    assert [x for x in f.fetched if x.startswith("part/")] == [f"part/{fleet.current.parts['mode'].sha256[:8]}"]
    assert sorted(p.name for p in (gate.dir / "parts").iterdir() if p.is_file()) == sorted(
        r.sha256 for r in fleet.current.parts.values()), "M15: unused part files deleted"
    assert [p.name for p in (gate.dir / "bundles").glob("*.db")] == ["2.db"]


def test_network_failure_is_fetch_failed_and_changes_nothing(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    before = gate.snapshot()
    res, _ = poll(gate, fleet, T0, down=True)
    assert res.status == "fetch_failed" and not res.ok
    assert gate.snapshot() == before and gate.events_of("bundle_rejected") == []


def test_part_download_failure_keeps_the_old_bundle_and_resumes(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    roster = dict(fleet.sources["roster"], roster_key="cd" * 32)
    m2 = fleet.publish(server_time_ms=T0, changes={"roster": roster})
    f = fleet.fetcher(server_time_ms=T0 + 1000)
    del f.parts[m2.parts["roster"].sha256]
    gate.clock.set(T0 + 1000)
    res = gate.updater.poll(f)
    assert res.status == "fetch_failed" and in_force(gate)[0] == 1
    res, _ = poll(gate, fleet, T0 + 2000)
    assert res.status == "applied" and in_force(gate)[0] == 2


def test_rejected_manifest_is_not_fetched_again_for_an_hour(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    bad = fleet.publish(server_time_ms=T0, signers=[make_key("stranger", "publisher")])
    res, f = poll(gate, fleet, T0 + 1000)
    assert res.rejection.reason == "unknown_keyid" and f"manifest/{bad.id[:8]}" in f.fetched
    res, f = poll(gate, fleet, T0 + 2000)
    assert res.status == "rejected" and not any(x.startswith("manifest/") for x in f.fetched)
    assert gate.updater.update_failure() == "unknown_keyid", "§4.4: known newer manifest not applied for 2 polls"
    assert len(gate.events_of("bundle_rejected")) == 1, "one bundle_rejected per document per boot"
    gate.clock.boottime += REJECT_HOUR
    res, f = poll(gate, fleet, T0 + REJECT_HOUR)
    assert f"manifest/{bad.id[:8]}" in f.fetched and res.rejection.reason == "unknown_keyid"
    assert len(gate.events_of("bundle_rejected")) == 1


REJECT_HOUR = updater_mod.REJECT_MEMORY_MS


# -- the acceptance rejections: each leaves the old bundle fully in force ------------------------------


def _oversize(fleet: Fleet) -> bytes:
    refs = {n: PartRef(n, len(b), r) for n, (b, r) in (
        (n, (fleet.parts[fleet.current.parts[n].sha256], fleet.current.parts[n].sha256)) for n in fleet.current.parts)}
    refs["roster"] = PartRef("roster", PART_CAPS["roster"] + 1, "0" * 64)
    body = manifest_body(fleet=fleet.fleet, site=fleet.site, version=fleet.current.version + 1, keys_version=1,
                         parts=refs, issued_at_ms=T0, server_time_ms=T0, expires_ms=T0 + DAY_MS,
                         previous=fleet.current)
    return sign_manifest(body, fleet.publishers)


@pytest.mark.parametrize("attack", ["rollback", "freeze", "mix_and_match", "under_threshold", "wrong_role",
                                    "oversize_part", "malformed_json", "version_reuse", "fork", "future"])
def test_attack_is_rejected_and_the_old_bundle_stays_in_force(gate: Gate, fleet: Fleet, attack: str) -> None:
    if attack == "under_threshold":  # publishers 2-of-2 from the start
        fleet.rotate(publishers=[fleet.publishers[0], make_key("fleet-pub-2", "publisher")], publisher_threshold=2,
                     issued_at_ms=T0 - 3 * H_MS)
    m1 = fleet.publish(server_time_ms=T0 - 2 * H_MS)
    poll(gate, fleet, T0 - H_MS)
    m2 = fleet.publish(server_time_ms=T0 - H_MS, mode="emergency")
    poll(gate, fleet, T0 - H_MS + 1000)
    assert in_force(gate) == (2, m2.id, "emergency")
    now = T0
    expected = attack
    target: Any = None
    mods: list[Any] = []
    if attack == "rollback":
        target = m1
    elif attack == "freeze":  # an old, expired manifest replayed as current
        target = fleet.publish(server_time_ms=T0 - 3 * DAY_MS, validity_s=3600, issued_at_ms=T0 - 3 * DAY_MS)
        expected = "expired"
    elif attack == "mix_and_match":  # the roster bytes of another bundle under this listing
        target = fleet.publish(server_time_ms=T0, changes={"roster": dict(fleet.sources["roster"], roster_key="ee" * 32)})
        mods.append(lambda f: f.parts.__setitem__(target.parts["roster"].sha256,
                                                  f.parts[m1.parts["roster"].sha256][:-1] + b" "))
        expected = "part_hash_mismatch"
    elif attack == "under_threshold":
        target = fleet.publish(server_time_ms=T0, signers=fleet.publishers[:1])
        expected = "below_threshold"
    elif attack == "wrong_role":
        body = manifest_body(fleet=fleet.fleet, site=fleet.site, version=3, keys_version=1, parts=fleet.current.parts,
                             issued_at_ms=T0, server_time_ms=T0, expires_ms=T0 + DAY_MS, previous=m2)
        data = sign_document("manifest", body, [])
        envelope = json.loads(data)
        envelope["signatures"] = [{"keyid": k.keyid, "sig": k.sign(b"checkpoint/manifest/v1\n"
                                                                    + json.dumps(body, sort_keys=True,
                                                                                 separators=(",", ":"),
                                                                                 ensure_ascii=False).encode()).hex()}
                                  for k in sorted(fleet.roots[:2], key=lambda k: k.keyid)]
        raw = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        from sync.bundle import parse_manifest

        target = parse_manifest(raw)
        fleet.manifests[target.id] = raw
    elif attack == "oversize_part":
        raw = _oversize(fleet)
        from sync.bundle import parse_manifest

        target = parse_manifest(raw)
        fleet.manifests[target.id] = raw
        expected = "part_too_large"
    elif attack == "malformed_json":
        target = fleet.publish(server_time_ms=T0)
        mods.append(lambda f: f.manifests.__setitem__(target.id, f.manifests[target.id][:-7]))
        expected = "malformed"
    elif attack == "version_reuse":
        target = fleet.publish(server_time_ms=T0, version=2, previous=m1, mode="normal")
    elif attack == "fork":
        target = fleet.publish(server_time_ms=T0, version=3, previous=m1)
    elif attack == "future":  # a synced gate refuses a server_time an hour ahead
        target = fleet.publish(server_time_ms=T0 + H_MS, previous=m2)
        expected = "issued_in_future"
    f = fleet.fetcher(server_time_ms=now)
    for mod in mods:
        mod(f)
    before = gate.snapshot()
    gate.clock.set(now, "synced")
    f.current_doc = lambda nonce: fleet.statement(nonce, server_time_ms=now, manifest=target)
    res = gate.updater.poll(f)
    assert res.status == "rejected", res
    assert res.rejection.reason == expected, res.rejection
    assert res.rejection.detail.startswith("manifest:")
    after = gate.snapshot()
    assert after["rows"]["bundle"] == before["rows"]["bundle"], "the pointer did not move"
    assert after["bundle_files"] == before["bundle_files"] and after["parts"] == before["parts"]
    assert in_force(gate) == (2, m2.id, "emergency"), "the old bundle stays fully in force"
    ev = gate.events_of("bundle_rejected")[-1]
    assert ev["reason"] == expected and ev["sha256"] == target.id


def test_malformed_garbage_truncated_and_oversize_statements(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    before = gate.snapshot()
    for raw, reason in ((b"\x00\xff garbage", "malformed"), (b'{"signatures":[],"signed":{', "malformed"),
                        (b"[" * 5000, "too_large"), (b"", "malformed")):
        f = fleet.fetcher(server_time_ms=T0)
        f.current_doc = raw
        res = gate.updater.poll(f)
        assert res.rejection.reason == reason
        assert res.rejection.detail.startswith("current:")
    assert gate.snapshot()["rows"]["bundle"] == before["rows"]["bundle"]


# -- keys ------------------------------------------------------------------------------------------


def test_keys_rotation_arrives_with_the_poll(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    new_roots = [make_key(f"fleet-root-{i}", "root") for i in range(4, 7)]
    fleet.rotate(roots=new_roots, server=make_key("fleet-srv-2", "server"), issued_at_ms=T0)
    fleet.publish(server_time_ms=T0 + 1000)
    res, f = poll(gate, fleet, T0 + 2000)
    assert (res.status, res.keys_applied, res.keys_version, res.version) == ("applied", (2,), 2, 2)
    assert f.fetched[:3] == ["current", "keys/2", "keys/3"]
    assert gate.events_of("keys_applied")[-1] == {"keys_version": 2, "sha256": fleet.keys.id,
                                                   "clock_floor_reset": None}
    assert not gate.pointer().signer_revoked, "the publisher did not change: K7 keeps the bundle valid"


def test_rotation_that_revokes_the_publisher_marks_signer_revoked_then_recovers(gate: Gate, fleet: Fleet) -> None:
    m1 = fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    fleet.rotate(publishers=[make_key("fleet-pub-2", "publisher")], issued_at_ms=T0)
    # the keys arrive, but the new manifest is not fetched (network drops after K)
    f = fleet.fetcher(server_time_ms=T0 + 1000)
    f.current_doc = lambda nonce: fleet.statement(nonce, server_time_ms=T0 + 1000, manifest=m1).replace(
        b'"keys_version":1', b'"keys_version":2')
    gate.clock.set(T0 + 1000)
    res = gate.updater.poll(f)
    assert res.keys_applied == (2,)
    p = gate.pointer()
    assert p.signer_revoked and freshness(p, gate.clock.read()).state == "expired"
    assert gate.events_of("bundle_state")[-1]["cause"] == "signer_revoked"
    fleet.publish(server_time_ms=T0 + 2000)
    res, _ = poll(gate, fleet, T0 + 3000)
    assert res.status == "applied"
    p = gate.pointer()
    assert not p.signer_revoked and p.keys_version == 2


def test_keys_chain_longer_than_32_takes_two_polls(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    for i in range(40):
        fleet.rotate(issued_at_ms=T0 + i)
    fleet.publish(server_time_ms=T0 + 60_000)
    res, f = poll(gate, fleet, T0 + 120_000)
    assert res.keys_applied == tuple(range(2, 34)) and res.keys_version == 33
    assert res.rejection.reason == "keys_version_mismatch"
    res, f = poll(gate, fleet, T0 + 180_000)
    assert res.keys_applied == tuple(range(34, 42)) and res.status == "applied" and res.keys_version == 41


def test_expired_keys_refuse_everything_and_report_once(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    late = fleet.keys.expires_ms + DAY_MS
    for _ in range(2):
        res, _ = poll(gate, fleet, late)
        assert res.rejection.reason == "keys_expired"
    states = [e for e in gate.events_of("bundle_state") if e["cause"] == "keys_expired"]
    assert len(states) == 1 and states[0]["from"] == states[0]["to"]


def test_clock_floor_reset_undoes_a_floor_pushed_into_the_future(tmp_path: Path, fleet: Fleet) -> None:
    g = Gate(tmp_path / "g", floor="2026-11-01T00:00:00.000Z")
    try:
        g.updater.install_anchor(fleet.keys_docs[1])
        stolen = T0 + 300 * DAY_MS  # a stolen publisher key pushed server_time far ahead
        fleet.publish(server_time_ms=stolen, issued_at_ms=stolen)
        g.clock.set(T0, "floor")  # not synced: the gate believes it
        assert g.updater.poll(fleet.fetcher(server_time_ms=stolen)).status == "applied"
        assert g.floor() == stolen
        fleet.rotate(publishers=[make_key("fleet-pub-2", "publisher")], issued_at_ms=T0,
                     clock_floor_reset_ms=T0 - H_MS)
        res = g.updater.offer_keys(fleet.keys_docs[2])
        assert res.outcome == "accept"
        assert g.floor() == T0, "floor := clock_floor_reset, then raised to issued_at"
        assert g.events_of("keys_applied")[-1]["clock_floor_reset"] == format_ms(T0 - H_MS)
        warn = g.events_of("clock_warning")[-1]
        assert warn["cause"] == "floor_reset" and warn["floor"] == format_ms(T0)
        assert g.pointer().signer_revoked
    finally:
        g.close()


# -- crash safety, start-up ---------------------------------------------------------------------------


class Crash(BaseException):
    pass


@pytest.mark.parametrize("point", ["bundle.m13.committed", "bundle.m13.event"])
def test_crash_between_switch_and_event_delays_the_event_never_loses_or_doubles_it(
    gate: Gate, fleet: Fleet, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)

    def crash(name: str) -> None:
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(updater_mod, "crashpoint", crash)
    with pytest.raises(Crash):
        poll(gate, fleet, T0)
    monkeypatch.undo()
    p = gate.pointer()
    assert p.version == 1 and p.applied_seq is None, "switched, event seq not yet stored"
    report = gate.updater.startup()
    assert report.events_written == ("bundle_applied",)
    applied = gate.events_of("bundle_applied")
    assert len(applied) == 1 and applied[0]["version"] == 1
    assert gate.pointer().applied_seq is not None
    assert gate.updater.startup().events_written == ()


def test_crash_between_keys_switch_and_event(gate: Gate, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet.rotate(issued_at_ms=T0)

    def crash(name: str) -> None:
        if name == "bundle.k6.committed":
            raise Crash(name)

    monkeypatch.setattr(updater_mod, "crashpoint", crash)
    with pytest.raises(Crash):
        gate.updater.offer_keys(fleet.keys_docs[2])
    monkeypatch.undo()
    assert gate.updater.keys().version == 2 and gate.state.read_row("keys")["applied_seq"] is None
    assert gate.updater.startup().events_written == ("keys_applied",)
    assert [e["keys_version"] for e in gate.events_of("keys_applied")] == [1, 2]


def test_startup_cleans_temp_files_and_stray_bundle_files(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    (gate.dir / "parts" / "tmp" / "half").write_bytes(b"x")
    (gate.dir / "bundles" / "tmp" / "half").write_bytes(b"x")
    (gate.dir / "bundles" / "9.db").write_bytes(b"x")
    report = gate.updater.startup()
    assert report.removed_tmp == 2 and report.removed_bundle_files == ("9.db",) and report.corrupt is None
    assert [p.name for p in (gate.dir / "bundles").glob("*.db")] == ["1.db"]


@pytest.mark.parametrize("damage", ["part", "part_missing", "bundle_file", "bundle_file_missing"])
def test_startup_with_corruption_marks_corrupt_and_the_next_poll_reapplies(gate: Gate, fleet: Fleet, damage: str) -> None:
    m = fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    p = gate.pointer()
    if damage.startswith("part"):
        path = gate.dir / "parts" / m.parts["roster"].sha256
        path.chmod(0o640)
        if damage == "part":
            path.write_bytes(path.read_bytes().replace(b"F001", b"F999"))
        else:
            path.unlink()
    else:
        path = gate.dir / "bundles" / p.bundle_file
        path.chmod(0o640)
        if damage == "bundle_file":
            data = bytearray(path.read_bytes())
            data[100:4000] = b"\xff" * 3900
            path.write_bytes(bytes(data))
        else:
            path.unlink()
    report = gate.updater.startup()
    assert report.corrupt is not None
    p = gate.pointer()
    assert p.corrupt and freshness(p, gate.clock.read()).state == "expired"
    assert gate.events_of("bundle_state")[-1]["cause"] == "corrupt"
    res, f = poll(gate, fleet, T0 + 1000)
    assert res.status == "applied" and res.applied == 1, "the same id is re-applied after corruption"
    if damage.startswith("part"):
        assert f"part/{m.parts['roster'].sha256[:8]}" in f.fetched
    p = gate.pointer()
    assert not p.corrupt and p.manifest_id == m.id and p.bundle_file == "1-k1.db", "M12: a new file beside the old name"
    assert gate.updater.startup().corrupt is None
    assert in_force(gate)[:2] == (1, m.id)


def test_gate_process_opens_a_damaged_bundle_file_as_no_view(gate: Gate, fleet: Fleet) -> None:
    from edge.bundles import BundleHolder

    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    holder = BundleHolder(gate.state, gate.dir)
    view, p = holder.current()
    assert view is not None and p.version == 1
    path = gate.dir / "bundles" / p.bundle_file
    path.chmod(0o640)
    path.write_bytes(b"not sqlite" * 100)
    holder2 = BundleHolder(gate.state, gate.dir)
    view2, p2 = holder2.current()
    assert view2 is None and holder2.open_error and p2.version == 1
    assert freshness(p2, gate.clock.read(), unreadable=True).state == "expired"
    view2, p2 = holder2.current()
    assert p2.corrupt, "the gate process marks the pointer corrupt so that the agent re-applies it"
    res, _ = poll(gate, fleet, T0 + 1000)
    assert res.status == "applied" and not gate.pointer().corrupt
    view3, p3 = holder2.current()
    assert view3 is not None and p3.bundle_file == "1-k1.db"


# -- size caps through compression -------------------------------------------------------------------


def test_compressed_part_inflating_past_its_cap_is_cut_at_length_plus_one(gate: Gate, fleet: Fleet) -> None:
    m = fleet.publish(server_time_ms=T0 - H_MS)
    bomb = gzip.compress(b"\x00" * (64 << 20), compresslevel=9)
    assert len(bomb) < 100_000

    class GzipFetcher(DictFetcher):
        def part(self, sha256: str, max_bytes: int) -> bytes:
            self.fetched.append(f"part/{sha256[:8]}")
            if sha256 == m.parts["roster"].sha256:
                chunks = [bomb[i:i + 4096] for i in range(0, len(bomb), 4096)]
                out = decode_capped(iter(chunks), "gzip", max_bytes)
                assert len(out) == max_bytes, "decoded as a stream, cut at the cap"
                return out
            return self.parts[sha256][:max_bytes]

    f = GzipFetcher(manifests=fleet.manifests, parts=fleet.parts)
    f.current_doc = lambda nonce: fleet.statement(nonce, server_time_ms=T0)
    gate.clock.set(T0)
    res = gate.updater.poll(f)
    assert res.rejection.reason == "part_length_mismatch"
    assert gate.pointer() is None


def test_decode_capped_bounds_output_for_every_encoding() -> None:
    import zlib

    raw = b"a" * 100_000
    assert decode_capped([raw], None, 10) == b"a" * 10
    assert decode_capped([gzip.compress(raw)], "gzip", 1001) == b"a" * 1001
    assert decode_capped([zlib.compress(raw)], "deflate", 5) == b"a" * 5
    assert decode_capped([gzip.compress(b"abc")], "gzip", 100) == b"abc"
    with pytest.raises(ValueError):
        decode_capped([b"not gzip"], "gzip", 100)
    with pytest.raises(ValueError):
        decode_capped([b"x"], "br", 100)


# -- unchanged data parts are reused, not re-read (the one-key switch with a large roster) ----------


def test_mode_switch_reuses_the_unchanged_roster_tables(gate: Gate, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.bundles.crash_harness import _roster

    fleet.sources["roster"] = _roster(fleet, 500, "d4")
    m1 = fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    read: list[str] = []
    real = gate.updater.files.read_part
    monkeypatch.setattr(gate.updater.files, "read_part",
                        lambda sha, n: read.append(sha) or real(sha, n))
    m2 = fleet.publish(server_time_ms=T0, mode="emergency")
    res, f = poll(gate, fleet, T0 + 1000)
    assert res.status == "applied" and in_force(gate)[2] == "emergency"
    for big in ("roster", "firms", "preregistrations", "revocations"):
        assert m2.parts[big].sha256 not in read, f"{big} is unchanged: not read or parsed again"
    p = gate.pointer()
    with SQLiteBundle(gate.dir / "bundles" / p.bundle_file, manifest_id=p.manifest_id, check=True) as view:
        assert view.counts["staff"] == 500 and view.roster_key == bytes.fromhex("d4" * 32)
        s = fleet.sources["roster"]["staff"][123]
        assert view.person_by_code(s["codes"][0]) == s
    assert m1.parts["roster"] == m2.parts["roster"]
    assert gate.updater.startup().corrupt is None, "every part file of the manifest in force is still there"


def test_reuse_falls_back_to_the_parts_when_the_file_in_force_is_unreadable(gate: Gate, fleet: Fleet) -> None:
    fleet.publish(server_time_ms=T0 - H_MS)
    poll(gate, fleet, T0)
    path = gate.dir / "bundles" / gate.pointer().bundle_file
    path.chmod(0o640)
    path.write_bytes(b"\0" * 4096)  # damaged after start-up checked it: the pointer is not corrupt
    fleet.publish(server_time_ms=T0, mode="emergency")
    res, _ = poll(gate, fleet, T0 + 1000)
    assert res.status == "applied" and in_force(gate)[2] == "emergency"
    p = gate.pointer()
    with SQLiteBundle(gate.dir / "bundles" / p.bundle_file, manifest_id=p.manifest_id, check=True) as view:
        assert view.counts["staff"] == 3
