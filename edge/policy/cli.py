"""``checkpoint admin rules``: run rule tests, explain one rule's evaluation (rules.md §5.2).

Exit codes of ``rules test``: 0 every case passes and every rule is covered; 1
otherwise; 2 a rule, settings or test file is malformed (the file and the reason
on stderr). ``rules explain`` exits 0 whatever the rule's result, 2 on bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edge.policy.errors import RuleTestError

__all__ = ["rules"]

DEFAULT_DIR = "config/rules"


def _fail_usage(ctx: click.Context, message: str) -> None:
    click.echo(f"checkpoint: rules: {message}", err=True)
    ctx.exit(2)


def _outcome_text(value: Any) -> str:
    if isinstance(value, dict):
        failed = ", ".join(value.get("failed", []))
        return f"{value.get('outcome')} [{failed}]"
    return str(value)


@click.group()
def rules() -> None:
    """Rule sets: run rule tests, explain an evaluation."""


@rules.command("test")
@click.argument("directory", required=False, default=DEFAULT_DIR, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per case (and a last summary object).")
@click.pass_context
def test_command(ctx: click.Context, directory: str, as_json: bool) -> None:
    """Check the rules in DIRECTORY (default config/rules) and run every case under DIRECTORY/tests."""
    from edge.policy.ruletests import run_dir

    try:
        report = run_dir(directory)
    except RuleTestError as exc:
        _fail_usage(ctx, f"test: {exc}")
        return
    for r in report.results:
        if as_json:
            click.echo(json.dumps(r.as_json(), ensure_ascii=False, sort_keys=True))
            continue
        label = r.rule if r.rule is not None else "decision"
        line = f"{'PASS' if r.ok else 'FAIL'}  {label}  {r.name}"
        if not r.ok:
            line += f"  [{r.file}]: expected {_outcome_text(r.expected)}, got {_outcome_text(r.got)}"
            if r.detail:
                line += f" ({r.detail})"
        click.echo(line)
    total_rules = len(report.covered) + len(report.uncovered)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "summary": True,
                    "passed": report.passed,
                    "cases": len(report.results),
                    "covered": len(report.covered),
                    "rules": total_rules,
                    "uncovered": report.uncovered,
                },
                sort_keys=True,
            )
        )
    else:
        if report.uncovered:
            click.echo(f"not covered (needs a pass and a fail rule case): {', '.join(report.uncovered)}")
        click.echo(
            f"rules test: {report.passed}/{len(report.results)} cases pass; "
            f"{len(report.covered)}/{total_rules} rules covered"
        )
    ctx.exit(0 if report.ok else 1)


@rules.command("explain")
@click.option("--rule", "rule_id", required=True, help="Rule id to explain.")
@click.option("--data", "data_file", required=True, type=click.Path(dir_okay=False), help="Data object (JSON), or a test file with --case.")
@click.option("--case", "case_name", default=None, help="Take the data of this case of the test file given as --data.")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False), help="Rules directory.")
@click.pass_context
def explain_command(ctx: click.Context, rule_id: str, data_file: str, case_name: str | None, directory: str) -> None:
    """Show how rule ID evaluates on a data object: paths read, every sub-expression, the result.

    The data is built as for a test case: the directory's policy is inserted as
    external.settings when absent and external.derived is computed.
    """
    from edge.policy.explain import explain_lines
    from edge.policy.ruletests import build_data, load_json, load_rule_dir

    try:
        rule_dir = load_rule_dir(directory)
        rule = rule_dir.rules.get(rule_id)
        if rule is None:
            known = ", ".join(r.id for r in rule_dir.rules)
            raise RuleTestError(f"no rule {rule_id[:48]!r} in {directory} (rules: {known})")
        path = Path(data_file)
        doc = load_json(path)
        set_: dict[str, Any] | None = None
        unset: list[str] | None = None
        if case_name is not None:
            if not isinstance(doc, dict) or "cases" not in doc:
                raise RuleTestError(f"{path}: --case needs a test file")
            cases = [c for c in doc["cases"] if isinstance(c, dict) and c.get("name") == case_name]
            if not cases:
                raise RuleTestError(f"{path}: no case named {case_name[:80]!r}")
            case = cases[0]
            base = case.get("data")
            if base is None and isinstance(doc.get("base"), str):
                base = load_json(path.parent / doc["base"])
            set_, unset = case.get("set"), case.get("unset")
            if set_ is not None and not isinstance(set_, dict):
                raise RuleTestError(f"{path}: case {case_name[:80]!r}: set must be an object")
            if unset is not None and not isinstance(unset, list):
                raise RuleTestError(f"{path}: case {case_name[:80]!r}: unset must be a list")
            doc = base
        data = build_data(doc, rule_dir.policy, set_=set_, unset=unset, where=str(path))
    except RuleTestError as exc:
        _fail_usage(ctx, f"explain: {exc}")
        return
    lines, _result = explain_lines(rule, data)
    for line in lines:
        click.echo(line)
