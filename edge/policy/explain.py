"""``rules explain``: one rule's evaluation shown node by node (rules.md §5.2).

The rule runs exactly as stage 1 runs it (strict paths) under a trace; the
expression is then printed as an indented tree with the value of every evaluated
sub-expression, branches not taken marked as such, the data paths read with their
values, and the result with the reason a guard would see.
"""

from __future__ import annotations

import json
from typing import Any

from edge.policy.certlogic import DateTime, MissingDataError, TraceRecord
from edge.policy.engine import Rule

__all__ = ["explain_lines"]

_WIDTH = 56
_MAX_VALUE = 80


def _show(value: Any) -> str:
    if isinstance(value, DateTime):
        return f"DT {value.isoformat()}"
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _outcome(rec: TraceRecord) -> str:
    if rec.error is not None:
        if isinstance(rec.error, MissingDataError):
            return f"error: missing {rec.error.path}"
        return f"error: {rec.error}"
    return _show(rec.value)


def _label(expr: Any) -> tuple[str, list[tuple[int, Any]]]:
    """The text of one node and its children (position index, sub-expression)."""
    if type(expr) is dict and len(expr) == 1:
        ((op, operands),) = expr.items()
        if op == "var":
            return f"var {operands if type(operands) is str else _show(operands)}", []
        if type(operands) is list:
            return str(op), list(enumerate(operands))
        return f"{op} {_show(operands)}", []
    if type(expr) is list:
        if all(type(e) in (str, int, bool) for e in expr):
            return _show(expr), []
        return "[array]", list(enumerate(expr))
    return _show(expr), []


def _tree(expr: Any, pos: tuple[int, ...], depth: int, records: dict[tuple[int, ...], list[TraceRecord]], out: list[str]) -> None:
    label, children = _label(expr)
    recs = records.get(pos, [])
    if not recs:
        result = "(not evaluated)"
    elif len(recs) == 1:
        result = "→ " + _outcome(recs[0])
    else:
        shown = ", ".join(_outcome(r) for r in recs[:6]) + (", …" if len(recs) > 6 else "")
        result = f"→ {shown} ({len(recs)} evaluations)"
    line = "  " * (depth + 1) + label
    pad = max(1, _WIDTH - len(line))
    out.append(f"{line}{' ' * pad}{result}")
    for i, child in children:
        _tree(child, (*pos, i), depth + 1, records, out)


def _paths_read(expr: Any, records: dict[tuple[int, ...], list[TraceRecord]]) -> list[str]:
    """``path = value`` for every var node evaluated, in tree order, once per path."""
    seen: dict[str, str] = {}
    stack: list[tuple[Any, tuple[int, ...], bool]] = [(expr, (), False)]
    lines: list[str] = []
    while stack:
        node, pos, in_lambda = stack.pop()
        if type(node) is dict and len(node) == 1:
            ((op, operands),) = node.items()
            if op == "var":
                for rec in records.get(pos, []):
                    key = f"{operands} (in a reduce lambda)" if in_lambda else str(operands)
                    if key not in seen:
                        seen[key] = _outcome(rec)
                        lines.append(f"  {key} = {seen[key]}")
                continue
            if type(operands) is list:
                for i in reversed(range(len(operands))):
                    stack.append((operands[i], (*pos, i), in_lambda or (op == "reduce" and i == 1)))
        elif type(node) is list:
            for i in reversed(range(len(node))):
                stack.append((node[i], (*pos, i), in_lambda))
    return lines


def explain_lines(rule: Rule, data: Any) -> tuple[list[str], str]:
    """Lines describing the evaluation of ``rule`` on ``data``, and the result (pass/fail/error)."""
    trace, value, error = rule.program.trace(data, strict_paths=True)
    records = trace.by_pos()
    out = [
        f"rule {rule.id} {rule.version}: outcome {rule.outcome}, alert {rule.alert}, override {rule.override}",
        f"  {rule.description.zh} / {rule.description.en}",
        f"  applies to kinds {', '.join(k for k in ('health', 'roster', 'dcc', 'pass') if k in rule.kinds)}"
        f" at lanes {', '.join(lane for lane in ('person', 'green_lane') if lane in rule.lanes)}",
    ]
    payload = data.get("payload") if isinstance(data, dict) else None
    external = data.get("external") if isinstance(data, dict) else None
    kind = payload.get("kind") if isinstance(payload, dict) else None
    gate = external.get("gate") if isinstance(external, dict) else None
    lane = gate.get("lane") if isinstance(gate, dict) else None
    if kind not in rule.kinds or lane not in rule.lanes:
        out.append(f"  note: in a decision this rule would not run for kind {kind} at lane {lane}")
    out.append("data read:")
    out.extend(_paths_read(rule.logic, records) or ["  (none)"])
    out.append("evaluation:")
    _tree(rule.logic, (), 0, records, out)
    if error is not None:
        detail = f"missing {error.path}" if isinstance(error, MissingDataError) else str(error)
        result = "error"
        out.append(f"result: error ({detail}): counts as refer, never admit")
        out.append(f"  guard sees: 规则执行错误，请人工核验（{rule.id}） / Rule error: check by hand ({rule.id})")
    elif value is True:
        result = "pass"
        out.append("result: pass")
    elif value is False:
        result = "fail"
        reason = rule.render_reason(data)
        out.append(f"result: fail → {rule.outcome}")
        out.append(f"  guard sees: {reason.zh} / {reason.en}")
    else:
        result = "error"
        out.append(f"result: error (returned {_show(value)}, not a boolean): counts as refer, never admit")
    return out, result
