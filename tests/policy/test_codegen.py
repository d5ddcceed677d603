"""The generated strict evaluator equals the closure evaluator (differential tests).

The engine runs rules through ``codegen.compile_strict``; ``certlogic``'s closures are
the reference. Every default rule on every rule-test data object, and random
expressions over random data (valid and invalid), must give the same value, or the
same error with the same message.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.policy.certlogic import CertLogicError, DateTime, MissingDataError, Program, strict_equal
from edge.policy.codegen import compile_strict
from edge.policy.ruletests import _test_files, build_data, load_rule_dir
from tests.policy.conftest import RULES_DIR


def outcome(fn: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except MissingDataError as exc:
        return "missing", exc.path
    except CertLogicError as exc:
        return "error", str(exc)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] != "ok":
        return a[1] == b[1]
    x, y = a[1], b[1]
    if isinstance(x, DateTime) or isinstance(y, DateTime):
        return type(x) is type(y) and x == y
    return strict_equal(x, y) and type(x) is type(y)


def check(expr: Any, data: Any, *, generated_code: bool = True) -> None:
    reference = outcome(lambda d: Program(expr).evaluate(d, strict_paths=True), data)
    fn = compile_strict(expr)
    if generated_code:  # not a silent fall-back to the closures (a compile warning would cause one)
        assert fn.__name__ == "rule"
    generated = outcome(fn, data)
    assert same(reference, generated), f"{json.dumps(expr, default=repr)[:300]} on {data!r:.200}: {reference} != {generated}"


def test_every_default_rule_on_every_test_case():
    rule_dir = load_rule_dir(RULES_DIR)
    count = 0
    for path, doc in _test_files(RULES_DIR):
        base = json.loads((path.parent / doc["base"]).read_text(encoding="utf-8")) if "base" in doc else None
        for case in doc["cases"]:
            data = build_data(case.get("data", base), rule_dir.policy, set_=case.get("set"), unset=case.get("unset"))
            for rule in rule_dir.rules:
                check(rule.logic, data)
                count += 1
    assert count > 2000


def test_the_engine_uses_generated_code():
    rule_dir = load_rule_dir(RULES_DIR)
    assert all(rule.strict.__name__ == "rule" for rule in rule_dir.rules)


def test_source_injection_is_impossible():
    nasty = "__import__('os').system('echo pwned')"
    check({"var": nasty}, {nasty: 1})
    check({"===": [{"var": "a"}, "x\"'\n\\ {}"]}, {"a": "x\"'\n\\ {}"})
    check({"in": ["'); raise SystemExit('", ["'); raise SystemExit('"]]}, {})
    check({"plusTime": ["2022-05-10", 1, "day'); x=('"]}, {})


def test_deep_expressions_fall_back_to_closures():
    deep: Any = {"var": "a"}
    for _ in range(60):  # 120 JSON levels: valid, but deeper than the generator goes
        deep = {"if": [True, deep, False]}
    fn = compile_strict(deep)
    assert outcome(fn, {"a": 5}) == ("ok", 5)
    assert fn.__name__ != "rule"  # the generator gave up; the closures run it
    too_deep: Any = True
    for _ in range(70):
        too_deep = {"!": [too_deep]}
    check(too_deep, {}, generated_code=False)


KEYS = st.sampled_from(["a", "b", "c", "0", "1", "accumulator", "current", "xs"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([1.5, 2.0, 0.0])
    | st.sampled_from(["", "x", "a", "green", "2022-05-10", "2022-05-10T08:00:00Z", "2021", "2022-02-30", "01:NL:1/2"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)
PATHS = st.lists(KEYS, min_size=0, max_size=3).map(".".join) | st.sampled_from(["a.", "..", 1, None])
OPS = st.sampled_from(
    ["if", "and", "!", "===", "in", "+", "<", ">", "<=", ">=", "after", "before", "not-after", "not-before",
     "plusTime", "dccDateOfBirth", "reduce", "extractFromUVCI", "or", "var"]
)


def _expr(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    op_node = st.tuples(OPS, st.lists(inner, min_size=0, max_size=4)).map(lambda t: {t[0]: t[1]})
    plus_time = st.tuples(inner, st.sampled_from([0, 1, -1, 1.5, "1"]), st.sampled_from(["day", "month", "year", "hour", "week"])).map(
        lambda t: {"plusTime": list(t)}
    )
    uvci = st.tuples(inner, st.sampled_from([0, 1, 3, -1, 2.0, "0"])).map(lambda t: {"extractFromUVCI": list(t)})
    return op_node | plus_time | uvci | st.lists(inner, max_size=3)


EXPR = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from([1.5, 2.0]) | st.sampled_from(["", "x", "green", "2022-05-10"])
    | PATHS.map(lambda p: {"var": p}),
    _expr,
    max_leaves=14,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPR, JSON)
def test_random_expressions_agree(expr, data):
    check(expr, data)
