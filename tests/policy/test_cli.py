"""``checkpoint admin rules test|explain`` (rules.md §5.2): output, exit codes, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["admin", "rules", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def rules_dir(tmp_path: Path, repo: Path) -> Path:
    dest = tmp_path / "rules"
    shutil.copytree(repo / "config" / "rules", dest)
    return dest


def write(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def test_default_directory_passes(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(repo)
    code, out, err = run(["test"], capsys)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[-1].startswith("rules test: ") and lines[-1].endswith("cases pass; 17/17 rules covered")
    passed, total = lines[-1].split()[2].split("/")
    assert passed == total and int(total) >= 150
    assert "PASS  code-colour  green staff, tested 26 h ago" in lines
    assert "PASS  decision  green lane, itinerary star, tested 30 h ago" in lines
    assert not any(line.startswith("FAIL") for line in lines)


def test_failing_case_exits_1_with_expected_and_got(rules_dir: Path, capsys):
    write(rules_dir / "tests" / "wrong.json", {
        "format": "checkpoint-rule-tests/1", "base": "base.json",
        "cases": [
            {"name": "claims a grey code passes", "rule": "code-colour", "set": {"payload.colour": "grey"}, "expected": "pass"},
            {"name": "claims a fever admits",
             "set": {"external.temperature": {"body_centi_c": 3900, "measured_at": "2022-05-10T08:00:10.000Z", "attempt": 2}},
             "expected": {"outcome": "ADMIT"}},
        ],
    })
    code, out, _err = run(["test", str(rules_dir)], capsys)
    assert code == 1
    assert "FAIL  code-colour  claims a grey code passes  [tests/wrong.json]: expected pass, got fail" in out
    assert "FAIL  decision  claims a fever admits  [tests/wrong.json]: expected ADMIT [], got DENY [fever]" in out
    assert out.splitlines()[-1].startswith("rules test: ")


def test_uncovered_rule_exits_1(rules_dir: Path, capsys):
    per_rule = json.loads((rules_dir / "tests" / "per-rule.json").read_text(encoding="utf-8"))
    per_rule["cases"] = [c for c in per_rule["cases"] if c.get("rule") != "sentinel"]
    write(rules_dir / "tests" / "per-rule.json", per_rule)
    code, out, _err = run(["test", str(rules_dir)], capsys)
    assert code == 1
    assert "not covered (needs a pass and a fail rule case): sentinel" in out
    assert out.splitlines()[-1].endswith("16/17 rules covered")


def test_error_expected_case_and_detail(rules_dir: Path, capsys):
    write(rules_dir / "tests" / "err.json", {
        "format": "checkpoint-rule-tests/1", "base": "base.json",
        "cases": [{"name": "fever threshold gone", "rule": "fever-unconfirmed",
                   "unset": ["external.settings.fever_centi_c"], "expected": "pass"}],
    })
    code, out, _err = run(["test", str(rules_dir)], capsys)
    assert code == 1
    assert "expected pass, got error (missing external.settings.fever_centi_c)" in out


def test_json_output(rules_dir: Path, capsys):
    code, out, _err = run(["test", str(rules_dir), "--json"], capsys)
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    summary = docs[-1]
    assert summary["summary"] is True and summary["covered"] == summary["rules"] == 17
    cases = docs[:-1]
    assert len(cases) == summary["cases"] == summary["passed"]
    first = cases[0]
    assert {"file", "name", "rule", "kind", "ok", "expected", "got"} <= set(first)


MALFORMED: list[tuple[str, Any, str]] = [
    ("tests/bad-format.json", {"format": "other/1", "cases": [{"name": "x", "data": {}, "expected": "pass"}]}, "format"),
    ("tests/no-cases.json", {"format": "checkpoint-rule-tests/1", "base": "base.json", "cases": []}, "cases"),
    ("tests/unknown-rule.json", {"format": "checkpoint-rule-tests/1", "base": "base.json",
                                 "cases": [{"name": "x", "rule": "nope", "expected": "pass"}]}, "not in the rule set"),
    ("tests/bad-expected.json", {"format": "checkpoint-rule-tests/1", "base": "base.json",
                                 "cases": [{"name": "x", "rule": "zone", "expected": "admit"}]}, "expected"),
    ("tests/bad-outcome.json", {"format": "checkpoint-rule-tests/1", "base": "base.json",
                                "cases": [{"name": "x", "expected": {"outcome": "OPEN"}}]}, "expected"),
    ("tests/dup.json", {"format": "checkpoint-rule-tests/1", "base": "base.json",
                        "cases": [{"name": "x", "rule": "zone", "expected": "pass"},
                                  {"name": "x", "rule": "zone", "expected": "pass"}]}, "duplicate name"),
    ("tests/no-data.json", {"format": "checkpoint-rule-tests/1",
                            "cases": [{"name": "x", "rule": "zone", "expected": "pass"}]}, "no data and no base"),
    ("tests/missing-base.json", {"format": "checkpoint-rule-tests/1", "base": "nowhere.json",
                                 "cases": [{"name": "x", "rule": "zone", "expected": "pass"}]}, "cannot read"),
    ("tests/bad-set.json", {"format": "checkpoint-rule-tests/1", "base": "base.json",
                            "cases": [{"name": "x", "rule": "zone", "set": {"external.nothing.here": 1},
                                       "expected": "pass"}]}, "parent of external.nothing.here"),
    ("tests/with-derived.json", {"format": "checkpoint-rule-tests/1",
                                 "cases": [{"name": "x", "rule": "zone", "expected": "pass",
                                            "data": {"payload": {}, "external": {"derived": {}}}}]}, "derived"),
    ("tests/unknown-field.json", {"format": "checkpoint-rule-tests/1", "base": "base.json",
                                  "cases": [{"name": "x", "rule": "zone", "expect": "pass"}]}, "unknown field"),
    ("rules.json", [{"id": "Bad"}], "rules.json"),
    ("settings.json", {"policy": {}}, "settings.json"),
]


@pytest.mark.parametrize(("name", "doc", "fragment"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_exit_2_naming_file_and_reason(rules_dir: Path, capsys, name, doc, fragment):
    write(rules_dir / name, doc)
    code, out, err = run(["test", str(rules_dir)], capsys)
    assert code == 2, out + err
    assert fragment in err and Path(name).name in err
    assert err.count("\n") == 1  # one line


@pytest.mark.parametrize(
    "raw",
    [b"{\"format\": \"checkpoint-rule-tests/1\", \"cases\": [", b"\xef\xbb\xbf{}", b"\xff\xfe garbage", b"[1, 2,,]",
     b"{\"format\": 1, \"format\": 2}"],
    ids=["truncated", "bom", "binary", "syntax", "duplicate-key"],
)
def test_garbage_test_file_exits_2(rules_dir: Path, capsys, raw: bytes):
    (rules_dir / "tests" / "garbage.json").write_bytes(raw)
    code, _out, err = run(["test", str(rules_dir)], capsys)
    assert code == 2 and "garbage.json" in err


def test_oversize_test_file_exits_2(rules_dir: Path, capsys):
    (rules_dir / "tests" / "huge.json").write_bytes(b"[" + b"0," * (8 * 1024 * 1024 + 1) + b"0]")
    code, _out, err = run(["test", str(rules_dir)], capsys)
    assert code == 2 and "huge.json" in err and "exceeds" in err


def test_missing_directory_exits_2(tmp_path: Path, capsys):
    code, _out, err = run(["test", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "not a directory" in err


def test_explain_shows_paths_nodes_and_result(repo: Path, capsys):
    code, out, _err = run(["explain", "--rule", "code-colour", "--data", str(repo / "config/rules/tests/base.json"),
                           "--dir", str(repo / "config/rules")], capsys)
    assert code == 0
    assert "rule code-colour 1.0.0: outcome deny, alert none, override guard" in out
    assert "  payload.colour = \"green\"" in out
    assert "(not evaluated)" in out
    assert out.rstrip().endswith("result: pass")


def test_explain_a_case_of_a_test_file(repo: Path, capsys):
    code, out, _err = run(["explain", "--rule", "code-colour", "--dir", str(repo / "config/rules"),
                           "--data", str(repo / "config/rules/tests/examples.json"),
                           "--case", "yellow, firm melted down"], capsys)
    assert code == 0
    assert "external.firm.whitelisted = false" in out
    assert "result: fail → deny" in out
    assert "guard sees: 健康码非绿码，且不符合白名单赋码保护条件 / Code not green and whitelist protection does not apply" in out


def test_explain_rule_error_and_lambda(repo: Path, capsys):
    code, out, _err = run(["explain", "--rule", "fever-unconfirmed", "--dir", str(repo / "config/rules"),
                           "--data", str(repo / "config/rules/tests/examples.json"),
                           "--case", "threshold setting missing: rule error"], capsys)
    assert code == 0 and "result: error (missing external.settings.fever_centi_c)" in out
    code, out, _err = run(["explain", "--rule", "contact-risk", "--dir", str(repo / "config/rules"),
                           "--data", str(repo / "config/rules/tests/examples.json"),
                           "--case", "close contact of a whitelisted firm is denied"], capsys)
    assert code == 0 and "current (in a reduce lambda) = \"close_contact\"" in out
    assert "result: fail → deny" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rule", "nope"], "no rule 'nope'"),
        (["--rule", "zone", "--case", "nope"], "--case needs a test file"),
    ],
)
def test_explain_bad_arguments_exit_2(repo: Path, capsys, args: list[str], fragment: str):
    code, _out, err = run(["explain", "--data", str(repo / "config/rules/tests/base.json"),
                           "--dir", str(repo / "config/rules"), *args], capsys)
    assert code == 2 and fragment in err


@pytest.mark.parametrize("raw", [b"{\"payload\": {", b"[]", b"\x00\x01", b"{\"payload\": {}}"],
                         ids=["truncated", "array", "binary", "no-external"])
def test_explain_garbage_data_exits_2(repo: Path, tmp_path: Path, capsys, raw: bytes):
    data = tmp_path / "data.json"
    data.write_bytes(raw)
    code, _out, err = run(["explain", "--rule", "zone", "--data", str(data), "--dir", str(repo / "config/rules")], capsys)
    assert code == 2 and "explain" in err


def test_explain_requires_rule_and_data(capsys):
    code, _out, _err = run(["explain"], capsys)
    assert code == 2
