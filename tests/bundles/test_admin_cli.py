"""The admin side end to end through the real ``checkpoint`` command (bundles.md §6):
keygen → keys new → keys sign ×2 → keys verify → bundle build → bundle sign → bundle verify →
gate init --keys → gate import, then a root rotation, and every refusal with its one-line error."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bundles.helpers import default_sources

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, ok: bool | None = True, real: bool = False) -> subprocess.CompletedProcess[str]:
    """``checkpoint ARGS`` through ``edge.cli.main`` (exit codes and one-line errors included): in this
    process by default (a Python start per command would make this suite slow), as a real
    subprocess with ``real``."""
    if real:
        env = dict(os.environ, COLUMNS="200")
        proc = subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=cwd, capture_output=True, text=True,
                              env=env, timeout=120, check=False)
    else:
        proc = _in_process(list(args), cwd)
    if ok is True:
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    elif ok is False:
        assert proc.returncode != 0, f"{args} should fail: {proc.stdout}"
    return proc


def _in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import contextlib
    import io

    from edge.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def write_sources(src: Path, *, staff: list[dict[str, Any]] | None = None) -> None:
    """SRC files as an admin keeps them: plain JSON (no part/schema), the roster as roster.csv + roster.json."""
    src.mkdir(parents=True, exist_ok=True)
    s = default_sources()
    shutil.copy(REPO / "config" / "rules" / "rules.json", src / "rules.json")
    settings = {k: v for k, v in s["settings"].items() if k not in ("part", "schema")}
    (src / "settings.json").write_text(json.dumps(settings, ensure_ascii=False, indent=2), encoding="utf-8")
    (src / "trust.json").write_text(json.dumps({"keys": []}))
    roster = s["roster"]
    (src / "roster.json").write_text(json.dumps({"roster_key": roster["roster_key"], "teams": roster["teams"]}))
    write_csv(src / "roster.csv", staff if staff is not None else roster["staff"])
    (src / "firms.json").write_text(json.dumps(s["firms"]["firms"]))
    (src / "preregistrations.json").write_text(json.dumps({"visitors": []}))
    (src / "revocations.json").write_text(json.dumps([]))
    mode = {k: v for k, v in s["mode"].items() if k not in ("part", "schema")}
    (src / "mode.json").write_text(json.dumps(mode))


FIELDS = ["sub", "codes", "name", "role", "firm", "team", "zones", "closed_loop", "colour", "flags", "last_test"]


def write_csv(path: Path, staff: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for p in staff:
            w.writerow([p["sub"], ";".join(p["codes"]), p["name"], p["role"], p["firm"], p["team"] or "",
                        ";".join(p["zones"]), "true" if p["closed_loop"] else "false", p["colour"] or "",
                        ";".join(p["flags"]), p["last_test"] or ""])


def test_admin_round_trip_to_an_applied_bundle_then_rotation(tmp_path: Path) -> None:
    w = tmp_path
    for label in ("root-1", "root-2", "root-3", "root-4"):
        run("admin", "keygen", "--role", "root", "--label", label, "--out", f"{label}.key", cwd=w)
    run("admin", "keygen", "--role", "publisher", "--label", "pub-1", "--out", "pub-1.key", cwd=w)
    run("admin", "keygen", "--role", "server", "--label", "srv-1", "--out", "srv-1.key", cwd=w)
    assert (w / "root-1.key").stat().st_mode & 0o777 == 0o600

    out = run("admin", "keys", "new", "--fleet", "acme-fleet", "--root", "root-1.key.pub", "--root", "root-2.key.pub",
              "--root", "root-3.key.pub", "--publisher", "pub-1.key.pub", "--server", "srv-1.key.pub",
              "--out", "keys-1.json", cwd=w).stdout
    assert "threshold 2" in out
    bad = run("admin", "keys", "verify", "keys-1.json", cwd=w, ok=False)
    assert json.loads(bad.stdout)["reason"] == "below_threshold"
    run("admin", "keys", "sign", "--key", "root-1.key", "keys-1.json", cwd=w)
    refused = run("admin", "keys", "sign", "--key", "pub-1.key", "keys-1.json", cwd=w, ok=False)
    assert "has role 'publisher'" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    run("admin", "keys", "sign", "--key", "root-2.key", "keys-1.json", cwd=w)
    v = json.loads(run("admin", "keys", "verify", "keys-1.json", cwd=w).stdout)
    assert v["ok"] and v["version"] == 1 and len(v["keyids"]) == 2

    write_sources(w / "src")
    run("admin", "bundle", "build", "--fleet", "acme-fleet", "--site", "plant-1", "--keys-version", "1",
        "--version", "1", "--note", "first rules", "src", "b1", cwd=w)
    unsigned = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-1.json", "b1", cwd=w, ok=False).stdout)
    assert unsigned["reason"] == "below_threshold"
    refused = run("admin", "bundle", "sign", "--keys", "root-1.key", "b1", cwd=w, ok=False)
    assert "needs publisher" in refused.stderr
    run("admin", "bundle", "sign", "--keys", "pub-1.key", "b1", cwd=w)
    rep = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-1.json", "--site", "plant-1", "b1",
                         cwd=w).stdout)
    assert rep["ok"] and rep["version"] == 1 and set(rep["parts"]) == {
        "rules", "settings", "trust", "roster", "firms", "preregistrations", "revocations", "mode"}
    other_site = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-1.json", "--site", "plant-2", "b1",
                                cwd=w, ok=False).stdout)
    assert other_site["reason"] == "scope_mismatch"
    late = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-1.json", "--at", "2099-01-01T00:00:00.000Z",
                          "b1", cwd=w, ok=False).stdout)
    assert late["reason"] in ("expired", "keys_expired")

    (w / "gate.toml").write_text(f'[gate]\ndevice_id = "gate-acme-01"\ndata_dir = "{w / "gate"}"\n'
                                 'site_id = "plant-1"\n')
    out = run("gate", "init", "--config", "gate.toml", "--keys", "keys-1.json", cwd=w).stdout
    assert all(k in out for k in v["keyids"]), "init prints the root key ids to compare"
    res = json.loads(run("gate", "import", "--config", "gate.toml", "--json", "b1", cwd=w, real=True).stdout)
    assert (res["status"], res["applied"], res["mode"]) == ("applied", 1, "normal")
    again = json.loads(run("gate", "import", "--config", "gate.toml", "--json", "b1", cwd=w).stdout)
    assert again["status"] == "up_to_date"

    # rotation: root-3 leaves, root-4 joins; old threshold (2 of 1-3) and new (2 of 1,2,4)
    run("admin", "keys", "new", "--from", "keys-1.json", "--root", "root-1.key.pub", "--root", "root-2.key.pub",
        "--root", "root-4.key.pub", "--out", "keys-2.json", cwd=w)
    run("admin", "keys", "sign", "--key", "root-4.key", "keys-2.json", cwd=w)
    half = json.loads(run("admin", "keys", "verify", "--previous", "keys-1.json", "keys-2.json", cwd=w, ok=False).stdout)
    assert half["reason"] == "rotation_old_threshold"
    run("admin", "keys", "sign", "--key", "root-3.key", "keys-2.json", cwd=w)
    run("admin", "keys", "sign", "--key", "root-1.key", "keys-2.json", cwd=w)
    v2 = json.loads(run("admin", "keys", "verify", "--previous", "keys-1.json", "keys-2.json", cwd=w).stdout)
    assert v2["ok"] and v2["version"] == 2
    (w / "src" / "mode.json").write_text(json.dumps({"mode": "emergency", "since": "2026-12-01T00:00:00.000Z",
                                                     "reason": "county order", "set_by": "admin-1"}))
    run("admin", "bundle", "build", "--fleet", "acme-fleet", "--site", "plant-1", "--keys-version", "2",
        "--version", "2", "--previous", "b1/manifest.json", "src", "b2", cwd=w)
    run("admin", "bundle", "sign", "--keys", "pub-1.key", "b2", cwd=w)
    rep2 = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-2.json", "--previous", "b1/manifest.json",
                          "b2", cwd=w).stdout)
    assert rep2["ok"]
    run("admin", "bundle", "build", "--fleet", "acme-fleet", "--site", "plant-1", "--keys-version", "2",
        "--version", "1", "src", "old", cwd=w)
    run("admin", "bundle", "sign", "--keys", "pub-1.key", "old", cwd=w)
    back = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-2.json", "--previous", "b2/manifest.json",
                          "old", cwd=w, ok=False).stdout)
    assert back["reason"] == "rollback"
    stale = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-2.json", "b1", cwd=w, ok=False).stdout)
    assert stale["reason"] == "keys_version_mismatch"
    (w / "b2" / "keys").mkdir()
    shutil.copy(w / "keys-2.json", w / "b2" / "keys" / "2.json")
    res = json.loads(run("gate", "import", "--config", "gate.toml", "--json", "b2", cwd=w).stdout)
    assert (res["status"], res["keys_applied"], res["applied"], res["mode"]) == ("applied", [2], 2, "emergency")
    status = json.loads(run("gate", "status", "--config", "gate.toml", "--json", cwd=w).stdout)
    assert status["bundle"] == {"version": 2, "keys_version": 2}


def test_roster_csv_bad_row_is_one_line_naming_line_and_column(tmp_path: Path) -> None:
    staff = default_sources()["roster"]["staff"]
    staff[1] = dict(staff[1], zones=[])
    write_sources(tmp_path / "src", staff=staff)
    proc = run("admin", "bundle", "build", "--fleet", "acme-fleet", "--keys-version", "1", "--version", "1", "src",
               "out", cwd=tmp_path, ok=False, real=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("checkpoint: error: roster.csv line 3, column zones: "
                                   "List should have at least 1 item after validation, not 0")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_large_roster_shows_progress_and_round_trips(tmp_path: Path) -> None:
    import hashlib

    base = default_sources()["roster"]["staff"][0]
    staff = [dict(base, sub=hashlib.md5(f"s{i}".encode()).hexdigest(), codes=[hashlib.md5(f"c{i}".encode()).hexdigest()],
                  name=f"W*{i % 10}") for i in range(3000)]
    write_sources(tmp_path / "src", staff=staff)
    proc = run("admin", "bundle", "build", "--fleet", "acme-fleet", "--keys-version", "1", "--version", "1", "src",
               "out", cwd=tmp_path, real=True)
    assert "roster.csv" in proc.stderr, "a progress bar on stderr for a large roster"
    roster = next(p for p in (tmp_path / "out" / "parts").iterdir() if b'"part":"roster"' in p.read_bytes())
    assert len(json.loads(roster.read_bytes())["staff"]) == 3000


@pytest.mark.parametrize("case", ["garbage", "truncated", "oversize", "missing", "not_a_dir"])
def test_bundle_verify_with_garbage_truncated_and_oversize_input(tmp_path: Path, case: str) -> None:
    from sync.bundle import envelope_bytes, keys_body
    from tests.bundles.helpers import T0, make_key

    roots = [make_key(f"r{i}", "root") for i in range(3)]
    from sync.bundle import sign_document

    keys = sign_document("keys", keys_body(previous=None, fleet="acme-fleet", root=roots,
                                           publisher=[make_key("p", "publisher")], server=[make_key("s", "server")],
                                           issued_at_ms=T0 - 86_400_000), roots[:2])
    (tmp_path / "keys-1.json").write_bytes(keys)
    d = tmp_path / "b"
    d.mkdir()
    if case == "garbage":
        (d / "manifest.json").write_bytes(os.urandom(300))
        want = "malformed"
    elif case == "truncated":
        (d / "manifest.json").write_bytes(envelope_bytes({"type": "manifest", "spec": 1}, [])[:-3])
        want = "malformed"
    elif case == "oversize":
        (d / "manifest.json").write_bytes(b" " * 70_000)
        want = "too_large"
    elif case == "missing":
        proc = run("admin", "bundle", "verify", "--trusted", "keys-1.json", "b", cwd=tmp_path, ok=False)
        assert proc.stderr.startswith("checkpoint: error: ") and "no manifest.json" in proc.stderr
        return
    else:
        proc = run("admin", "bundle", "verify", "--trusted", "keys-1.json", "nowhere", cwd=tmp_path, ok=False)
        assert proc.returncode == 2
        return
    rep = json.loads(run("admin", "bundle", "verify", "--trusted", "keys-1.json", "b", cwd=tmp_path, ok=False).stdout)
    assert rep["ok"] is False and rep["reason"] == want
    garbage_keys = tmp_path / "garbage.json"
    garbage_keys.write_bytes(b"\xff\xfe{")
    rep = json.loads(run("admin", "bundle", "verify", "--trusted", "garbage.json", "b", cwd=tmp_path, ok=False).stdout)
    assert rep["reason"] == "malformed" and rep["detail"].startswith("keys:")


def test_gate_import_refuses_a_tampered_bundle_and_keeps_nothing(tmp_path: Path) -> None:
    from sync.bundle import part_bytes
    from tests.bundles.helpers import Fleet

    fleet = Fleet(site="plant-1")
    m = fleet.publish(server_time_ms=_now_ms() - 3_600_000)
    d = tmp_path / "b"
    (d / "parts").mkdir(parents=True)
    (d / "manifest.json").write_bytes(fleet.manifests[m.id])
    for sha, data in fleet.parts.items():
        (d / "parts" / sha).write_bytes(data)
    roster = m.parts["roster"].sha256
    (d / "parts" / roster).write_bytes(part_bytes(dict(fleet.sources["roster"], roster_key="00" * 32)))
    (tmp_path / "keys-1.json").write_bytes(fleet.keys_docs[1])
    (tmp_path / "gate.toml").write_text(f'[gate]\ndevice_id = "gate-x-01"\ndata_dir = "{tmp_path / "gate"}"\n'
                                        'site_id = "plant-1"\n')
    run("gate", "init", "--config", "gate.toml", "--keys", "keys-1.json", cwd=tmp_path)
    proc = run("gate", "import", "--config", "gate.toml", "b", cwd=tmp_path, ok=False)
    assert "part_hash_mismatch" in proc.stderr and proc.returncode == 1
    assert not list((tmp_path / "gate" / "bundles").glob("*.db"))
    assert sorted(p.name for p in (tmp_path / "gate" / "parts").iterdir() if p.is_file()) == [], \
        "parts fetched for a refused manifest are not kept"
    other = tmp_path / "other-keys.json"
    other.write_bytes(Fleet(prefix="other").keys_docs[1])
    proc = run("gate", "init", "--config", "gate.toml", "--keys", str(other), cwd=tmp_path, ok=False)
    assert "already holds keys version 1" in proc.stderr


def _now_ms() -> int:
    from sync.timefmt import utc_now_ms

    return utc_now_ms()


@pytest.mark.parametrize(("manifest", "reason"), [
    (b"\x00garbage\xff", "malformed"),
    (b'{"signatures":[],"signed":{"type":"manifest"', "malformed"),
    (b" " * 70_000, "too_large"),
])
def test_gate_import_and_init_with_garbage_truncated_and_oversize_input(tmp_path: Path, manifest: bytes,
                                                                       reason: str) -> None:
    from tests.bundles.helpers import Fleet

    fleet = Fleet(site="plant-1")
    (tmp_path / "keys-1.json").write_bytes(fleet.keys_docs[1])
    (tmp_path / "gate.toml").write_text(f'[gate]\ndevice_id = "gate-x-01"\ndata_dir = "{tmp_path / "gate"}"\n'
                                        'site_id = "plant-1"\n')
    for bad in (manifest, b""):
        (tmp_path / "bad-keys.json").write_bytes(bad)
        proc = run("gate", "init", "--config", "gate.toml", "--keys", "bad-keys.json", cwd=tmp_path, ok=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    run("gate", "init", "--config", "gate.toml", "--keys", "keys-1.json", cwd=tmp_path)
    d = tmp_path / "b"
    (d / "keys").mkdir(parents=True)
    (d / "manifest.json").write_bytes(manifest)
    (d / "keys" / "2.json").write_bytes(manifest)
    res = json.loads(run("gate", "import", "--config", "gate.toml", "--json", "b", cwd=tmp_path, ok=False).stdout)
    assert (res["status"], res["reason"], res["version"], res["keys_version"]) == ("rejected", reason, 0, 1)
