"""What the server numbers, signs and serves (bundles.md §1.3-1.6, §2.4, §4.3, §6; sync.md §4.1).

Every document the server hands out is checked here with the gate's own
verifier (``sync.bundle.verify``), so a test passes only if a real gate would
accept what the server serves.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sync.bundle import PART_NAMES, parse_keys
from sync.bundle.publish import keys_body, manifest_body, sign_document, sign_manifest
from sync.bundle.verify import check_current, check_manifest, check_part_bytes
from sync.keys import KeyFile, generate_key
from sync.signing import new_nonce
from tests.server.harness import SITE, T0, ServerHarness

REPO = Path(__file__).resolve().parents[2]
FLEET = "test-fleet"


def sources(mode: str = "normal") -> dict[str, bytes]:
    return {
        "rules.json": (REPO / "config/rules/rules.json").read_bytes(),
        "settings.json": (REPO / "config/rules/settings.json").read_bytes(),
        "trust.json": json.dumps({"keys": []}).encode(),
        "roster.json": json.dumps({"roster_key": "ab" * 32, "staff": [], "teams": []}).encode(),
        "firms.json": b"[]", "preregistrations.json": b"[]", "revocations.json": b"[]",
        "mode.json": json.dumps({"mode": mode, "since": "2022-04-11T00:00:00.000Z", "reason": "",
                                 "set_by": "admin"}).encode(),
    }


class Fleet:
    """Root and publisher keys and the keys documents of a test fleet."""

    def __init__(self, server_key: KeyFile) -> None:
        self.root = generate_key("root", "root-1")
        self.publisher = generate_key("publisher", "publisher-1")
        self.server_key = server_key
        body = keys_body(previous=None, fleet=FLEET, root=[self.root], publisher=[self.publisher],
                         server=[server_key.public_only()], issued_at_ms=T0 - 86_400_000)
        self.keys1 = sign_document("keys", body, [self.root])
        self.keys = parse_keys(self.keys1)


@pytest.fixture
def fleet() -> Fleet:
    from tests.server.harness import key_from_seed

    return Fleet(key_from_seed("server", "checkpoint test server key v1"))


@pytest.fixture
def pub_server(db_url: str, tmp_path: Path, fleet: Fleet) -> Any:
    h = ServerHarness(db_url, tmp_path, server_key=fleet.server_key, publisher_keys=[fleet.publisher])
    yield h
    h.close()


def upload_sources(h: ServerHarness, files: dict[str, bytes], site: str = "", note: str = "") -> Any:
    return h.admin("POST", "/v1/admin/sources", data={"site": site, "note": note},
                   files=[("files", (name, data)) for name, data in files.items()])


def fetch_verified(h: ServerHarness, gate: Any, fleet: Fleet, site: str | None = SITE) -> Any:
    """Poll as a gate would: current statement (T), manifest (M2-M9), every part (M10)."""
    nonce = new_nonce()
    r = gate.request("GET", "bundle", nonce=nonce)
    assert r.status_code == 200, r.text
    cur = check_current(r.content, keys=fleet.keys, fleet=FLEET, site=site, device_id=gate.device_id, nonce=nonce,
                        floor_ms=0, now_ms=h.clock(), synced=True)
    r = gate.request("GET", f"manifests/{cur.sha256}")
    assert r.status_code == 200
    checked = check_manifest(r.content, keys=fleet.keys, fleet=FLEET, site=site, now_ms=h.clock(), synced=True,
                             expected_id=cur.sha256)
    parts = {}
    for name, ref in checked.manifest.parts.items():
        pr = gate.request("GET", f"parts/{ref.sha256}")
        assert pr.status_code == 200
        check_part_bytes(ref, pr.content)
        parts[name] = pr.content
    return cur, checked.manifest, parts


def test_publish_from_sources_poll_and_switch_mode(pub_server: ServerHarness, fleet: Fleet) -> None:
    h = pub_server
    gate = h.gate()
    r = gate.request("GET", "bundle")
    assert r.status_code == 404 and r.json()["error"] == "no_bundle"
    gate.check_time(r.json())
    r = h.admin("POST", "/v1/admin/keys", content=fleet.keys1, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    assert h.client.get("/v1/keys/1.json").content == fleet.keys1  # public, byte for byte
    assert h.client.get("/v1/keys/2.json").status_code == 404

    r = upload_sources(h, sources(), site="", note="first rules")
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    cur, m1, parts1 = fetch_verified(h, gate, fleet)
    assert (cur.version, m1.version, m1.site, m1.note) == (1, 1, None, "first rules")
    assert json.loads(parts1["mode"])["mode"] == "normal"
    # A gate reporting an older bundle is told to poll now.
    hb = gate.request("POST", "heartbeat", json.dumps({"bundle": {"version": 0}}).encode())
    assert hb.json()["poll_bundle_now"] is True
    hb = gate.request("POST", "heartbeat", json.dumps({"bundle": {"version": 1, "sha256": m1.id}}).encode())
    assert hb.json()["poll_bundle_now"] is False

    # The one-key switch: a new mode part and a new signed manifest, every other part unchanged.
    h.clock.advance(60)
    r = h.admin("POST", "/v1/admin/mode", json={"site": None, "mode": "emergency", "reason": "positive case"})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    cur, m2, parts2 = fetch_verified(h, gate, fleet)
    assert m2.version == 2 and m2.previous == (1, m1.id)
    mode = json.loads(parts2["mode"])
    assert (mode["mode"], mode["reason"], mode["set_by"]) == ("emergency", "positive case", "test-admin")
    assert {n for n in PART_NAMES if m1.parts[n].sha256 != m2.parts[n].sha256} == {"mode"}
    hb = gate.request("POST", "heartbeat", json.dumps({"bundle": {"version": 1, "sha256": m1.id}}).encode())
    assert hb.json()["poll_bundle_now"] is True

    # A roster update is roster.csv alone: roster_key and teams stay as in the current roster part.
    csv = ("sub,codes,name,role,firm,team,zones,closed_loop,colour,flags,last_test\r\n"
           "99402d8da8317fc267036c4775b68b39,,张*三,staff,F0012,,*,true,green,,2022-04-11T08:00:00.000Z\r\n")
    r = upload_sources(h, {"roster.csv": csv.encode()})
    assert r.status_code == 201, r.text
    _, m3, parts3 = fetch_verified(h, gate, fleet)
    roster = json.loads(parts3["roster"])
    assert roster["roster_key"] == "ab" * 32 and len(roster["staff"]) == 1
    assert json.loads(parts3["mode"])["mode"] == "emergency"  # kept
    # A bad row is refused with its line and column; nothing is published.
    r = upload_sources(h, {"roster.csv": (csv + "zz,,x,staff,F1,,*,maybe,,,\r\n").encode()})
    assert r.status_code == 422 and "line 3" in r.json()["detail"]
    assert fetch_verified(h, gate, fleet)[1].version == 3


def test_resigning_keeps_issued_at_and_moves_server_time(pub_server: ServerHarness, fleet: Fleet) -> None:
    from sync.server.publish import resign_due

    h = pub_server
    gate = h.gate()
    h.admin("POST", "/v1/admin/keys", content=fleet.keys1)
    assert upload_sources(h, sources()).status_code == 201
    assert resign_due(h.state) == []  # young enough
    h.clock.advance(86_400 + 1)  # settings.freshness.resign_after_s = 86400
    assert len(resign_due(h.state)) == 1
    _, m, _ = fetch_verified(h, gate, fleet)
    assert m.version == 2 and m.server_time_ms == h.clock() and m.issued_at_ms == T0


def test_offline_flow_accepts_signed_bundles_only(db_url: str, tmp_path: Path, fleet: Fleet) -> None:
    h = ServerHarness(db_url, tmp_path, server_key=fleet.server_key, publisher_keys=[])
    try:
        gate = h.gate()
        h.admin("POST", "/v1/admin/keys", content=fleet.keys1)
        assert upload_sources(h, sources()).json()["error"] == "offline_flow"
        r = h.admin("POST", "/v1/admin/mode", json={"site": None, "mode": "emergency", "reason": ""})
        assert r.status_code == 409 and r.json()["error"] == "offline_flow"

        from sync.bundle import build_parts

        parts = build_parts(sources())

        def bundle(version: int, previous: Any = None, parts: dict[str, bytes] = parts, key: KeyFile | None = None,
                   tamper: bool = False) -> tuple[bytes, str]:
            body = manifest_body(fleet=FLEET, site=None, version=version, keys_version=1, parts=parts,
                                 issued_at_ms=T0 - 1000, server_time_ms=T0 - 1000, expires_ms=T0 + 7 * 86_400_000,
                                 previous=previous, note="offline")
            data = sign_manifest(body, [key or fleet.publisher])
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                def add(name: str, blob: bytes) -> None:
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
                add("bundle/manifest.json", data)
                import hashlib

                for blob in parts.values():
                    add(f"bundle/parts/{hashlib.sha256(blob).hexdigest()}", blob + (b" " if tamper else b""))
            from sync.bundle import parse_manifest

            return buf.getvalue(), parse_manifest(data).id

        tar1, id1 = bundle(1)
        r = h.admin("POST", "/v1/admin/bundles", content=tar1, headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 201, r.text
        assert (r.json()["id"], r.json()["version"]) == (id1, 1)
        _, m, _ = fetch_verified(h, gate, fleet)
        assert m.id == id1
        r = h.admin("POST", "/v1/admin/bundles", content=tar1)
        assert r.status_code == 409 and r.json()["error"] == "version_reuse" and r.json()["current_version"] == 1
        tar3, id3 = bundle(3, previous=(1, id1))
        assert h.admin("POST", "/v1/admin/bundles", content=tar3).status_code == 201
        tar2, _ = bundle(2, previous=(1, id1))
        r = h.admin("POST", "/v1/admin/bundles", content=tar2)
        assert r.status_code == 409 and r.json()["error"] == "rollback"
        r = h.admin("POST", "/v1/admin/bundles", content=bundle(4, previous=(3, id3), tamper=True)[0])
        assert r.status_code == 422 and r.json()["error"] == "part_length_mismatch"
        import dataclasses

        root_as_publisher = dataclasses.replace(fleet.root, role="publisher")  # a root key used where it may not be
        r = h.admin("POST", "/v1/admin/bundles", content=bundle(4, previous=(3, id3), key=root_as_publisher)[0])
        assert r.status_code == 422 and r.json()["error"] == "wrong_role"
        for junk in (b"", b"not a tar", b"\x1f\x8b" + b"\x00" * 50):
            r = h.admin("POST", "/v1/admin/bundles", content=junk)
            assert r.status_code == 422, (junk, r.text)
        assert fetch_verified(h, gate, fleet)[1].id == id3
    finally:
        h.close()


def test_keys_documents_are_checked_before_they_are_served(pub_server: ServerHarness, fleet: Fleet) -> None:
    h = pub_server
    for junk in (b"", b"{}", b"[1,2]", fleet.keys1[:-3], fleet.keys1.replace(b'"version":1', b'"version":2')):
        r = h.admin("POST", "/v1/admin/keys", content=junk)
        assert r.status_code == 422, (junk[:30], r.text)
    assert h.admin("POST", "/v1/admin/keys", content=fleet.keys1).status_code == 201
    assert h.admin("POST", "/v1/admin/keys", content=fleet.keys1).status_code == 200  # the same again: no-op
    # Keys 2 rotates the server key away from this server: stored, with a warning.
    other = generate_key("server", "server-2")
    body2 = keys_body(previous=fleet.keys, server=[other.public_only()], issued_at_ms=T0 - 1000)
    r = h.admin("POST", "/v1/admin/keys", content=sign_document("keys", body2, [fleet.root]))
    assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["warnings"]
    # Keys 4 after 2: not the next version.
    k2 = parse_keys(h.client.get("/v1/keys/2.json").content)
    body3 = keys_body(previous=k2, issued_at_ms=T0)
    body3["version"] = 4
    r = h.admin("POST", "/v1/admin/keys", content=sign_document("keys", body3, [fleet.root]))
    assert r.status_code == 422 and r.json()["error"] == "keys_version_not_next"
    r = h.admin("POST", "/v1/admin/keys", content=b"x" * 70_000)
    assert r.status_code == 413


def test_site_chains_and_enrolment_keys_version(pub_server: ServerHarness, fleet: Fleet) -> None:
    h = pub_server
    h.admin("POST", "/v1/admin/keys", content=fleet.keys1)
    gate = h.gate()
    h.add_site("other-site")
    other = h.gate("gate-other-01", site_id="other-site")
    assert upload_sources(h, sources(), site=SITE).status_code == 201
    assert upload_sources(h, sources(), site="no-such-site").status_code == 422
    # A fleet uses one fleet-wide chain or per-site chains, never both.
    assert upload_sources(h, sources(), site="").json()["error"] == "scope_conflict"
    assert fetch_verified(h, gate, fleet)[1].site == SITE
    assert other.request("GET", "bundle").status_code == 404
    r = h.admin("POST", "/v1/admin/mode", json={"site": None, "mode": "emergency", "reason": "all sites"})
    assert r.status_code == 201 and [p["site"] for p in r.json()["published"]] == [SITE]
    code = h.add_device("gate-new-01")
    key = generate_key("device", "k")
    ans = h.enroll(code, key).json()
    assert ans["keys_version"] == 1 and ans["server_key"] == fleet.server_key.public
