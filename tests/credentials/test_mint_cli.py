"""Issuing (credentials.md §2.4) and the ``checkpoint verify`` / ``admin mint`` commands:
keygen -> mint -> verify for every kind and algorithm, via the API and via the CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zxingcpp

from edge.cli import main
from edge.credentials import ClaimsError, load_trust, mint, verify
from edge.credentials import base45 as b45
from edge.credentials.cbor_strict import loads
from edge.credentials.cli import parse_duration
from edge.credentials.mint import trust_for_key
from sync.errors import KeyFileError
from sync.keys import generate_key
from tests.conftest import REPO
from tests.credentials.conftest import vector

CHECKPOINT = REPO / ".venv" / "bin" / "checkpoint"
NOW = datetime(2022, 5, 10, 8, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)

CLAIMS: dict[str, dict[str, Any]] = {
    "health": {"iss": "HA-410400", "sub": "99402d8da8317fc267036c4775b68b39", "firm": "F0012", "name": "张小三",
               "role": "staff", "colour": "yellow", "flags": ["itinerary_star", "close_contact"],
               "last_test": "2022-05-09T06:12:00.000Z"},
    "pass": {"iss": "HA", "sub": "a241b6fe3e148d0e82640edc361d42a7", "nbf": "2022-05-09T00:00:00.000Z",
             "exp": "2022-05-16T00:00:00.000Z", "pass_id": "HA2022050800123", "plate": "豫D12345", "firm": "F0012",
             "origin": "郑州", "destination": "平顶山", "route": "G4 京港澳高速"},
    "venue": {"iss": "F0012", "venue_id": "V0012-01", "venue_name": "平顶山某厂南门", "zone": "production",
              "door": "south-1", "firm": "F0012"},
    "material": {"iss": "F0012", "goods_code": "MAT-20220509-0042", "goods_name": "冷链猪肉", "batch": "B220509",
                 "quantity": "120 箱", "origin": "河南漯河", "firm": "F0077"},
}


def _env() -> dict[str, str]:
    return {**os.environ, "CHECKPOINT_CONFIG": ""}


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECKPOINT), *args], capture_output=True, text=True, timeout=120, env=_env(),
                          input=stdin)


# --- API -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ed25519", "es256"])
@pytest.mark.parametrize("kind", ["health", "pass", "venue", "material"])
def test_mint_then_verify_each_kind_and_algorithm(kind: str, alg: str) -> None:
    key = generate_key("issuer", f"{kind} issuer", alg)  # type: ignore[arg-type]
    text = mint(kind, CLAIMS[kind], key, now_ms=NOW_MS)
    assert text.startswith("CK1:") and len(text) < 420
    trust = load_trust({"keys": [{"public_key": base64.b64encode(key.spki_der()).decode(), "kinds": [kind]}]})
    result = verify(text, trust, NOW)
    assert result.ok, result.checks
    claims = result.claims
    assert result.kind == kind and claims["kid"] == key.keyid
    assert claims["alg"] == ("EdDSA" if alg == "ed25519" else "ES256")
    for name, value in CLAIMS[kind].items():
        if name == "name":
            assert claims["name"] == "张*三"  # masked on the way in (§2.4 rule 2)
        elif name == "flags":
            assert claims["flags"] == ["close_contact", "itinerary_star"]  # bit order
        elif name != "sub" or kind in ("health", "pass"):
            assert claims[name] == value, name
    assert claims["iat"] == "2022-05-10T08:00:00.000Z"


def test_default_lifetimes_and_expires_in(county_key) -> None:  # type: ignore[no-untyped-def]
    def exp_of(kind: str, **kw: Any) -> datetime:
        text = mint(kind, CLAIMS[kind], county_key, now_ms=NOW_MS, **kw)
        claims = verify(text, trust_for_key(county_key), NOW).claims
        return datetime.fromisoformat(claims["exp"].replace("Z", "+00:00"))

    assert exp_of("health") == NOW + timedelta(hours=24)
    assert exp_of("venue") == NOW + timedelta(days=365)
    assert exp_of("material") == NOW + timedelta(days=90)
    assert exp_of("health", expires_in_s=3600) == NOW + timedelta(hours=1)
    assert exp_of("pass") == datetime(2022, 5, 16, tzinfo=UTC)


def test_pass_takes_its_window_from_the_claims(county_key) -> None:  # type: ignore[no-untyped-def]
    claims = {k: v for k, v in CLAIMS["pass"].items() if k != "exp"}
    with pytest.raises(ClaimsError, match="exp"):
        mint("pass", claims, county_key, now_ms=NOW_MS)
    text = mint("pass", claims, county_key, now_ms=NOW_MS, expires_in_s=3 * 86400)  # from nbf
    assert verify(text, trust_for_key(county_key), NOW).claims["exp"] == "2022-05-12T00:00:00.000Z"
    with pytest.raises(ClaimsError, match="iat"):  # a pass that ended before it was issued
        mint("pass", claims, county_key, now_ms=NOW_MS, expires_in_s=86400)
    future = dict(CLAIMS["pass"], nbf="2022-06-01T00:00:00.000Z", exp="2022-06-08T00:00:00.000Z")
    later = mint("pass", future, county_key, now_ms=NOW_MS)  # checked inside its own window
    assert verify(later, trust_for_key(county_key), NOW).checks["valid_from"] is False


@pytest.mark.parametrize(("kind", "change", "field"), [
    ("health", {"colour": "blue"}, "colour"),
    ("health", {"colour": ["green"]}, "colour"),
    ("health", {"role": "Staff"}, "role"),
    ("health", {"sub": "99402D8DA8317FC267036C4775B68B39"}, "sub"),
    ("health", {"sub": None}, "sub"),
    ("health", {"flags": ["fever"]}, "flags"),
    ("health", {"flags": 3}, "flags"),
    ("health", {"last_test": "yesterday"}, "last_test"),
    ("health", {"last_test": "1999-12-31T23:59:59.000Z"}, "last_test"),
    ("health", {"name": "x" * 33}, "name"),
    ("health", {"iss": ""}, "iss"),
    ("health", {"colur": "green"}, "colur"),
    ("venue", {"zone": None}, "zone"),
    ("venue", {"venue_name": "n" * 65}, "venue_name"),
    ("pass", {"plate": "豫D123456789012345"}, "plate"),  # 17 code points
    ("pass", {"nbf": "2022-05-17T00:00:00.000Z"}, "nbf"),
    ("material", {"goods_code": 42}, "goods_code"),
])
def test_bad_claims_name_the_field(county_key, kind: str, change: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    claims = {**CLAIMS[kind], **change}
    claims = {k: v for k, v in claims.items() if v is not None}
    with pytest.raises(ClaimsError, match=field):
        mint(kind, claims, county_key, now_ms=NOW_MS)


def test_missing_required_claims(county_key) -> None:  # type: ignore[no-untyped-def]
    for kind, required in (("health", ["iss", "sub", "name", "role", "colour"]), ("pass", ["pass_id", "plate", "firm"]),
                           ("venue", ["venue_id", "venue_name", "zone", "firm"]), ("material", ["goods_code"])):
        for name in required:
            claims = {k: v for k, v in CLAIMS[kind].items() if k != name}
            with pytest.raises(ClaimsError, match=name):
                mint(kind, claims, county_key, now_ms=NOW_MS)


def test_output_members_of_verified_claims_are_ignored_so_claims_can_be_reissued(county_key) -> None:  # type: ignore[no-untyped-def]
    first = verify(mint("health", CLAIMS["health"], county_key, now_ms=NOW_MS), trust_for_key(county_key), NOW)
    again = verify(mint("health", {k: v for k, v in first.claims.items() if k != "exp"}, county_key,
                        now_ms=NOW_MS), trust_for_key(county_key), NOW)
    assert again.ok and again.claims["id"] != first.claims["id"]
    assert {k: v for k, v in again.claims.items() if k not in ("id", "revocation_hash")} == {
        k: v for k, v in first.claims.items() if k not in ("id", "revocation_hash")}


def test_mint_needs_the_private_key(county_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyFileError):
        mint("venue", CLAIMS["venue"], county_key.public_only(), now_ms=NOW_MS)


def test_mint_bad_kind_and_types(county_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClaimsError):
        mint("visa", {}, county_key, now_ms=NOW_MS)
    with pytest.raises(ClaimsError):
        mint("venue", ["not", "a", "dict"], county_key, now_ms=NOW_MS)  # type: ignore[arg-type]
    with pytest.raises(ClaimsError):
        mint("venue", CLAIMS["venue"], county_key, now_ms=NOW_MS, expires_in_s=0)


def test_minted_cose_is_deterministic_apart_from_the_id(province_key) -> None:  # type: ignore[no-untyped-def]
    from edge.credentials.mint import build_cwt, encode

    cwt = build_cwt("pass", CLAIMS["pass"], now_ms=NOW_MS, expires_in_s=None, cid=b"\x01" * 8)
    assert encode(cwt, province_key)[1] == encode(cwt, province_key)[1]  # RFC 6979


def test_parse_duration() -> None:
    assert parse_duration("72h") == 259200 and parse_duration("7d") == 604800 and parse_duration("90") == 90
    assert parse_duration("30m") == 1800 and parse_duration("2w") == 1209600 and parse_duration(" 5S ") == 5
    for bad in ("", "0h", "h", "1.5h", "-1d", "1y", "3 days"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --- CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, str]]:
    """``checkpoint admin keygen`` for each algorithm: (key file, kid base64, SPKI base64) as printed."""
    if not CHECKPOINT.exists():
        pytest.skip(f"{CHECKPOINT} not installed")
    out: dict[str, tuple[Path, str, str]] = {}
    tmp = tmp_path_factory.mktemp("keys")
    for alg in ("ed25519", "es256"):
        path = tmp / f"issuer-{alg}.json"
        proc = _run("admin", "keygen", "--role", "issuer", "--alg", alg, "--label", f"test {alg}", "--out", str(path))
        assert proc.returncode == 0, proc.stderr
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        lines = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if ":" in line}
        out[alg] = (path, lines["kid (base64, for the trust file)"], lines["public key (SPKI, base64)"])
    return out


@pytest.mark.slow
def test_cli_keygen_mint_verify_round_trip(cli_keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(json.dumps({"keys": [
        {"kid": kid, "public_key": spki} for _path, kid, spki in cli_keys.values()]}), encoding="utf-8")
    texts = []
    for alg, (key_path, _kid, _spki) in cli_keys.items():
        for kind, claims in CLAIMS.items():
            claims_file = tmp_path / f"{kind}.json"
            claims_file.write_text(json.dumps(claims, ensure_ascii=False), encoding="utf-8")
            qr = tmp_path / f"{kind}-{alg}.png"
            proc = _run("admin", "mint", "--kind", kind, "--key", str(key_path), "--claims", str(claims_file),
                        "--issued-at", "2022-05-10T08:00:00Z", "--qr", str(qr))
            assert proc.returncode == 0, proc.stderr
            text = proc.stdout.strip()
            assert text.startswith("CK1:") and "\n" not in text
            assert "revocation_hash" in proc.stderr and text not in proc.stderr
            assert _qr_texts(qr) == [text]
            texts.append((kind, alg, text))
    proc = _run("verify", "--json", "--trust", str(trust_file), "--at", "2022-05-10T09:00:00Z", *(t for *_x, t in texts))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["ok"], r["kind"]) for r in results] == [(True, kind) for kind, _alg, _t in texts]
    assert {r["claims"]["alg"] for r in results} == {"EdDSA", "ES256"}
    # --image on one of the PNGs
    proc = _run("verify", "--json", "--trust", str(trust_file), "--at", "2022-05-10T09:00:00Z",
                "--image", str(tmp_path / "pass-es256.png"))
    assert proc.returncode == 0 and json.loads(proc.stdout)["kind"] == "pass"


def _qr_texts(path: Path) -> list[str]:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return [r.text for r in zxingcpp.read_barcodes(image)]


def test_cli_mint_errors(cli_keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    key_path = str(cli_keys["ed25519"][0])
    claims_file = tmp_path / "c.json"
    claims_file.write_text(json.dumps({**CLAIMS["health"], "colour": "purple"}), encoding="utf-8")
    assert main(["admin", "mint", "--kind", "health", "--key", key_path, "--claims", str(claims_file)]) == 1
    assert "colour" in capsys.readouterr().err
    claims_file.write_text("{not json", encoding="utf-8")
    assert main(["admin", "mint", "--kind", "health", "--key", key_path, "--claims", str(claims_file)]) == 1
    claims_file.write_bytes(b"\xff\xfe garbage")
    assert main(["admin", "mint", "--kind", "health", "--key", key_path, "--claims", str(claims_file)]) == 1
    claims_file.write_text(json.dumps(CLAIMS["venue"]), encoding="utf-8")
    assert main(["admin", "mint", "--kind", "venue", "--key", key_path, "--claims", str(claims_file),
                 "--expires-in", "soon"]) == 2
    assert main(["admin", "mint", "--kind", "visa", "--key", key_path, "--claims", str(claims_file)]) == 2
    assert main(["admin", "mint", "--kind", "venue", "--key", str(tmp_path / "nope"), "--claims",
                 str(claims_file)]) == 2
    pub = key_path + ".pub"
    assert main(["admin", "mint", "--kind", "venue", "--key", pub, "--claims", str(claims_file)]) == 1
    capsys.readouterr()
    assert main(["admin", "mint", "--kind", "venue", "--key", key_path, "--claims", str(claims_file),
                 "--expires-in", "30d"]) == 0
    assert capsys.readouterr().out.startswith("CK1:")


def test_cli_verify_exit_codes_and_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    case, bad = vector("health_green"), vector("wrong_signature")
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(json.dumps(case["trust"]), encoding="utf-8")
    base = ["verify", "--trust", str(trust_file), "--at", "2022-05-10T08:00:00.000Z"]
    assert main([*base, case["text"]]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "张*三" in out and case["expected"]["claims"]["id"] not in out
    assert main([*base, "--json", case["text"], bad["text"]]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["ok"] for x in lines] == [True, False]
    monkeypatch.setattr("sys.stdin", _Lines([case["text"] + "\n", "\n", "EMP-004211\n"]))
    assert main([*base, "--json", "-"]) == 1
    assert [json.loads(x)["checks"]["prefix"] for x in capsys.readouterr().out.splitlines()] == [True, False]
    assert main([*base]) == 2  # neither TEXT nor --image
    assert main([*base, "--at", "yesterday", case["text"]]) == 2
    assert main(["verify", "--trust", str(tmp_path / "missing.json"), case["text"]]) == 2
    trust_file.write_text("[]", encoding="utf-8")
    assert main(["verify", "--trust", str(trust_file), case["text"]]) == 2
    for hostile in ("", "CK1:", "HC1:" + "A" * 9000, "CK1:\x00\x00", "\udcff"):
        trust_file.write_text(json.dumps(case["trust"]), encoding="utf-8")
        assert main(["verify", "--json", "--trust", str(trust_file), hostile]) == 1
        assert json.loads(capsys.readouterr().out)["ok"] is False


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._lines)


def test_cli_verify_without_trust_uses_no_bundle_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gate.toml"
    config.write_text(f'[gate]\ndata_dir = "{tmp_path / "nodata"}"\n', encoding="utf-8")
    monkeypatch.setenv("CHECKPOINT_CONFIG", str(config))
    case = vector("health_green")
    assert main(["verify", "--json", "--at", "2022-05-10T08:00:00Z", case["text"]]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["checks"]["kid"] is False
    assert "empty trust" in captured.err


def test_cli_verify_image_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200), 255, np.uint8))
    assert main(["verify", "--image", str(blank)]) == 2
    assert "no code" in capsys.readouterr().err
    junk = tmp_path / "junk.png"
    junk.write_bytes(os.urandom(500))
    assert main(["verify", "--image", str(junk)]) == 2
    assert main(["verify", "--image", str(blank), "CK1:X"]) == 2


def test_cli_image_of_an_hc1_vector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import segno

    case = vector("hc1_test_valid")
    png = tmp_path / "dcc.png"
    segno.make_qr(case["text"], mode="alphanumeric", error="q").save(str(png), scale=4)
    trust_file = tmp_path / "trust.json"
    trust_file.write_text(json.dumps(case["trust"]), encoding="utf-8")
    assert main(["verify", "--trust", str(trust_file), "--at", case["at"], "--image", str(png)]) == 0
    out = capsys.readouterr().out
    assert "A*** M**** T***" in out and "birth_year: 1990" in out
    assert "Anna" not in out and "1990-01-31" not in out and "URN:UVCI" not in out  # §7.3


def test_vector_cose_is_what_mint_writes_for_qr(county_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A minted text inflates to a tag-18 COSE_Sign1 with the key's kid (what the gate reads)."""
    text = mint("venue", CLAIMS["venue"], county_key, now_ms=NOW_MS)
    cose = loads(zlib.decompress(b45.decode(text[4:])))
    assert cose.tag == 18 and loads(cose.value[0]) == {1: -8, 4: bytes.fromhex(county_key.keyid)}
