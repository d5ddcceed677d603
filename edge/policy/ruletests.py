"""Rule tests (rules.md §5): load a rules directory, build each case's data, run it.

A directory holds ``rules.json`` (array of rules, or a ``rules`` part),
``settings.json`` (the settings part) and ``tests/``. Under ``tests/`` (any depth)
a JSON file whose top-level object has a ``format`` key is a test file; any other
JSON file is a data file that test files name as ``base``. Building a case's data:
deep-copy ``data`` or ``base``; insert the directory's ``policy`` as
``external.settings`` when absent; apply ``set`` in order, then ``unset``; then
compute ``external.derived``. A rule case evaluates one rule's logic exactly as
stage 1 does (strict paths); a decision case runs stage 1 with every rule of the
directory for ``payload.kind`` and ``external.gate.lane``.

Malformed files or cases raise ``RuleTestError`` naming the file and the reason;
``RuleSetError`` from the rules themselves is reported the same way (exit 2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.policy import datamodel
from edge.policy.certlogic import CertLogicError, MissingDataError
from edge.policy.engine import Failure, RuleSet, judge
from edge.policy.errors import RuleSetError, RuleTestError
from edge.policy.settings import check_settings
from sync.canonical import loads_strict
from sync.errors import CanonicalError

__all__ = [
    "FORMAT",
    "CaseResult",
    "Report",
    "RuleDir",
    "build_data",
    "load_json",
    "load_rule_dir",
    "run_dir",
]

FORMAT = "checkpoint-rule-tests/1"
MAX_FILE_BYTES = 16 * 1024 * 1024
_CASE_FIELDS = {"name", "rule", "data", "set", "unset", "expected"}
_FILE_FIELDS = {"format", "description", "base", "cases"}
_MISSING = object()


def load_json(path: Path) -> Any:
    """A JSON file, parsed strictly (no duplicate keys, no BOM); ``RuleTestError`` otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleTestError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return loads_strict(raw, allow_floats=True, max_bytes=MAX_FILE_BYTES)
    except CanonicalError as exc:
        raise RuleTestError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class RuleDir:
    """A rules directory: its checked rule set and its settings part."""

    path: Path
    rules: RuleSet
    settings: Mapping[str, Any]

    @property
    def policy(self) -> Mapping[str, Any]:
        return self.settings["policy"]  # type: ignore[no-any-return]


def load_rule_dir(path: Path | str) -> RuleDir:
    """Load and check ``rules.json`` and ``settings.json`` (all load-time checks of §2.1, §2.3).

    Raises:
        RuleTestError: a file is missing, unreadable, not JSON, or fails a check.
    """
    root = Path(path)
    if not root.is_dir():
        raise RuleTestError(f"{root}: not a directory")
    rules_path, settings_path = root / "rules.json", root / "settings.json"
    rules = load_json(rules_path)
    if isinstance(rules, Mapping):  # a rules part as the bundle carries it
        rules = rules.get("rules")
    settings = load_json(settings_path)
    try:
        check_settings(settings)
    except RuleSetError as exc:
        raise RuleTestError(f"{settings_path}: {exc}") from exc
    try:
        ruleset = RuleSet.from_parts(rules, settings["policy"])
    except RuleSetError as exc:
        raise RuleTestError(f"{rules_path}: {exc}") from exc
    return RuleDir(root, ruleset, settings)


def _set_path(data: Any, path: str, value: Any, where: str) -> None:
    frags = path.split(".") if type(path) is str else []
    if not frags or "" in frags:
        raise RuleTestError(f"{where}: bad path {str(path)[:80]!r}")
    cur = data
    for frag in frags[:-1]:
        cur = cur.get(frag, _MISSING) if isinstance(cur, dict) else _MISSING
        if cur is _MISSING:
            raise RuleTestError(f"{where}: the parent of {path} does not exist")
    if not isinstance(cur, dict):
        raise RuleTestError(f"{where}: the parent of {path} is not an object")
    cur[frags[-1]] = copy.deepcopy(value)


def _unset_path(data: Any, path: str, where: str) -> None:
    frags = path.split(".") if type(path) is str else []
    if not frags or "" in frags:
        raise RuleTestError(f"{where}: bad path {str(path)[:80]!r}")
    cur = data
    for frag in frags[:-1]:
        cur = cur.get(frag, _MISSING) if isinstance(cur, dict) else _MISSING
        if cur is _MISSING:
            return  # nothing to remove
    if isinstance(cur, dict):
        cur.pop(frags[-1], None)


def build_data(
    base: Any,
    policy: Mapping[str, Any],
    *,
    set_: Mapping[str, Any] | None = None,
    unset: list[str] | None = None,
    where: str = "data",
) -> dict[str, Any]:
    """A case's data object (rules.md §5.1): copy, settings, ``set``, ``unset``, ``derived``."""
    if not isinstance(base, dict):
        raise RuleTestError(f"{where}: the data must be an object")
    data = copy.deepcopy(base)
    external = data.get("external")
    if not isinstance(external, dict):
        raise RuleTestError(f"{where}: the data has no external object")
    if "derived" in external:
        raise RuleTestError(f"{where}: test data must not contain external.derived (it is computed)")
    if "settings" not in external:
        external["settings"] = copy.deepcopy(dict(policy))
    for path, value in (set_ or {}).items():
        _set_path(data, path, value, where)
    for path in unset or []:
        _unset_path(data, path, where)
    external = data.get("external")
    if isinstance(external, dict):
        external["derived"] = datamodel.compute_derived(data.get("payload"), external)
    return data


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class CaseResult:
    file: str
    name: str
    rule: str | None  # None: a decision case
    expected: Any
    got: Any
    ok: bool
    detail: str | None = None
    failures: tuple[Failure, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "rule": self.rule,
            "kind": "rule" if self.rule is not None else "decision",
            "ok": self.ok,
            "expected": self.expected,
            "got": self.got,
            "detail": self.detail,
            "failures": [{"rule": f.rule, "outcome": f.outcome, "detail": f.detail} for f in self.failures],
        }


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def ok(self) -> bool:
        return self.passed == len(self.results) and not self.uncovered


def _test_files(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    tests = root / "tests"
    if not tests.is_dir():
        return []
    out = []
    for path in sorted(tests.rglob("*.json")):
        doc = load_json(path)
        if isinstance(doc, dict) and "format" in doc:
            out.append((path, doc))
    return out


def _check_file(path: Path, doc: Mapping[str, Any], rules: RuleSet) -> Any:
    if doc.get("format") != FORMAT:
        raise RuleTestError(f"{path}: format must be {FORMAT!r}")
    unknown = set(doc) - _FILE_FIELDS
    if unknown:
        raise RuleTestError(f"{path}: unknown field {sorted(unknown)[0][:40]!r}")
    if "description" in doc and type(doc["description"]) is not str:
        raise RuleTestError(f"{path}: description must be a string")
    base = None
    if "base" in doc:
        if type(doc["base"]) is not str or not doc["base"]:
            raise RuleTestError(f"{path}: base must be a relative path")
        base_path = (path.parent / doc["base"]).resolve()
        try:
            base = load_json(base_path)
        except RuleTestError as exc:
            raise RuleTestError(f"{path}: base {doc['base'][:80]}: {exc}") from exc
        if not isinstance(base, dict):
            raise RuleTestError(f"{path}: base {doc['base']} is not a JSON object")
    cases = doc.get("cases")
    if type(cases) is not list or not cases:
        raise RuleTestError(f"{path}: cases must be a non-empty list")
    names: set[str] = set()
    for i, case in enumerate(cases):
        where = f"{path}: case #{i + 1}"
        if not isinstance(case, dict):
            raise RuleTestError(f"{where}: must be an object")
        unknown = set(case) - _CASE_FIELDS
        if unknown:
            raise RuleTestError(f"{where}: unknown field {sorted(unknown)[0][:40]!r}")
        name = case.get("name")
        if type(name) is not str or not name:
            raise RuleTestError(f"{where}: name must be a non-empty string")
        if name in names:
            raise RuleTestError(f"{where}: duplicate name {name[:80]!r}")
        names.add(name)
        where = f"{path}: case {name[:80]!r}"
        if "rule" in case:
            if type(case["rule"]) is not str or rules.get(case["rule"]) is None:
                raise RuleTestError(f"{where}: rule {str(case['rule'])[:48]!r} is not in the rule set")
            if case.get("expected") not in ("pass", "fail", "error"):
                raise RuleTestError(f"{where}: expected must be pass, fail or error")
        else:
            exp = case.get("expected")
            if not isinstance(exp, dict) or set(exp) - {"outcome", "failed"} or exp.get("outcome") not in ("ADMIT", "DENY", "REFER"):
                raise RuleTestError(f"{where}: expected must be {{outcome: ADMIT|DENY|REFER, failed?: [rule ids]}}")
            failed = exp.get("failed", [])
            if type(failed) is not list or any(type(f) is not str for f in failed):
                raise RuleTestError(f"{where}: expected.failed must be a list of rule ids")
        if "data" not in case and base is None:
            raise RuleTestError(f"{where}: no data and no base")
        if "set" in case and not isinstance(case["set"], dict):
            raise RuleTestError(f"{where}: set must be an object of path -> value")
        if "unset" in case and (type(case["unset"]) is not list or any(type(p) is not str for p in case["unset"])):
            raise RuleTestError(f"{where}: unset must be a list of paths")
    return base


def run_case(rule_dir: RuleDir, case: Mapping[str, Any], base: Any, file: str) -> CaseResult:
    where = f"{file}: case {case['name'][:80]!r}"
    data = build_data(case.get("data", base), rule_dir.policy, set_=case.get("set"), unset=case.get("unset"), where=where)
    rule_id = case.get("rule")
    if rule_id is not None:
        rule = rule_dir.rules.get(rule_id)
        assert rule is not None
        detail = None
        try:
            value = rule.program.evaluate(data, strict_paths=True)
            got = "pass" if value is True else "fail" if value is False else "error"
            if got == "error":
                detail = f"returned {type(value).__name__ if value is not None else 'null'}, not a boolean"
        except MissingDataError as exc:
            got, detail = "error", f"missing {exc.path}"
        except CertLogicError as exc:
            got, detail = "error", str(exc)
        expected = case["expected"]
        return CaseResult(file, case["name"], rule_id, expected, got, got == expected, detail)

    raw_payload = data.get("payload")
    payload: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}
    external = data["external"]
    kind = payload.get("kind")
    raw_gate = external.get("gate")
    gate: dict[str, Any] = raw_gate if isinstance(raw_gate, dict) else {}
    lane = gate.get("lane")
    now_ms = datamodel.instant_ms(external.get("now"))
    rules = rule_dir.rules.select(kind, lane, now_ms) if type(kind) is str and type(lane) is str and now_ms is not None else ()
    want: dict[str, Any] = {
        "outcome": case["expected"]["outcome"],
        "failed": sorted(set(case["expected"].get("failed", []))),
    }
    if not rules:
        none_apply = {"outcome": "REFER", "failed": ["pre-no-rule"]}
        ok = want["outcome"] == "REFER" and set(case["expected"].get("failed", [])) <= {"pre-no-rule"}
        return CaseResult(file, case["name"], None, want, none_apply, ok, "no rule applies to this kind and lane")
    j = judge(rules, data)
    failed = sorted({f.rule for f in j.failures})
    ok = j.outcome == want["outcome"] and ("failed" not in case["expected"] or failed == want["failed"])
    errors = [f"{f.rule}: {f.detail}" for f in j.failures if f.outcome == "error"]
    return CaseResult(
        file, case["name"], None, want, {"outcome": j.outcome, "failed": failed}, ok, "; ".join(errors) or None, j.failures
    )


def run_dir(path: Path | str) -> Report:
    """Run every case of every test file under ``path/tests`` (rules.md §5.2).

    Raises:
        RuleTestError: a rule, settings or test file is malformed (``rules test`` exits 2).
    """
    rule_dir = load_rule_dir(path)
    files = _test_files(rule_dir.path)
    checked = [(p, doc, _check_file(p, doc, rule_dir.rules)) for p, doc in files]
    report = Report()
    pass_cases: set[str] = set()
    fail_cases: set[str] = set()
    for p, doc, base in checked:
        rel = str(p.relative_to(rule_dir.path)) if p.is_relative_to(rule_dir.path) else str(p)
        for case in doc["cases"]:
            result = run_case(rule_dir, case, base, rel)
            report.results.append(result)
            if result.rule is not None:
                (pass_cases if case["expected"] == "pass" else fail_cases if case["expected"] == "fail" else set()).add(
                    result.rule
                )
    for rule in rule_dir.rules:
        (report.covered if rule.id in pass_cases and rule.id in fail_cases else report.uncovered).append(rule.id)
    return report
