"""sync.bundle without a gate: D1–D5 edge cases, part schemas (M11), building parts from sources
(server flow included), bundle tars, and the server-side signing helpers."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any

import pytest

from sync.bundle import (
    CAPS,
    BundleRejected,
    SourceError,
    build_parts,
    check_anchor,
    check_current,
    check_manifest,
    current_body,
    envelope_bytes,
    load_signed,
    next_manifest_body,
    parse_keys,
    parse_manifest,
    parse_roster_csv,
    part_bytes,
    parts_reader,
    read_bundle_tar,
    sign_current,
    sign_manifest,
    validate_part,
    validate_parts,
    verify_bundle,
)
from tests.bundles.helpers import DAY_MS, DEVICE, T0, Fleet, default_sources, make_key


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


# -- D1–D5 ---------------------------------------------------------------------------------------


def _keys_signed(fleet: Fleet) -> dict[str, Any]:
    return json.loads(fleet.keys_docs[1])["signed"]


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda s: s.update(type="manifest"), "wrong_type"),
    (lambda s: s.update(spec=2), "unsupported_spec"),
    (lambda s: s.update(spec=True), "unsupported_spec"),
    (lambda s: s.update(version=True), "malformed"),
    (lambda s: s.update(version="2"), "malformed"),
    (lambda s: s.update(extra=1), "malformed"),
    (lambda s: s.pop("clock_floor_reset"), "malformed"),
    (lambda s: s.update(expires=s["issued_at"]), "malformed"),
    (lambda s: s.update(issued_at="2026-02-30T00:00:00.000Z"), "malformed"),
    (lambda s: s.update(fleet="Fleet"), "malformed"),
    (lambda s: s.update(max_manifest_validity_s=3599), "malformed"),
    (lambda s: s["roles"]["server"].update(threshold=2), "malformed"),
    (lambda s: s["roles"]["root"].update(threshold=4), "malformed"),
    (lambda s: s["roles"]["root"].update(keyids=list(reversed(s["roles"]["root"]["keyids"]))), "malformed"),
    (lambda s: s["roles"]["publisher"]["keyids"].append(s["roles"]["root"]["keyids"][0]), "malformed"),
    (lambda s: s["keys"].update({"0" * 16: next(iter(s["keys"].values()))}), "keyid_mismatch"),
])
def test_keys_document_body_checks(fleet: Fleet, mutate: Any, reason: str) -> None:
    signed = _keys_signed(fleet)
    mutate(signed)
    try:
        data = envelope_bytes(signed, [])
    except Exception:
        pytest.skip("not representable canonically")
    with pytest.raises(BundleRejected) as e:
        parse_keys(data)
    assert e.value.reason == reason and e.value.doc == "keys"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "malformed"),
    (b"\xef\xbb\xbf{}", "malformed"),
    (b'{"signatures":[],"signed":{},"x":1}', "malformed"),
    (b'{"signatures":[{"keyid":"AB","sig":"00"}],"signed":{}}', "malformed"),
    (b'{"signatures":[],"signed":{"a":1,"a":2}}', "malformed"),
    (b'{"signatures":[],"signed":{"a":1.5}}', "malformed"),
    (b'{"signed":{"type":"keys","spec":1},"signatures":[]}', "not_canonical"),
    (b'{"signatures":[],"signed":{"Type":"keys"}}', "not_canonical"),
    (b'{"signatures":[],"signed":{"spec":1,"type":"current"}}', "wrong_type"),
    (b"x" * (CAPS["keys"] + 1), "too_large"),
])
def test_envelope_d1_to_d4(data: bytes, reason: str) -> None:
    with pytest.raises(BundleRejected) as e:
        load_signed(data, "keys")
    assert e.value.reason == reason


def test_unsorted_signatures_are_not_canonical(fleet: Fleet) -> None:
    doc = json.loads(fleet.keys_docs[1])
    doc["signatures"].reverse()
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(BundleRejected) as e:
        check_anchor(raw)
    assert e.value.reason == "not_canonical"


def test_manifest_time_order_and_previous(fleet: Fleet) -> None:
    m = fleet.publish(server_time_ms=T0)
    signed = json.loads(fleet.manifests[m.id])["signed"]
    for change in ({"server_time": "2026-11-01T00:00:00.000Z"}, {"expires": signed["server_time"]},
                   {"previous": {"version": 1, "sha256": "a" * 64}}, {"note": "x" * 1001}):
        with pytest.raises(BundleRejected) as e:
            parse_manifest(sign_manifest({**signed, **change}, fleet.publishers))
        assert e.value.reason == "malformed"


def test_a_signature_that_fails_beside_a_met_threshold_is_ignored(fleet: Fleet) -> None:
    m = fleet.publish(server_time_ms=T0)
    doc = json.loads(fleet.manifests[m.id])
    stranger = make_key("other-pub", "publisher")
    doc["signatures"].append({"keyid": stranger.keyid, "sig": "00" * 64})
    doc["signatures"].sort(key=lambda s: s["keyid"])
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    res = check_manifest(raw, keys=fleet.keys, fleet=fleet.fleet, site=fleet.site, now_ms=T0, synced=True)
    assert res.manifest.version == 1


# -- current statements (the server side) ----------------------------------------------------------


def test_current_statement_fits_its_cap_and_checks_scope(fleet: Fleet) -> None:
    m = fleet.publish(server_time_ms=T0)
    body = current_body(fleet=fleet.fleet, site=fleet.site, device_id="g" * 63, server_time_ms=T0, nonce="ab" * 16,
                        manifest=m)
    data = sign_current(body, fleet.server)
    assert len(data) < CAPS["current"] // 4
    kw: dict[str, Any] = dict(keys=fleet.keys, fleet=fleet.fleet, site=fleet.site, nonce="ab" * 16,
                              floor_ms=T0 - DAY_MS, now_ms=T0, synced=True)
    with pytest.raises(BundleRejected) as e:
        check_current(data, device_id=DEVICE, **kw)
    assert e.value.reason == "scope_mismatch"
    assert check_current(data, device_id="g" * 63, **kw).sha256 == m.id
    fleet_wide = sign_current({**body, "site": None}, fleet.server)
    assert check_current(fleet_wide, device_id="g" * 63, **kw).site is None
    with pytest.raises(Exception, match="role"):
        sign_current(body, fleet.publishers[0])


def test_resigning_keeps_parts_issued_at_and_note(fleet: Fleet) -> None:
    m1 = fleet.publish(server_time_ms=T0)
    body = next_manifest_body(m1, fleet=fleet.fleet, site=fleet.site, keys_version=1, server_time_ms=T0 + DAY_MS)
    m2 = parse_manifest(sign_manifest(body, fleet.publishers))
    assert (m2.version, m2.previous, m2.parts, m2.issued_at_ms) == (2, (1, m1.id), m1.parts, m1.issued_at_ms)
    assert m2.server_time_ms == T0 + DAY_MS and m2.expires_ms == T0 + 8 * DAY_MS
    first = next_manifest_body(None, fleet=fleet.fleet, site=None, keys_version=1,
                               parts={n: part_bytes(o) for n, o in default_sources().items()}, server_time_ms=T0)
    assert first["version"] == 1 and first["previous"] is None


# -- parts (M11) -----------------------------------------------------------------------------------


def _part(name: str, **change: Any) -> bytes:
    obj = dict(default_sources()[name])
    obj.update(change)
    return part_bytes(obj)


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("mode", _part("mode", mode="panic"), "mode: mode:"),
    ("mode", _part("mode", schema=2), "schema"),
    ("mode", _part("mode", part="rules"), "field part is 'rules'"),
    ("mode", _part("mode", extra=1), "extra: unknown field"),
    ("mode", b'{"part":"mode","part":"mode"}', "duplicate"),
    ("mode", b"\xff\xfe", "not strict JSON"),
    ("mode", b'{"part":"mode","schema":1,"mode":"normal","since":"x","reason":"","set_by":"a"', "not strict JSON"),
    ("roster", _part("roster", roster_key="zz"), "roster_key"),
    ("settings", _part("settings", freshness={"stale_after_s": 10, "expires_after_s": 5, "resign_after_s": 1}),
     "expires_after_s must be above"),
    ("firms", _part("firms", firms=[{"id": "F1", "name": "a", "whitelisted": True, "meltdown": False,
                                     "meltdown_at": None, "closed_loop": False}] * 2), "listed twice"),
    ("revocations", _part("revocations", entries=[{"hash": "ab" * 16, "until": "2026-12-01T00:00:00.000Z",
                                                   "reason": "bored"}]), "reason"),
    ("preregistrations", _part("preregistrations", visitors=[{
        "sub": "ab" * 16, "name": "V*1", "host_firm": "F1", "zones": ["Z"], "ref": "r",
        "valid_from": "2026-12-02T00:00:00.000Z", "valid_until": "2026-12-01T00:00:00.000Z"}]), "valid_from"),
])
def test_part_invalid_names_part_and_field(name: str, data: bytes, needle: str) -> None:
    with pytest.raises(BundleRejected) as e:
        validate_part(name, data)
    assert e.value.reason == "part_invalid" and e.value.detail.startswith(f"{name}: ") and needle in e.value.detail


@pytest.mark.parametrize(("change", "needle"), [
    ({"name": "ZHANG SAN"}, "masked"),
    ({"flags": ["positive", "positive"]}, "repeat"),
    ({"flags": ["bogus"]}, "flags"),
    ({"zones": []}, "zones"),
    ({"role": "Staff"}, "role"),
    ({"colour": "blue"}, "colour"),
    ({"team": ""}, "team"),
    ({"closed_loop": 1}, "closed_loop"),
])
def test_roster_entries_are_checked(change: dict[str, Any], needle: str) -> None:
    roster = default_sources()["roster"]
    roster["staff"][0] = {**roster["staff"][0], **change}
    with pytest.raises(BundleRejected) as e:
        validate_part("roster", part_bytes(roster))
    assert needle in e.value.detail and "staff[0]" in e.value.detail


def test_roster_duplicates_are_refused() -> None:
    roster = default_sources()["roster"]
    roster["staff"][1] = {**roster["staff"][1], "codes": roster["staff"][0]["codes"]}
    with pytest.raises(BundleRejected, match="code hash also held by staff"):
        validate_part("roster", part_bytes(roster))
    roster = default_sources()["roster"]
    roster["teams"] = roster["teams"] * 2
    with pytest.raises(BundleRejected, match="a second row"):
        validate_part("roster", part_bytes(roster))


def test_rules_go_through_the_policy_load_checks() -> None:
    pytest.importorskip("edge.policy.engine")
    parts = {n: part_bytes(o) for n, o in default_sources().items()}
    parts["rules"] = part_bytes({"part": "rules", "schema": 1, "rules": [{"id": "x"}]})
    with pytest.raises(BundleRejected) as e:
        validate_parts(parts)
    assert e.value.reason == "part_invalid" and e.value.detail.startswith("rules: ")


def test_default_rule_set_loads_as_a_rules_part() -> None:
    from tests.bundles.helpers import REPO

    parts = {n: part_bytes(o) for n, o in default_sources().items()}
    rules = json.loads((REPO / "config" / "rules" / "rules.json").read_text(encoding="utf-8"))
    parts["rules"] = part_bytes({"part": "rules", "schema": 1, "rules": rules})
    parsed = validate_parts(parts)
    if parsed.rules is not None:
        assert len(parsed.rules) == len(rules)


# -- sources -------------------------------------------------------------------------------------


def _files(**over: bytes) -> dict[str, bytes]:
    s = default_sources()
    files = {f"{n}.json": part_bytes(o) for n, o in s.items()}
    files.update(over)
    return files


def test_build_parts_accepts_plain_sources_and_built_parts() -> None:
    s = default_sources()
    files = _files(**{"rules.json": b"[]", "firms.json": json.dumps(s["firms"]["firms"]).encode(),
                      "mode.json": json.dumps({k: v for k, v in s["mode"].items() if k not in ("part", "schema")}).encode()})
    parts = build_parts(files)
    assert parts["rules"] == b'{"part":"rules","rules":[],"schema":1}'
    assert parts == build_parts(_files()), "equal content, equal bytes"


def test_build_parts_errors_name_the_file() -> None:
    with pytest.raises(SourceError, match=r"^mode.json: mode: Input should be"):
        build_parts(_files(**{"mode.json": b'{"mode":"panic","since":"2026-11-01T00:00:00.000Z","reason":"","set_by":"a"}'}))
    with pytest.raises(SourceError, match=r"^settings.json line 2: not valid JSON"):
        build_parts(_files(**{"settings.json": b'{\n  "policy": ,\n}'}))
    files = _files()
    del files["trust.json"]
    with pytest.raises(SourceError, match="^trust.json: missing"):
        build_parts(files)
    with pytest.raises(SourceError, match="not a source file"):
        build_parts(_files(**{"evil.sh": b"rm -rf /"}))
    with pytest.raises(SourceError, match="roster.json beside it"):
        build_parts({k: v for k, v in _files().items() if k != "roster.json"} | {"roster.csv": b"sub\n"})


def test_roster_csv_alone_keeps_key_and_teams_of_the_current_roster() -> None:
    base = {n: part_bytes(o) for n, o in default_sources().items()}
    header = "sub,codes,name,role,firm,team,zones,closed_loop,colour,flags,last_test\n"
    row = f"{'cd' * 16},,L*1,logistics,F001,,Z1;Z2,false,,,\n"
    parts = build_parts({"roster.csv": ("\ufeff" + header + row).encode()}, base=base)
    roster = json.loads(parts["roster"])
    assert roster["roster_key"] == "ab" * 32 and roster["teams"] == default_sources()["roster"]["teams"]
    assert roster["staff"] == [{"sub": "cd" * 16, "codes": [], "name": "L*1", "role": "logistics", "firm": "F001",
                                "team": None, "zones": ["Z1", "Z2"], "closed_loop": False, "colour": None,
                                "flags": [], "last_test": None}]
    assert {n: parts[n] for n in parts if n != "roster"} == {n: base[n] for n in base if n != "roster"}


@pytest.mark.parametrize(("body", "line", "column"), [
    ("sub,codes\n", 1, None),
    ("{h}\n{r}\n{r}\n", 3, "sub"),
    ("{h}\n{r}\nab,,N*,staff,F1,,Z,false,,,\n", 3, "sub"),
    ("{h}\n\n\n{r_bad_bool}\n", 4, "closed_loop"),
    ('{h}\n"{sub}",,"multi\nline*",staff,F1,,Z,false,,,\n{r_bad_time}\n', 4, "last_test"),
    ("{h}\n{r},extra\n", 2, None),
])
def test_roster_csv_errors_name_line_and_column(body: str, line: int, column: str | None) -> None:
    h = "sub,codes,name,role,firm,team,zones,closed_loop,colour,flags,last_test"
    sub = "ef" * 16
    r = f"{sub},,N*1,staff,F1,,Z,false,,,"
    text = body.format(h=h, r=r, sub="12" * 16, r_bad_bool=r.replace("false", "yes"),
                       r_bad_time=r.replace(",,,", ",,,2026-13-01"))
    with pytest.raises(SourceError) as e:
        parse_roster_csv(text.encode())
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    assert "\n" not in str(e.value)


def test_roster_csv_garbage_and_empty() -> None:
    with pytest.raises(SourceError, match="invalid UTF-8"):
        parse_roster_csv(b"sub\xff\n")
    with pytest.raises(SourceError, match="header row"):
        parse_roster_csv(b"")


# -- bundle tars (POST /v1/admin/bundles) --------------------------------------------------------------


def _tar(members: dict[str, bytes], *, gz: bool = False, link: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("parts/" + "0" * 64)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return gzip.compress(buf.getvalue(), compresslevel=1) if gz else buf.getvalue()


def test_bundle_tar_round_trip_and_verify(fleet: Fleet) -> None:
    m = fleet.publish(server_time_ms=T0)
    members = {"bundle/manifest.json": fleet.manifests[m.id]}
    members.update({f"bundle/parts/{sha}": data for sha, data in fleet.parts.items()})
    manifest, parts = read_bundle_tar(_tar(members, gz=True))
    rep = verify_bundle(manifest, parts_reader(parts), keys=fleet.keys, now_ms=T0)
    assert rep.ok and rep.version == 1 and rep.id == m.id and set(rep.part_bytes) == set(m.parts)
    del parts[m.parts["mode"].sha256]
    rep = verify_bundle(manifest, parts_reader(parts), keys=fleet.keys, now_ms=T0)
    assert (rep.ok, rep.reason) == (False, "fetch_failed") and "mode" in rep.detail


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: b"not a tar at all", "malformed"),
    (lambda: _tar({"parts/" + "0" * 64: b"x"}), "malformed"),
    (lambda: _tar({"manifest.json": b"{}"}, link=True), "malformed"),
    (lambda: _tar({"manifest.json": b" " * (CAPS["manifest"] + 1)}), "too_large"),
    (lambda: _tar({"manifest.json": b"{}", "junk": b"\0" * (42 << 20)}, gz=True), "too_large"),
    (lambda: _tar({f"parts/{i:064x}": b"\0" * (12 << 20) for i in range(3)}, gz=True), "part_too_large"),
])
def test_bundle_tar_refusals(make: Any, reason: str) -> None:
    with pytest.raises(BundleRejected) as e:
        read_bundle_tar(make())
    assert e.value.reason == reason
