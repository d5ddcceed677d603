"""CertLogic evaluator: every example table of rules.md §1.5-1.7 plus the edge cases.

``ERR`` marks "raises CertLogicError"; ``DT("...")`` a date-time result. Results are
compared strictly (``true`` is not ``1``), as the conformance runners do.
"""

from __future__ import annotations

import json
import math

import pytest

from edge.policy.certlogic import (
    MAX_DEPTH,
    CertLogicError,
    DateTime,
    Issue,
    MissingDataError,
    compile,
    evaluate,
    is_falsy,
    is_truthy,
    strict_equal,
    trace,
    validate,
)

ERR = object()


def DT(s: str) -> DateTime:  # reads like the spec: "DT x"
    return evaluate({"plusTime": [s, 0, "hour"]}, {})


def PT(s: str) -> dict:  # the spec shorthand
    return {"plusTime": [s, 0, "day"]}


def same(a, b) -> bool:
    """Strict comparison of results: types matter, an int equals an integral float."""
    if isinstance(a, DateTime) or isinstance(b, DateTime):
        return type(a) is type(b) and a == b
    return strict_equal(a, b)


def check(expr, data, expected) -> None:
    if expected is ERR:
        with pytest.raises(CertLogicError):
            evaluate(expr, data)
        with pytest.raises(CertLogicError):
            compile(expr).evaluate(data)
        return
    got = evaluate(expr, data)
    assert same(got, expected), f"{json.dumps(expr)} on {data!r}: got {got!r}, expected {expected!r}"
    assert same(compile(expr).evaluate(data), expected)


VAR = [
    ({"var": "a.b"}, {"a": {"b": 7}}, 7),
    ({"var": "a.c"}, {"a": {"b": 7}}, None),
    ({"var": "a.b.c"}, {"a": {"b": 7}}, None),
    ({"var": "xs.1"}, {"xs": ["p", "q"]}, "q"),
    ({"var": "xs.2"}, {"xs": ["p", "q"]}, None),
    ({"var": "xs.1.k"}, {"xs": [{"k": 1}, {"k": 2}]}, 2),
    ({"var": "0"}, ["first"], "first"),
    ({"var": ""}, [1, 2], [1, 2]),
    ({"var": "a.b"}, None, None),
    ({"var": "a"}, {"a": None}, None),
    ({"var": "s.0"}, {"s": "abc"}, None),
    ({"var": "xs.n"}, {"xs": [1]}, None),
    ({"var": 1}, {}, ERR),
    ({"var": ["a"]}, {}, ERR),
    # more edge cases
    ({"var": ""}, 1, 1),
    ({"var": ""}, None, None),
    ({"var": "x.0"}, {"x": {"0": "key zero"}}, "key zero"),  # digits look up the key text [ours]
    ({"var": "x.0"}, {"x": {"z": 1}}, None),
    ({"var": "xs.01"}, {"xs": ["a", "b"]}, "b"),  # leading zeros allowed on arrays
    ({"var": "n.x"}, {"n": 5}, None),
    ({"var": "b.x"}, {"b": True}, None),
    ({"var": "1"}, [], None),
    ({"var": "1"}, [1, 2], 2),
    ({"var": "a.b"}, {"a": [{"b": 1}]}, None),  # array with a non-digit fragment
    ({"var": "x"}, {"x": False}, False),
    ({"var": "x"}, {"x": 0}, 0),
    ({"var": None}, {}, ERR),
    ({"var": "a", "if": []}, {}, ERR),
    ({"var": "١"}, ["a", "b"], None),  # non-ASCII digits are not an index
]


@pytest.mark.parametrize(("expr", "data", "expected"), VAR)
def test_var(expr, data, expected):
    check(expr, data, expected)


NOT = [
    ({"!": [""]}, {}, True),
    ({"!": ["0"]}, {}, False),
    ({"!": [0]}, {}, True),
    ({"!": [[]]}, {}, True),
    ({"!": [[False]]}, {}, False),
    ({"!": [{"var": "o"}]}, {"o": {}}, True),
    ({"!": [{"var": "o"}]}, {"o": {"k": False}}, False),
    ({"!": [{"var": "x"}]}, {"x": 1.5}, ERR),
    ({"!": [PT("2022-05-10")]}, {}, ERR),
    ({"!": [True, False]}, {}, ERR),
    ({"!": []}, {}, ERR),
    ({"!": [True]}, {}, False),
    ({"!": [False]}, {}, True),
    ({"!": [{"var": "x"}]}, {}, True),
    ({"!": ["false"]}, {}, False),
    ({"!": [-1]}, {}, False),
    ({"!": [{"var": "x"}]}, {"x": 2.0}, False),  # an integral float is an integer
    ({"!": [{"var": "x"}]}, {"x": 0.0}, True),
    ({"!": [{"!": [{"var": "x"}]}]}, {"x": "s"}, True),
    ({"!": {"var": "x"}}, {}, ERR),
]


@pytest.mark.parametrize(("expr", "data", "expected"), NOT)
def test_not_and_truthiness(expr, data, expected):
    check(expr, data, expected)


IF = [
    ({"if": [{"var": "a"}, "yes", "no"]}, {"a": "x"}, "yes"),
    ({"if": [{"var": "a"}, "yes", "no"]}, {}, "no"),
    ({"if": [{"var": "n"}, 1, 2]}, {"n": 0}, 2),
    ({"if": [True, "yes", {"var": 1}]}, {}, "yes"),
    ({"if": [PT("2022-05-10"), 1, 2]}, {}, ERR),
    ({"if": [True, 1]}, {}, ERR),
    ({"if": [False, {"var": 1}, "no"]}, {}, "no"),
    ({"if": [False, None, 3]}, {}, 3),
    ({"if": [True, None, 3]}, {}, ERR),
    ({"if": [[], "apple", "banana"]}, None, "banana"),
    ({"if": [[1, 2], "apple", "banana"]}, None, "apple"),
    ({"if": ["0", "apple", "banana"]}, None, "apple"),
    ({"if": [-1, "apple", "banana"]}, None, "apple"),
    ({"if": [{"var": "o"}, 1, 2]}, {"o": {}}, 2),
    ({"if": [{"var": "x"}, 1, 2]}, {"x": 37.5}, ERR),
    ({"if": [True, 1, 2, 3]}, {}, ERR),
    ({"if": []}, {}, ERR),
    ({"if": [{"var": ""}, "T", "F"]}, True, "T"),
    ({"if": [{"var": ""}, "T", "F"]}, ["foo"], "T"),
    ({"if": [{"var": ""}, "T", "F"]}, {}, "F"),
    ({"if": [{"var": ""}, "T", "F"]}, None, "F"),
    ({"if": [{"var": ""}, "T", "F"]}, False, "F"),
]


@pytest.mark.parametrize(("expr", "data", "expected"), IF)
def test_if(expr, data, expected):
    check(expr, data, expected)


OR_EXPR = {"!": [{"and": [{"!": [{"var": "a"}]}, {"!": [{"var": "b"}]}]}]}
AND = [
    ({"and": [True, 1, "x"]}, {}, "x"),
    ({"and": [True, 0, {"var": 1}]}, {}, 0),
    ({"and": [{"var": "a"}, {"var": "a.b"}]}, {"a": ""}, ""),
    ({"and": [True, []]}, {}, []),
    ({"and": [True]}, {}, ERR),
    ({"and": [PT("2022-05-10"), True]}, {}, ERR),
    (OR_EXPR, {"a": False, "b": "x"}, True),
    (OR_EXPR, {"a": 0, "b": ""}, False),
    # more
    ({"and": [True, PT("2022-05-10")]}, {}, ERR),  # the last operand is checked too [ours]
    ({"and": [False, PT("2022-05-10")]}, {}, False),
    ({"and": [{"var": "0"}, {"var": "1"}]}, [None, True], None),
    ({"and": [{"var": "0"}, {"var": "1"}]}, [True, {}], {}),
    ({"and": [{"var": "0"}, {"var": "1"}, {"var": "2"}]}, [True, None, False], None),
    ({"and": [1, 3]}, {}, 3),
    ({"and": [3, False]}, {}, False),
    ({"and": [True, True, True]}, {}, True),
    ({"and": ["0", True]}, {}, True),
    ({"and": [None, True]}, {}, ERR),  # a null *literal* is an error even first
    ({"and": []}, {}, ERR),
    ({"and": True}, {}, ERR),
    ({"or": [True, False]}, {}, ERR),
]


@pytest.mark.parametrize(("expr", "data", "expected"), AND)
def test_and(expr, data, expected):
    check(expr, data, expected)


EQ = [
    ({"===": [1, 1]}, {}, True),
    ({"===": [1, "1"]}, {}, False),
    ({"===": [0, False]}, {}, False),
    ({"===": [{"var": "a"}, {"var": "b"}]}, {}, True),
    ({"===": ["a", "a", "a"]}, {}, ERR),
    ({"===": [True, 1]}, {}, False),
    ({"===": [1, True]}, {}, False),
    ({"===": [{"var": "x"}, ""]}, {"x": None}, False),
    ({"===": [{"var": "x"}, 2]}, {"x": 2.0}, True),
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": 2, "y": 2.0}, True),
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": True, "y": 1}, False),
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": [1, "a"], "y": [1, "a"]}, True),  # [ours]
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": [1], "y": [True]}, False),
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": {"k": 0}, "y": {"k": False}}, False),
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": {"k": 0}, "y": {"k": 0}}, True),
    ({"===": [PT("2022-05-10"), PT("2022-05-10T00:00:00Z")]}, {}, True),  # by instant [ours]
    ({"===": [PT("2022-05-10"), "2022-05-10"]}, {}, False),
    ({"===": [{"var": "x"}, 1.5]}, {"x": 1.5}, ERR),  # the literal is invalid
    ({"===": [{"var": "x"}, {"var": "y"}]}, {"x": 1.5, "y": 1.5}, True),
    ({"===": [0, "0"]}, None, False),
    ({"===": [1]}, {}, ERR),
    ({"!==": [1, 2]}, {}, ERR),
    ({"==": [1, 1]}, {}, ERR),
]


@pytest.mark.parametrize(("expr", "data", "expected"), EQ)
def test_strict_equality(expr, data, expected):
    check(expr, data, expected)


IN = [
    ({"in": ["b", ["a", "b"]]}, {}, True),
    ({"in": [1, ["1"]]}, {}, False),
    ({"in": [{"var": "x"}, []]}, {}, False),
    ({"in": [{"var": "x"}, {"var": "ys"}]}, {"x": None, "ys": [None]}, True),
    ({"in": ["a", {"var": "list"}]}, {"list": None}, ERR),
    ({"in": ["ab", "abc"]}, {}, ERR),
    ({"in": [{"var": "x"}, [None]]}, {}, ERR),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": None, "y": []}, False),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": None, "y": ["a", "b"]}, False),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": "a", "y": ["a", "b"]}, True),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": "c", "y": ["a", "b"]}, False),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": 1, "y": [True]}, False),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": True, "y": [1]}, False),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": 1, "y": [1.0]}, True),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": 0, "y": [False]}, False),
    ({"in": [{"var": "x"}, {"var": "y"}]}, {"x": "a", "y": {"a": 1}}, ERR),
    ({"in": [{"var": "x"}, ["a", "b"]]}, {"x": 1}, False),
    ({"in": [{"var": "x"}, ["a", "b"]]}, {"x": ["a"]}, False),
    ({"in": ["Bart", ["Bart", "Homer", "Lisa"]]}, {}, True),
    ({"in": ["Milhouse", ["Bart", "Homer", "Lisa"]]}, {}, False),
    ({"in": ["b", ["a", 1, "b"]]}, {}, True),
    ({"in": ["a"]}, {}, ERR),
]


@pytest.mark.parametrize(("expr", "data", "expected"), IN)
def test_in(expr, data, expected):
    check(expr, data, expected)


PLUS = [
    ({"+": [2, 3]}, {}, 5),
    ({"+": [{"var": "a"}, -5]}, {"a": 3}, -2),
    ({"+": [1, "2"]}, {}, ERR),
    ({"+": [True, 1]}, {}, ERR),
    ({"+": [1, 2, 3]}, {}, ERR),
    ({"+": [{"var": "a"}, 1]}, {}, ERR),
    ({"+": [{"var": "a"}, 1]}, {"a": 2.0}, 3),
    ({"+": [{"var": "a"}, 1]}, {"a": 2.5}, ERR),
    ({"+": [PT("2022-05-10"), 1]}, {}, ERR),
    ({"+": [1]}, {}, ERR),
    ({"-": [3, 1]}, {}, ERR),
]


@pytest.mark.parametrize(("expr", "data", "expected"), PLUS)
def test_plus(expr, data, expected):
    check(expr, data, expected)


def test_plus_returns_an_int_for_integral_floats():
    assert type(evaluate({"+": [{"var": "a"}, 1]}, {"a": 2.0})) is int


COMPARE = [
    ({"<": [1, 2]}, {}, True),
    ({">=": [2, 2]}, {}, True),
    ({"<": [1, 2, 2]}, {}, False),
    ({"<=": [1, 2, 2]}, {}, True),
    ({">": [3, 2, 1]}, {}, True),
    ({"<=": [0, {"var": "x"}, 10]}, {"x": 11}, False),
    ({"<": [{"var": "x"}, 5]}, {}, ERR),
    ({"<": ["1", 5]}, {}, ERR),
    ({"<": [{"var": "t"}, 373]}, {"t": 37.5}, ERR),
    ({"<": [1, 2, 3, 4]}, {}, ERR),
    # more: every operator, both forms, boundaries
    ({">": [2, 1]}, {}, True),
    ({">": [1, 1]}, {}, False),
    ({">=": [1, 2]}, {}, False),
    ({"<": [1, 1]}, {}, False),
    ({"<=": [2, 1]}, {}, False),
    ({"<": [1, 2, 3]}, {}, True),
    ({"<": [1, 4, 3]}, {}, False),
    ({">=": [3, 3, 3]}, {}, True),
    ({">": [3, 3, 1]}, {}, False),
    ({"<=": [{"var": "0"}, {"var": "1"}, {"var": "2"}]}, [0, 1, 2], True),
    ({"<=": [{"var": "0"}, {"var": "1"}, {"var": "2"}]}, [1, 0, 2], False),
    ({"<=": [{"var": "0"}, {"var": "1"}, {"var": "2"}]}, [2, 1, 0], False),
    ({"<": [True, 2]}, {}, ERR),
    ({"<": [1, 2, None]}, {}, ERR),
    ({"<": [1, 2, {"var": "x"}]}, {}, ERR),  # all operands checked, even after a decided pair
    ({"<": [2, 1, "x"]}, {}, ERR),
    ({"<": [PT("2022-05-10"), PT("2022-05-11")]}, {}, ERR),
    ({"<": [1]}, {}, ERR),
    ({"<": [{"var": "x"}, 5]}, {"x": 4.0}, True),
    ({">": [{"var": "x"}, -1]}, {"x": 0}, True),
]


@pytest.mark.parametrize(("expr", "data", "expected"), COMPARE)
def test_integer_comparisons(expr, data, expected):
    check(expr, data, expected)


DATE_COMPARE = [
    ({"after": [PT("2022-05-10T08:00:01Z"), PT("2022-05-10T16:00:00+08:00")]}, {}, True),
    ({"before": [PT("2022-05-10"), PT("2022-05-10T00:00:00Z")]}, {}, False),
    ({"not-after": [PT("2022-05-10"), PT("2022-05-10T00:00:00Z")]}, {}, True),
    (
        {"not-before": [{"plusTime": ["2022-05-09T12:00:00Z", 1, "day"]}, PT("2022-05-10T12:00:00Z")]},
        {},
        True,
    ),
    (
        {"not-after": [PT("2022-05-01"), {"plusTime": [{"var": "now"}, 0, "day"]}, PT("2022-05-31")]},
        {"now": "2022-05-31T00:00:01Z"},
        False,
    ),
    ({"after": ["2022-05-10", "2022-05-09"]}, {}, ERR),
    ({"before": [PT("2022-05-10"), 1]}, {}, ERR),
    # more
    ({"after": [PT("2022-05-10"), PT("2022-05-10")]}, {}, False),
    ({"not-before": [PT("2022-05-10"), PT("2022-05-10")]}, {}, True),
    ({"before": [PT("2022-05-09"), PT("2022-05-10"), PT("2022-05-11")]}, {}, True),
    ({"before": [PT("2022-05-09"), PT("2022-05-11"), PT("2022-05-10")]}, {}, False),
    ({"after": [PT("2022-05-11"), PT("2022-05-10"), PT("2022-05-09")]}, {}, True),
    ({"not-before": [PT("2022-05-11"), PT("2022-05-11"), PT("2022-05-09")]}, {}, True),
    ({"not-after": [PT("2022-05-01"), PT("2022-05-01"), PT("2022-05-01")]}, {}, True),
    ({"after": [PT("2022-05-10")]}, {}, ERR),
    ({"after": [PT("2022-05-10"), PT("2022-05-10"), PT("2022-05-10"), PT("2022-05-10")]}, {}, ERR),
    ({"after": [PT("2022-05-10"), {"var": "x"}]}, {}, ERR),
    ({"after": [PT("2022-05-10"), {"dccDateOfBirth": ["2022-05-09"]}]}, {}, True),
]


@pytest.mark.parametrize(("expr", "data", "expected"), DATE_COMPARE)
def test_date_comparisons(expr, data, expected):
    check(expr, data, expected)


PLUS_TIME = [
    ("2022-05-10", 0, "day", "2022-05-10T00:00:00.000Z"),
    ("2022-05-10T16:30:00+08:00", 0, "hour", "2022-05-10T08:30:00.000Z"),
    ("2022-05-10T08:30:00", 0, "hour", "2022-05-10T08:30:00.000Z"),
    ("2022-05-10T08:30:00.123456Z", 0, "hour", "2022-05-10T08:30:00.123Z"),
    ("2022-05-10T08:30:00.5-0130", 0, "hour", "2022-05-10T10:00:00.500Z"),
    ("2022-05-10T08:30:00+8", 0, "hour", "2022-05-10T00:30:00.000Z"),
    ("2022-05", 0, "day", "2022-05-31T00:00:00.000Z"),
    ("2024-02", 0, "day", "2024-02-29T00:00:00.000Z"),
    ("2022", 0, "day", "2022-12-31T00:00:00.000Z"),
    ("2022-05-10T08:00:00Z", -48, "hour", "2022-05-08T08:00:00.000Z"),
    ("2022-05-10T08:00:00Z", 2, "day", "2022-05-12T08:00:00.000Z"),
    ("2022-12-15", 1, "month", "2023-01-15T00:00:00.000Z"),
    ("2022-01-31", 1, "month", "2022-03-03T00:00:00.000Z"),
    ("2024-01-31", 1, "month", "2024-03-02T00:00:00.000Z"),
    ("2022-03-31", -1, "month", "2022-03-03T00:00:00.000Z"),
    ("2022-05-31", 1, "month", "2022-07-01T00:00:00.000Z"),
    ("2024-02-29", 1, "year", "2025-03-01T00:00:00.000Z"),
    ("2024-02-29", -4, "year", "2020-02-29T00:00:00.000Z"),
    ("2022-02", 1, "month", "2022-03-28T00:00:00.000Z"),
    ("2021", 2, "month", "2022-03-03T00:00:00.000Z"),
    # more: offsets of every allowed shape, fractions, leap years, rollovers
    ("2022-05-10T08:30:00+08", 0, "hour", "2022-05-10T00:30:00.000Z"),
    ("2022-05-10T08:30:00+0800", 0, "hour", "2022-05-10T00:30:00.000Z"),
    ("2022-05-10T08:30:00+800", 0, "hour", "2022-05-10T00:30:00.000Z"),
    ("2022-05-10T08:30:00+8:00", 0, "hour", "2022-05-10T00:30:00.000Z"),
    ("2022-05-10T08:30:00+08:00", 0, "hour", "2022-05-10T00:30:00.000Z"),
    ("2022-05-10T08:30:00+05:30", 0, "hour", "2022-05-10T03:00:00.000Z"),
    ("2022-05-10T08:30:00-09:30", 0, "hour", "2022-05-10T18:00:00.000Z"),
    ("2022-05-10T23:30:00-01:00", 0, "hour", "2022-05-11T00:30:00.000Z"),
    ("2022-01-01T00:30:00+01:00", 0, "hour", "2021-12-31T23:30:00.000Z"),
    ("2022-05-10T08:30:00.9999Z", 0, "hour", "2022-05-10T08:30:00.999Z"),
    ("2022-05-10T08:30:00.1Z", 0, "hour", "2022-05-10T08:30:00.100Z"),
    ("2022-05-10T08:30:00.12+08:00", 0, "hour", "2022-05-10T00:30:00.120Z"),
    ("2022-05-10T08:30:00.000Z", 0, "day", "2022-05-10T08:30:00.000Z"),
    ("2022-05-10", 0, "year", "2022-05-10T00:00:00.000Z"),
    ("2022-05-10", 0, "month", "2022-05-10T00:00:00.000Z"),
    ("2020-02-29", 1, "day", "2020-03-01T00:00:00.000Z"),
    ("2020-02-29", 1, "month", "2020-03-29T00:00:00.000Z"),
    ("2020-02-29", 1, "year", "2021-03-01T00:00:00.000Z"),
    ("2020-02-29", 4, "year", "2024-02-29T00:00:00.000Z"),
    ("2000-02-29", 100, "year", "2100-03-01T00:00:00.000Z"),  # 2100 is no leap year
    ("1900-02", 0, "day", "1900-02-28T00:00:00.000Z"),
    ("2000-02", 0, "day", "2000-02-29T00:00:00.000Z"),
    ("2022-12-31T23:00:00Z", 1, "hour", "2023-01-01T00:00:00.000Z"),
    ("2022-03-01", -1, "day", "2022-02-28T00:00:00.000Z"),
    ("2024-03-01", -1, "day", "2024-02-29T00:00:00.000Z"),
    ("2022-01-31T10:15:00Z", 13, "month", "2023-03-03T10:15:00.000Z"),
    ("2022-05-10T08:00:00Z", -24, "month", "2020-05-10T08:00:00.000Z"),
    ("2022-10-31", -1, "month", "2022-10-01T00:00:00.000Z"),
    ("2022-05-31T22:00:00-03:00", 1, "month", "2022-07-01T01:00:00.000Z"),  # UTC fields shift
    ("2004-01", 18, "year", "2022-01-31T00:00:00.000Z"),
    ("0001-01-01", 0, "day", "0001-01-01T00:00:00.000Z"),
    ("9999-12-31T23:59:59.999Z", 0, "hour", "9999-12-31T23:59:59.999Z"),
]


@pytest.mark.parametrize(("s", "amount", "unit", "expected"), PLUS_TIME)
def test_plus_time(s, amount, unit, expected):
    got = evaluate({"plusTime": [s, amount, unit]}, {})
    assert type(got) is DateTime
    assert got.isoformat() == expected


PLUS_TIME_ERRORS = [
    ({"plusTime": ["2022-05-10T08:30Z", 0, "hour"]}, {}),
    ({"plusTime": ["2022-05-10 08:30:00Z", 0, "hour"]}, {}),
    ({"plusTime": ["10/05/2022", 0, "day"]}, {}),
    ({"plusTime": [{"var": "t"}, 1, "day"]}, {"t": None}),
    ({"plusTime": ["2022-05-10", {"var": "n"}, "day"]}, {"n": 1}),
    ({"plusTime": ["2022-05-10", 1.5, "day"]}, {}),
    ({"plusTime": ["2022-05-10", 1, "week"]}, {}),
    ({"plusTime": [{"plusTime": ["2022-05-10", 1, "day"]}, 1, "day"]}, {}),
    # more
    ({"plusTime": ["2022-02-30", 0, "day"]}, {}),
    ({"plusTime": ["2022-13", 0, "day"]}, {}),
    ({"plusTime": ["2022-00-10", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T25:00:00Z", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T24:00:00Z", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T23:60:00Z", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T23:00:60Z", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T08:30:00+24:00", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T08:30:00+08:60", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T08:30:00+08:", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10t08:30:00Z", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T08:30:00z", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10T08:30:00.Z", 0, "day"]}, {}),
    ({"plusTime": ["20220510T083000Z", 0, "day"]}, {}),
    ({"plusTime": ["2022-5-10", 0, "day"]}, {}),
    ({"plusTime": [" 2022-05-10", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10\n", 0, "day"]}, {}),
    ({"plusTime": ["", 0, "day"]}, {}),
    ({"plusTime": ["٢٠٢٢-05-10", 0, "day"]}, {}),
    ({"plusTime": [20220510, 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10", 0]}, {}),
    ({"plusTime": ["2022-05-10", 0, "day", 1]}, {}),
    ({"plusTime": ["2022-05-10", True, "day"]}, {}),
    ({"plusTime": ["2022-05-10", 0, {"var": "u"}]}, {"u": "day"}),
    ({"plusTime": ["2022-05-10", 0, "Day"]}, {}),
    ({"plusTime": ["9999-12-31", 1, "day"]}, {}),
    ({"plusTime": ["0001-01-01", -1, "hour"]}, {}),
    ({"plusTime": ["0000-01-01", 0, "day"]}, {}),
    ({"plusTime": ["2022-05-10", 10**30, "hour"]}, {}),
    ({"plusTime": ["9999-06-10", 1, "year"]}, {}),
    ({"plusTime": [{"dccDateOfBirth": ["2000"]}, 0, "day"]}, {}),
]


@pytest.mark.parametrize(("expr", "data"), PLUS_TIME_ERRORS)
def test_plus_time_errors(expr, data):
    check(expr, data, ERR)


MINOR = {
    "after": [
        {"dccDateOfBirth": [{"var": "dob"}]},
        {"plusTime": [{"var": "now"}, -18, "year"]},
    ]
}
DOB = [
    ({"dccDateOfBirth": ["1990-07-14"]}, {}, DT("1990-07-14T00:00:00Z")),
    ({"dccDateOfBirth": ["1990-02"]}, {}, DT("1990-02-28T00:00:00Z")),
    ({"dccDateOfBirth": ["1992-02"]}, {}, DT("1992-02-29T00:00:00Z")),
    ({"dccDateOfBirth": ["1990"]}, {}, DT("1990-12-31T00:00:00Z")),
    (MINOR, {"dob": "2004-05", "now": "2022-05-10T08:00:00Z"}, True),
    (MINOR, {"dob": "2004-04-30", "now": "2022-05-10T08:00:00Z"}, False),
    ({"and": [{"var": "dob"}, MINOR]}, {"dob": "", "now": "2022-05-10T08:00:00Z"}, ""),
    ({"dccDateOfBirth": [""]}, {}, ERR),
    ({"dccDateOfBirth": ["1990-07-14T00:00:00Z"]}, {}, ERR),
    ({"dccDateOfBirth": [{"var": "dob"}]}, {}, ERR),
    # more
    ({"dccDateOfBirth": ["1990-02-30"]}, {}, ERR),
    ({"dccDateOfBirth": ["1990-13"]}, {}, ERR),
    ({"dccDateOfBirth": ["90-01-01"]}, {}, ERR),
    ({"dccDateOfBirth": [1990]}, {}, ERR),
    ({"dccDateOfBirth": ["1990", "1991"]}, {}, ERR),
    ({"dccDateOfBirth": ["2004-01"]}, {}, DT("2004-01-31T00:00:00Z")),
    ({"dccDateOfBirth": ["2003-02"]}, {}, DT("2003-02-28T00:00:00Z")),
    ({"dccDateOfBirth": ["2000-02"]}, {}, DT("2000-02-29T00:00:00Z")),
    ({"dccDateOfBirth": ["1900-02"]}, {}, DT("1900-02-28T00:00:00Z")),
    (MINOR, {"dob": "2004-01-01", "now": "2021-12-31T23:59:59.999Z"}, True),
    (MINOR, {"dob": "2004-01-01", "now": "2022-01-01T00:00:00.000Z"}, False),
    (MINOR, {"dob": "2004-01", "now": "2022-01-30T13:37:00.042Z"}, True),
    (MINOR, {"dob": "2004-01", "now": "2022-01-31T00:00:00.000"}, False),
    (MINOR, {"dob": "2004", "now": "2022-12-30T13:37:00.042Z"}, True),
    (MINOR, {"dob": "2004", "now": "2022-12-31T00:00:00.000Z"}, False),
    ({"!": [{"dccDateOfBirth": ["1990"]}]}, {}, ERR),
    # leap days: born in February 2004 (latest: the 29th); 18 years back from 28 Feb 2022 is 28 Feb 2004
    (MINOR, {"dob": "2004-02", "now": "2022-02-28T13:37:00.042Z"}, True),
    (MINOR, {"dob": "2004-02", "now": "2022-03-01T13:37:00.042Z"}, False),
    (MINOR, {"dob": "2004-02-29", "now": "2022-02-28T23:59:59.999Z"}, True),
    (MINOR, {"dob": "2004-02-29", "now": "2022-03-01T00:00:00.000Z"}, False),
]


@pytest.mark.parametrize(("expr", "data", "expected"), DOB)
def test_dcc_date_of_birth(expr, data, expected):
    check(expr, data, expected)


SUM = {"reduce": [{"var": "xs"}, {"+": [{"var": "accumulator"}, {"var": "current"}]}, 0]}
REDUCE = [
    (SUM, {"xs": [1, 2, 3]}, 6),
    (SUM, {"xs": []}, 0),
    ({"reduce": [{"var": "xs"}, {"+": [{"var": "accumulator"}, {"var": "current"}]}, 7]}, {}, 7),
    (
        {"reduce": [{"var": "xs"}, {"+": [{"var": "accumulator"}, {"var": "current.n"}]}, {"var": "start"}]},
        {"xs": [{"n": 2}, {"n": 5}], "start": 10},
        17,
    ),
    (
        {
            "reduce": [
                {"var": "flags"},
                {"if": [{"var": "accumulator"}, True, {"===": [{"var": "current"}, "positive"]}]},
                False,
            ]
        },
        {"flags": ["itinerary_star", "positive"]},
        True,
    ),
    (
        {"reduce": [{"var": "xs"}, {"and": [{"var": "accumulator"}, {"<": [{"var": "current"}, 5]}]}, True]},
        {"xs": [1, 4, 9]},
        False,
    ),
    ({"reduce": [{"var": "xs"}, {"var": "limit"}, 0]}, {"xs": [1], "limit": 3}, None),
    ({"reduce": [{"var": "xs"}, {"+": [{"var": "accumulator"}, 1]}, 0]}, {"xs": "abc"}, ERR),
    # more
    (SUM, None, 0),
    (SUM, {"xs": {"a": 1}}, ERR),
    (SUM, {"xs": [1, "2"]}, ERR),
    ({"reduce": [{"var": "xs"}, {"var": "data"}, 0]}, {"xs": [1]}, None),  # no "data" key in 1.3.3
    ({"reduce": [{"var": "xs"}, {"var": "current"}, 0]}, {"xs": [1, 2, 9]}, 9),
    ({"reduce": [{"var": "xs"}, {"var": "accumulator"}, 0]}, {"xs": [1, 2]}, 0),
    ({"reduce": [{"var": "xs"}, 1, 0]}, {"xs": [5]}, 1),
    ({"reduce": [[1, 2, 3], {"+": [{"var": "accumulator"}, {"var": "current"}]}, 0]}, {}, 6),
    ({"reduce": [{"var": "xs"}, {"+": [{"var": "accumulator"}, 1]}, None]}, {"xs": [1]}, ERR),
    ({"reduce": [{"var": "xs"}, {"var": 1}, 0]}, {"xs": []}, 0),  # lambda never evaluated
    ({"reduce": [{"var": "xs"}, {"var": "accumulator"}]}, {"xs": []}, ERR),
    (
        {"reduce": [{"var": "desserts"}, {"+": [{"var": "accumulator"}, {"var": "current.qty"}]}, 0]},
        {"desserts": [{"name": "apple", "qty": 1}, {"name": "brownie", "qty": 2}, {"name": "cupcake", "qty": 3}]},
        6,
    ),
]


@pytest.mark.parametrize(("expr", "data", "expected"), REDUCE)
def test_reduce(expr, data, expected):
    check(expr, data, expected)


UVCI = "URN:UVCI:01:NL:187/37512422923"
UV = [
    ({"extractFromUVCI": [UVCI, 1]}, {}, "NL"),
    ({"extractFromUVCI": [UVCI, 3]}, {}, "37512422923"),
    ({"extractFromUVCI": [UVCI, 4]}, {}, None),
    ({"extractFromUVCI": ["01:XA:ABC#Z", 3]}, {}, "Z"),
    ({"extractFromUVCI": ["a//b", 1]}, {}, ""),
    ({"extractFromUVCI": ["urn:uvci:01:XA:TEST#X", 0]}, {}, "urn"),
    ({"extractFromUVCI": [{"var": "ci"}, 0]}, {}, None),
    ({"extractFromUVCI": ["01:XA", -1]}, {}, None),
    ({"extractFromUVCI": [42, 0]}, {}, ERR),
    ({"extractFromUVCI": ["01:XA", {"var": "i"}]}, {"i": 0}, ERR),
    # more
    ({"extractFromUVCI": [{"var": ""}, 0]}, "", ""),
    ({"extractFromUVCI": [{"var": ""}, 1]}, "", None),
    ({"extractFromUVCI": [{"var": ""}, -1]}, UVCI, None),
    ({"extractFromUVCI": [{"var": ""}, 0]}, UVCI, "01"),
    ({"extractFromUVCI": [{"var": ""}, 2]}, "URN:UVCI:01:AT:10807843F94AEE0EE5093FBC254BD813#B", "10807843F94AEE0EE5093FBC254BD813"),
    ({"extractFromUVCI": [{"var": ""}, 3]}, "01:AT:10807843F94AEE0EE5093FBC254BD813#B", "B"),
    ({"extractFromUVCI": [{"var": ""}, 2]}, "foo/bar::baz#999lizards", ""),
    ({"extractFromUVCI": [{"var": ""}, 4]}, "foo/bar::baz#999lizards", "999lizards"),
    ({"extractFromUVCI": [{"var": ""}, 5]}, "a::c/#/f", "f"),
    ({"extractFromUVCI": [{"var": ""}, 3]}, "a::c/#/f", ""),
    ({"extractFromUVCI": [UVCI, 1.0]}, {}, "NL"),
    ({"extractFromUVCI": [UVCI, 1.5]}, {}, ERR),
    ({"extractFromUVCI": [UVCI]}, {}, ERR),
    ({"extractFromUVCI": [{"var": "ci"}, -1]}, {"ci": 7}, ERR),
    ({"extractFromUCVI": [UVCI, 1]}, {}, ERR),
]


@pytest.mark.parametrize(("expr", "data", "expected"), UV)
def test_extract_from_uvci(expr, data, expected):
    check(expr, data, expected)


MUST_RAISE = [
    None,
    3.14,
    ["a", None],
    {},
    {"if": [True, 1, 2], "and": [True, True]},
    {"or": [True, False]},
    {"and": True},
    {"if": []},
    {"var": 1},
    {"var": "a", "default": 1},
    {"var": ["a", 1]},
    {"missing": ["a"]},
    {"missing_some": [1, ["a"]]},
    {"cat": ["a", "b"]},
    {"substr": ["abc", 1]},
    {"map": [[1], {"var": ""}]},
    {"filter": [[1], True]},
    {"all": [[1], True]},
    {"some": [[1], True]},
    {"none": [[1], True]},
    {"merge": [[1], [2]]},
    {"log": ["x"]},
    {"min": [1, 2]},
    {"max": [1, 2]},
    {"*": [1, 2]},
    {"/": [1, 2]},
    {"%": [1, 2]},
    {"!!": [1]},
    {"!=": [1, 2]},
    {"!==": [1, 2]},
    {"==": [1, 2]},
    {"-": [1, 2]},
    {"in": ["a", None]},
    ("tuple", "is not JSON"),
    {"===": [1, {"a": 1}]},  # object literal of two keys… here one unknown operator "a"
]


@pytest.mark.parametrize("expr", MUST_RAISE, ids=lambda e: json.dumps(e)[:40] if not isinstance(e, tuple) else "tuple")
def test_section_1_6_errors(expr):
    check(expr, {"a": 1}, ERR)


def test_literals_evaluate_to_themselves():
    for lit in ["", "apple", 0, 17, -3, True, False]:
        check(lit, {}, lit)
    check(["a", "b"], {}, ["a", "b"])
    check([], {}, [])
    check([1, [2, "x"]], {}, [1, [2, "x"]])
    check([{"var": "a"}, 2], {"a": "A"}, ["A", 2])
    assert same(evaluate(2.0, {}), 2)


def test_array_literal_is_a_new_list_each_time():
    program = compile(["a", "b"])
    first = program.evaluate({})
    first.append("x")
    assert program.evaluate({}) == ["a", "b"]


def test_truthiness_helpers():
    for v in [True, "x", "0", "false", 1, -1, [False], {"k": 0}, 2.0]:
        assert is_truthy(v) and not is_falsy(v), v
    for v in [False, None, "", 0, [], {}, 0.0]:
        assert is_falsy(v) and not is_truthy(v), v
    for v in [1.5, math.nan, math.inf, DT("2022-05-10T00:00:00Z"), object()]:
        assert not is_truthy(v) and not is_falsy(v), v


def test_strict_equal_python_pitfalls():
    assert not strict_equal(True, 1)
    assert not strict_equal(0, False)
    assert not strict_equal(None, "")
    assert strict_equal(2, 2.0)
    assert not strict_equal(math.nan, math.nan)
    assert not strict_equal([1, 2], [1])
    assert not strict_equal({"a": 1}, {"b": 1})
    assert not strict_equal(object(), object())
    deep_a: list = []
    deep_b: list = []
    ca, cb = deep_a, deep_b
    for _ in range(100_000):  # far deeper than any stack
        ca.append([])
        cb.append([])
        ca, cb = ca[0], cb[0]
    assert strict_equal(deep_a, deep_b)
    assert evaluate({"===": [{"var": "a"}, {"var": "b"}]}, {"a": deep_a, "b": deep_b}) is True


def test_datetime_value_type():
    a = DT("2022-05-10T08:00:00+08:00")
    b = DT("2022-05-10T00:00:00Z")
    assert a == b and hash(a) == hash(b)
    assert a != "2022-05-10T00:00:00.000Z"
    assert DT("2022-05-11") > a
    assert a.isoformat() == "2022-05-10T00:00:00.000Z"
    assert a.ms == 1652140800000
    assert sorted([DT("2022-05-12"), DT("2022-05-11")])[0] == DT("2022-05-11")
    assert DateTime(-1).isoformat() == "1969-12-31T23:59:59.999Z"


def test_depth_limit_raises_only_certlogic_error():
    ok: object = True
    for _ in range(64):  # 64 × (object + array) = 128 JSON levels: still allowed
        ok = {"!": [ok]}
    assert evaluate(ok, {}) is True
    assert validate(ok) == []
    too_deep = {"!": [ok]}
    with pytest.raises(CertLogicError, match="deeper than 128"):
        evaluate(too_deep, {})
    assert any("deeper" in i.message for i in validate(too_deep))
    very_deep: object = True
    for _ in range(50_000):
        very_deep = {"!": [very_deep]}
    with pytest.raises(CertLogicError):
        evaluate(very_deep, {})
    assert validate(very_deep)
    # a bad deep node in a branch that is not taken does not raise
    assert evaluate({"if": [False, too_deep, "fine"]}, {}) == "fine"
    assert MAX_DEPTH == 128


def test_lazy_errors_only_when_reached():
    bad = {"nope": [1]}
    assert evaluate({"if": [True, 1, bad]}, {}) == 1
    assert evaluate({"and": [False, bad]}, {}) is False
    assert evaluate({"reduce": [[], bad, 0]}, {}) == 0
    program = compile({"if": [{"var": "x"}, bad, 2]})  # compiling never raises
    assert program.evaluate({"x": 0}) == 2
    with pytest.raises(CertLogicError, match="unrecognised operator"):
        program.evaluate({"x": 1})


def test_nothing_but_certlogic_error_escapes_for_garbage():
    """Hostile or odd expressions and data: either a value or CertLogicError, never anything else."""
    weird_data = [None, 1, "s", [], {}, {"a": object()}, {"a": {1: 2}}, {"a": [1, 2, 3] * 1000}, {"a": math.inf}]
    exprs = [
        {"var": "a.b.c"},
        {"<": [{"var": "a"}, 1]},
        {"+": [{"var": "a"}, 10**400]},
        {"+": [1e308, 1e308]},
        {"===": [{"var": "a"}, {"var": "a"}]},
        {"in": [{"var": "a"}, {"var": "a"}]},
        {"!": [{"var": "a"}]},
        {"plusTime": [{"var": "a"}, 1, "day"]},
        {"dccDateOfBirth": [{"var": "a"}]},
        {"reduce": [{"var": "a"}, {"var": "current"}, 0]},
        {"extractFromUVCI": [{"var": "a"}, 2]},
        {"if": [{"var": "a"}, 1, 2]},
        {"and": [{"var": "a"}, {"var": "a"}]},
        {"after": [{"var": "a"}, {"var": "a"}]},
        {1: [2]},
        {"var": "a.\ud800"},
        [{"var": "a"}] * 3,
        {"plusTime": ["2022-05-10", 10**400, "day"]},
        {"extractFromUVCI": ["a:b", 10**30]},
    ]
    for e in exprs:
        for d in weird_data:
            try:
                evaluate(e, d)
            except CertLogicError:
                pass


def test_strict_paths():
    program = compile({"var": "a.b"})
    assert program.evaluate({"a": {}}) is None
    with pytest.raises(MissingDataError) as info:
        program.evaluate({"a": {}}, strict_paths=True)
    assert info.value.path == "a.b"
    assert program.evaluate({"a": None}, strict_paths=True) is None  # through a present null
    assert program.evaluate({"a": {"b": None}}, strict_paths=True) is None
    with pytest.raises(MissingDataError):
        program.evaluate({}, strict_paths=True)
    with pytest.raises(MissingDataError):
        program.evaluate({"a": "str"}, strict_paths=True)
    with pytest.raises(MissingDataError):
        program.evaluate({"a": 5}, strict_paths=True)
    idx = compile({"var": "xs.2"})
    assert idx.evaluate({"xs": [1]}) is None
    with pytest.raises(MissingDataError, match="xs.2"):
        idx.evaluate({"xs": [1]}, strict_paths=True)
    with pytest.raises(MissingDataError):
        compile({"var": "xs.k"}).evaluate({"xs": [1]}, strict_paths=True)
    assert compile({"var": ""}).evaluate(None, strict_paths=True) is None
    # not taken: never read
    assert compile({"if": [True, 1, {"var": "nope"}]}).evaluate({}, strict_paths=True) == 1
    # a lambda's reads are strict too
    lam = compile({"reduce": [{"var": "xs"}, {"var": "current.n"}, 0]})
    assert lam.evaluate({"xs": [{}]}) is None
    with pytest.raises(MissingDataError):
        lam.evaluate({"xs": [{}]}, strict_paths=True)
    assert isinstance(MissingDataError("p"), CertLogicError)


def test_program_reuse_gives_same_results():
    program = compile({"if": [{"var": "a"}, {"+": [{"var": "a"}, 1]}, 0]})
    assert [program.evaluate({"a": i}) for i in range(4)] == [0, 2, 3, 4]


def test_trace_records_each_node():
    tr, value, err = trace({"if": [{"var": "a"}, {"var": "b"}, {"var": "c"}]}, {"a": 1, "b": "B"})
    assert value == "B" and err is None
    by_pos = tr.by_pos()
    assert by_pos[(0,)][0].value == 1
    assert by_pos[(1,)][0].value == "B"
    assert (2,) not in by_pos  # branch not taken
    tr, value, err = trace({"+": [{"var": "a"}, 1]}, {}, strict_paths=True)
    assert isinstance(err, MissingDataError) and value is None


# ---------------------------------------------------------------------------- validate

VALIDATE = [
    (None, [(None, "invalid CertLogic expression")]),
    (3.14, [(3.14, "3.14 is a non-integer number")]),
    ("", []),
    ("foo", []),
    (0, []),
    (42, []),
    (False, []),
    (True, []),
    (2.0, []),
    ({}, [({}, "expression object must have exactly one key, but it has 0")]),
    (
        {"foo": "bar", "alice": "bob"},
        [({"foo": "bar", "alice": "bob"}, "expression object must have exactly one key, but it has 2")],
    ),
    ({"all": "foo"}, [({"all": "foo"}, 'operation not of the form { "<operator>": [ <values...> ] }')]),
    ({"all": 42.0}, [({"all": 42.0}, 'operation not of the form { "<operator>": [ <values...> ] }')]),
    ({"all": True}, [({"all": True}, 'operation not of the form { "<operator>": [ <values...> ] }')]),
    ({"all": None}, [({"all": None}, 'operation not of the form { "<operator>": [ <values...> ] }')]),
    ({"all": []}, [({"all": []}, 'unrecognised operator: "all"')]),
    ({"all": [None]}, [({"all": [None]}, 'unrecognised operator: "all"')]),
    ({"var": 0}, [({"var": 0}, 'not of the form { "var": "<path>" }')]),
    ({"var": None}, [({"var": None}, 'not of the form { "var": "<path>" }')]),
    ({"var": "x"}, []),
    ({"var": "x.0.y"}, []),
    ({"var": "1"}, []),
    ({"var": ""}, []),
    ({"var": "x."}, [({"var": "x."}, "data access path doesn't have a valid format: x.")]),
    ({"var": "a..b"}, [({"var": "a..b"}, "data access path doesn't have a valid format: a..b")]),
    ({"var": ".x"}, [({"var": ".x"}, "data access path doesn't have a valid format: .x")]),
    ({"and": []}, [({"and": []}, 'operator "and" takes at least 2 operands, got 0')]),
    ({"if": [True, 1]}, [({"if": [True, 1]}, 'operator "if" takes 3 operands, got 2')]),
    ({"<": [1]}, [({"<": [1]}, 'operator "<" takes 2 or 3 operands, got 1')]),
    (
        {"plusTime": [{"var": "n"}, {"var": "a"}, "week"]},
        [
            ({"plusTime": [{"var": "n"}, {"var": "a"}, "week"]}, 'invalid "amount" operand of "plusTime"'),
            ({"plusTime": [{"var": "n"}, {"var": "a"}, "week"]}, 'invalid "unit" operand of "plusTime"'),
        ],
    ),
    ({"extractFromUVCI": ["x", "1"]}, [({"extractFromUVCI": ["x", "1"]}, 'invalid "index" operand of "extractFromUVCI"')]),
    ({"<": ["a", 1]}, []),  # type checks need data
    ({"!": [None]}, [(None, "invalid CertLogic expression")]),
    (
        {"and": [None, {"var": "x."}, 1.5]},
        [
            (None, "invalid CertLogic expression"),
            ({"var": "x."}, "data access path doesn't have a valid format: x."),
            (1.5, "1.5 is a non-integer number"),
        ],
    ),
    (
        {"reduce": [{"var": "xs"}, {"nope": []}, 0]},
        [({"nope": []}, 'unrecognised operator: "nope"')],
    ),
    ([None, {"var": 1}], [(None, "invalid CertLogic expression"), ({"var": 1}, 'not of the form { "var": "<path>" }')]),
]


@pytest.mark.parametrize(("expr", "issues"), VALIDATE, ids=lambda x: json.dumps(x)[:50])
def test_validate(expr, issues):
    got = validate(expr)
    assert all(isinstance(i, Issue) for i in got)
    assert [(i.expr, i.message) for i in got] == issues


def test_validate_returns_the_offending_object_itself():
    inner = {"var": "x."}
    expr = {"!": [inner]}
    (issue,) = validate(expr)
    assert issue.expr is inner


def test_validate_accepts_every_default_rule(repo):
    rules = json.loads((repo / "config" / "rules" / "rules.json").read_text(encoding="utf-8"))
    for rule in rules:
        assert validate(rule["logic"]) == [], rule["id"]
