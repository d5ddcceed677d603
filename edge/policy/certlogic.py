"""CertLogic 1.3.3, the rule language of the EU DCC (rules.md §1).

Stdlib only, no I/O. The rules this module enforces, in the order a node meets them:

1. Literals: strings, booleans and integers (an integral float counts as an
   integer) evaluate to themselves; ``null`` and non-integer numbers are errors;
   an array evaluates element by element. There are no object literals.
2. An object with exactly one key is an operation; ``var`` takes a string, every
   other operator a non-empty array of operands. Anything else is an error.
3. Errors surface only when the offending node is *evaluated*: ``if`` and ``and``
   are lazy, so a bad branch that is not taken never raises (§1.2, §1.6).
4. Truthiness is three-valued (§1.3): date-times and non-integer numbers are
   neither truthy nor falsy, and using them as a condition is an error.
5. Equality is strict (``1`` is not ``"1"``, ``0`` is not ``false``); integer
   operations reject booleans, ``null`` and non-integer numbers.
6. Date-times exist only as results of ``plusTime`` and ``dccDateOfBirth``;
   month and year shifts roll forward like JavaScript's ``Date.setUTCMonth``.
7. Nesting deeper than 128 JSON levels is an error; nothing but
   ``CertLogicError`` (and its ``MissingDataError``) ever leaves ``evaluate``.

``compile`` turns an expression into a tree of closures once (rules are compiled
at bundle load); ``evaluate`` compiles and runs in one go for one-off use. With
``strict_paths=True`` (the rule engine, rules.md §3.2) reading an absent key or
index raises ``MissingDataError`` instead of yielding ``null``.

Error messages never quote data values (they may reach a debug log, and data
holds personal fields such as a DCC date of birth); they name types and paths.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "OPERATORS",
    "CertLogicError",
    "DateTime",
    "Issue",
    "MissingDataError",
    "Program",
    "Trace",
    "TraceRecord",
    "compile",
    "date_time_ms",
    "evaluate",
    "is_falsy",
    "is_truthy",
    "parse_date_time",
    "strict_equal",
    "trace",
    "validate",
]

MAX_DEPTH = 128
TIME_UNITS = ("year", "month", "day", "hour")
_COMPARISONS = ("<", ">", "<=", ">=")
_DATE_COMPARISONS = ("after", "before", "not-after", "not-before")
OPERATORS = frozenset(
    {"var", "if", "and", "!", "===", "in", "+", "plusTime", "dccDateOfBirth", "reduce", "extractFromUVCI"}
    | set(_COMPARISONS)
    | set(_DATE_COMPARISONS)
)
# Allowed operand counts (§1.6); "and" is n >= 2, handled apart.
_ARITY: dict[str, tuple[int, ...]] = {
    "if": (3,),
    "!": (1,),
    "===": (2,),
    "in": (2,),
    "+": (2,),
    "extractFromUVCI": (2,),
    "plusTime": (3,),
    "reduce": (3,),
    "dccDateOfBirth": (1,),
    **{op: (2, 3) for op in _COMPARISONS + _DATE_COMPARISONS},
}

DataFn = Callable[[Any], Any]


class CertLogicError(Exception):
    """An invalid expression, or a valid one applied to values it rejects (rules.md §1.6)."""


class MissingDataError(CertLogicError):
    """Strict mode only: a ``var`` path names an absent key or index (rules.md §1.2).

    ``path`` is the full path of the ``var`` that could not be followed.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"missing data: {path}")
        self.path = path


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, order=True, slots=True)
class DateTime:
    """An instant in UTC with millisecond precision (integer milliseconds since the epoch).

    Equal by instant, ordered, hashable; never equal to a string; neither truthy nor falsy.
    """

    ms: int

    def isoformat(self) -> str:
        """The project's JSON time format, ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
        secs, ms = divmod(self.ms, 1000)
        if 0 <= secs < 253_402_300_800:  # the C library, for the common case (a year 1970-9999)
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"
        days, rem = divmod(self.ms, 86_400_000)
        y, m, d = _civil_from_days(days)
        hh, rem = divmod(rem, 3_600_000)
        mm, rem = divmod(rem, 60_000)
        ss, ms = divmod(rem, 1000)
        return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}Z"

    def __repr__(self) -> str:
        return f"DateTime({self.isoformat()})"


def _is_int(v: Any) -> bool:
    t = type(v)
    return t is int or (t is float and v.is_integer())


def _truth(v: Any) -> bool:
    """Three-valued truthiness: True (truthy), False (falsy), or raise (neither)."""
    t = type(v)
    if t is bool:
        return v  # type: ignore[no-any-return]
    if v is None:
        return False
    if t is str or t is list or t is dict:
        return len(v) != 0
    if t is int:
        return v != 0  # type: ignore[no-any-return]
    if t is float and v.is_integer():
        return v != 0  # type: ignore[no-any-return]
    raise CertLogicError(f"a {_type_name(v)} is neither truthy nor falsy")


def is_truthy(value: Any) -> bool:
    """True for CertLogic-truthy values (rules.md §1.3)."""
    try:
        return _truth(value)
    except CertLogicError:
        return False


def is_falsy(value: Any) -> bool:
    """True for CertLogic-falsy values (rules.md §1.3)."""
    try:
        return not _truth(value)
    except CertLogicError:
        return False


def _type_name(v: Any) -> str:
    t = type(v)
    if v is None:
        return "null"
    if t is bool:
        return "boolean"
    if t is str:
        return "string"
    if t is int or (t is float and v.is_integer()):
        return "integer"
    if t is float:
        return "non-integer number"
    if t is list:
        return "array"
    if t is dict:
        return "object"
    if t is DateTime:
        return "date-time"
    return t.__name__


def strict_equal(a: Any, b: Any) -> bool:
    """``===`` and ``in``: same type and same value (rules.md §1.3).

    Integers compare by value (``2`` equals ``2.0``); arrays and objects
    structurally with the same rule; date-times by instant. Iterative, so deep
    data cannot exhaust the stack.
    """
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        tx, ty = type(x), type(y)
        if tx is bool or ty is bool:
            if not (tx is ty and x is y):
                return False
        elif x is None or y is None:
            if x is not y:
                return False
        elif tx is str or ty is str:
            if not (tx is ty and x == y):
                return False
        elif (tx is int or tx is float) and (ty is int or ty is float):
            if x != y:
                return False
        elif tx is list and ty is list:
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif tx is dict and ty is dict:
            if len(x) != len(y):
                return False
            for k, v in x.items():
                if k not in y:
                    return False
                stack.append((v, y[k]))
        elif tx is DateTime and ty is DateTime:
            if x.ms != y.ms:
                return False
        else:
            return False
    return True


# --------------------------------------------------------------------------- dates

_MS_DAY = 86_400_000
_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_DT_RE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{1,2}(?::?[0-9]{2})?)?)?)?)?",
    re.ASCII,
)
_DOB_RE = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?", re.ASCII)
_OFFSET_RE = re.compile(r"([+-])([0-9]{1,2}):?([0-9]{2})?", re.ASCII)
_UVCI_SPLIT = re.compile(r"[/#:]")


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _partial_date_days(y: int, mo: str | None, d: str | None) -> int:
    """YYYY → 31 Dec; YYYY-MM → last day of the month; YYYY-MM-DD → that day (§1.5)."""
    if mo is None:
        return _days_from_civil(y, 12, 31)
    month = int(mo)
    if not 1 <= month <= 12:
        raise CertLogicError("impossible month in a date")
    if d is None:
        return _days_from_civil(y, month, _days_in_month(y, month))
    day = int(d)
    if not 1 <= day <= _days_in_month(y, month):
        raise CertLogicError("impossible day in a date")
    return _days_from_civil(y, month, day)


def _in_range(ms: int) -> int:
    if not _MIN_MS <= ms <= _MAX_MS:
        raise CertLogicError("date-time outside the years 1-9999")
    return ms


@functools.lru_cache(maxsize=4096)
def _parse_date_time(s: str) -> int:
    """Milliseconds of a date(-time) string in one of the shapes of rules.md §1.5 ``plusTime``.

    Pure, so memoised: most rules convert ``external.now`` and the same few instants.
    """
    m = _DT_RE.fullmatch(s)
    if m is None:
        raise CertLogicError("not an allowed date or date-time format")
    y_s, mo, d, hh, mi, ss, frac, off = m.groups()
    days = _partial_date_days(int(y_s), mo, d)
    if hh is None:
        return _in_range(days * _MS_DAY)
    h, mnt, sec = int(hh), int(mi), int(ss)
    if h > 23 or mnt > 59 or sec > 59:
        raise CertLogicError("impossible time of day")
    ms = days * _MS_DAY + h * 3_600_000 + mnt * 60_000 + sec * 1000
    if frac:
        ms += int(frac[:3].ljust(3, "0"))  # truncated, never rounded
    if off and off != "Z":
        om = _OFFSET_RE.fullmatch(off)
        assert om is not None  # the outer pattern allows only this shape
        sign, oh, ominute = om.groups()
        oh_i, om_i = int(oh), int(ominute or 0)
        if oh_i > 23 or om_i > 59:
            raise CertLogicError("impossible time zone offset")
        delta = (oh_i * 60 + om_i) * 60_000
        ms = ms - delta if sign == "+" else ms + delta
    return _in_range(ms)


@functools.lru_cache(maxsize=4096)
def _plus_time(s: str, amount: int, unit: str) -> DateTime:
    base = _parse_date_time(s)
    if amount == 0:
        return DateTime(base)
    if unit == "hour":
        return DateTime(_in_range(base + amount * 3_600_000))
    if unit == "day":
        return DateTime(_in_range(base + amount * _MS_DAY))
    # month/year: shift the UTC calendar month, keep day-of-month and time, and
    # let a missing day roll forward (31 Jan + 1 month = 3 Mar), like JS Date.
    days, rem = divmod(base, _MS_DAY)
    y, m, d = _civil_from_days(days)
    total = y * 12 + (m - 1) + amount * (12 if unit == "year" else 1)
    ny, nm0 = divmod(total, 12)
    if not 1 <= ny <= 9999:
        raise CertLogicError("date-time outside the years 1-9999")
    return DateTime(_in_range((_days_from_civil(ny, nm0 + 1, 1) + d - 1) * _MS_DAY + rem))


@functools.lru_cache(maxsize=1024)
def _dcc_date_of_birth(s: str) -> DateTime:
    m = _DOB_RE.fullmatch(s)
    if m is None:
        raise CertLogicError("not a date of birth of the form YYYY[-MM[-DD]]")
    y, mo, d = m.groups()
    return DateTime(_in_range(_partial_date_days(int(y), mo, d) * _MS_DAY))


def parse_date_time(s: str) -> DateTime:
    """``plusTime(s, 0, …)``: a date(-time) string as a ``DateTime`` (raises ``CertLogicError``)."""
    return DateTime(_parse_date_time(s))


def date_time_ms(s: str) -> int:
    """Like ``parse_date_time(s).ms`` without building the ``DateTime`` (raises ``CertLogicError``)."""
    return _parse_date_time(s)


# --------------------------------------------------------------------------- compiler


class TraceRecord:
    """One evaluation of one node: its position, and its value or error."""

    __slots__ = ("depth", "error", "pos", "value")

    def __init__(self, pos: tuple[int, ...], depth: int) -> None:
        self.pos = pos
        self.depth = depth
        self.value: Any = None
        self.error: CertLogicError | None = None


class Trace:
    """Collects every node evaluation of a traced run (``rules explain``)."""

    def __init__(self) -> None:
        self.records: list[TraceRecord] = []
        self._depth = 0

    def by_pos(self) -> dict[tuple[int, ...], list[TraceRecord]]:
        out: dict[tuple[int, ...], list[TraceRecord]] = {}
        for r in self.records:
            out.setdefault(r.pos, []).append(r)
        return out


def _raiser(message: str) -> DataFn:
    def fn(data: Any) -> Any:
        raise CertLogicError(message)

    return fn


def _const(v: Any) -> DataFn:
    return lambda data: v


class _Compiler:
    def __init__(self, *, strict: bool, tracer: Trace | None = None) -> None:
        self.strict = strict
        self.tracer = tracer
        self.fast = tracer is None  # fast paths skip child nodes, which a trace must see

    def node(self, expr: Any, depth: int, pos: tuple[int, ...]) -> DataFn:
        fn = self._node(expr, depth, pos)
        if self.tracer is None:
            return fn
        return self._traced(fn, pos)

    def _traced(self, fn: DataFn, pos: tuple[int, ...]) -> DataFn:
        tracer = self.tracer
        assert tracer is not None

        def traced(data: Any) -> Any:
            rec = TraceRecord(pos, tracer._depth)
            tracer.records.append(rec)
            tracer._depth += 1
            try:
                rec.value = fn(data)
            except CertLogicError as exc:
                rec.error = exc
                raise
            finally:
                tracer._depth -= 1
            return rec.value

        return traced

    def _node(self, expr: Any, depth: int, pos: tuple[int, ...]) -> DataFn:
        t = type(expr)
        if t is str or t is bool or t is int:
            return _const(expr)
        if t is float:
            if expr.is_integer():
                return _const(expr)
            return _raiser("a non-integer number is not a valid literal")
        if expr is None:
            return _raiser("invalid CertLogic expression: null literal")
        if t is list:
            if depth > MAX_DEPTH:
                return _raiser(f"expression nested deeper than {MAX_DEPTH} levels")
            fns = [self.node(e, depth + 1, (*pos, i)) for i, e in enumerate(expr)]
            if len(fns) == 0:
                return lambda data: []
            return lambda data: [f(data) for f in fns]
        if t is dict:
            if depth > MAX_DEPTH:
                return _raiser(f"expression nested deeper than {MAX_DEPTH} levels")
            if len(expr) != 1:
                return _raiser(f"expression object must have exactly one key, but it has {len(expr)}")
            ((op, operands),) = expr.items()
            if op == "var":
                return self._var(operands)
            if type(operands) is not list or len(operands) == 0:
                return _raiser(f'operation not of the form {{ "{_short(op)}": [ <values...> ] }}')
            if op not in OPERATORS:
                return _raiser(f'unrecognised operator: "{_short(op)}"')
            n = len(operands)
            if op == "and":
                if n < 2:
                    return _raiser(f'operator "and" takes at least 2 operands, got {n}')
            elif n not in _ARITY[op]:
                return _raiser(f'operator "{op}" takes {_arity_text(op)} operands, got {n}')
            builder: Callable[[str, list[Any], int, tuple[int, ...]], DataFn] = getattr(self, _BUILDERS[op])
            return builder(op, operands, depth + 2, pos)
        return _raiser(f"invalid CertLogic expression: {t.__name__}")

    def sub(self, operands: list[Any], i: int, depth: int, pos: tuple[int, ...]) -> DataFn:
        return self.node(operands[i], depth, (*pos, i))

    # -- var ---------------------------------------------------------------

    def _var(self, path: Any) -> DataFn:
        if type(path) is not str:
            return _raiser('not of the form { "var": "<path>" }')
        if path == "":
            return lambda data: data
        keys = tuple((f, int(f) if f.isascii() and f.isdigit() else None) for f in path.split("."))
        slow = _strict_var(path, keys) if self.strict else (lambda data: _walk_lax(data, keys))
        if not self.fast:
            return slow
        return _fast_var(tuple(k for k, _ in keys), slow)

    # -- control -------------------------------------------------------------

    def b_if(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        guard, then, els = (self.sub(ops, i, depth, pos) for i in range(3))

        def fn(data: Any) -> Any:
            g = guard(data)
            if g is True:
                return then(data)
            if g is False or g is None:
                return els(data)
            return then(data) if _truth(g) else els(data)

        return fn

    def b_and(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        fns = tuple(self.sub(ops, i, depth, pos) for i in range(len(ops)))

        def fn(data: Any) -> Any:
            v = None
            for f in fns:
                v = f(data)
                if v is True:
                    continue
                if v is False or v is None or not _truth(v):
                    return v
            return v

        return fn

    def b_not(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        f = self.sub(ops, 0, depth, pos)

        def fn(data: Any) -> bool:
            v = f(data)
            if v is True:
                return False
            if v is False or v is None:
                return True
            return not _truth(v)

        return fn

    # -- equality and membership --------------------------------------------

    def b_eq(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        if self.fast:
            for lit_i, other_i in ((1, 0), (0, 1)):
                lit = ops[lit_i]
                tl = type(lit)
                if tl is str or tl is bool or tl is int:
                    return _eq_literal(lit, self.sub(ops, other_i, depth, pos))
        a, b = self.sub(ops, 0, depth, pos), self.sub(ops, 1, depth, pos)
        return lambda data: strict_equal(a(data), b(data))

    def b_in(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        needle_expr, hay_expr = ops
        if self.fast and type(hay_expr) is list and all(type(e) is str for e in hay_expr):
            members = frozenset(hay_expr)
            needle_fn = self.sub(ops, 0, depth, pos)

            def fn_set(data: Any) -> bool:
                v = needle_fn(data)
                return type(v) is str and v in members

            return fn_set
        needle = self.sub(ops, 0, depth, pos)
        hay = self.sub(ops, 1, depth, pos)
        if self.fast and type(needle_expr) is str:
            # Only a str equals a str among JSON values, so plain `in` is strict here.
            lit = needle_expr

            def fn_lit(data: Any) -> bool:
                h = hay(data)
                if type(h) is not list:
                    raise CertLogicError(f'the haystack of "in" must be an array, not a {_type_name(h)}')
                return lit in h

            return fn_lit

        def fn(data: Any) -> bool:
            n = needle(data)
            h = hay(data)
            if type(h) is not list:
                raise CertLogicError(f'the haystack of "in" must be an array, not a {_type_name(h)}')
            t = type(n)
            if t is str:
                return n in h
            return any(strict_equal(n, x) for x in h)

        return fn

    # -- integers ---------------------------------------------------------------

    def b_plus(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        a, b = self.sub(ops, 0, depth, pos), self.sub(ops, 1, depth, pos)

        def fn(data: Any) -> int:
            x, y = a(data), b(data)
            if type(x) is int and type(y) is int:
                return int(x + y)
            if _is_int(x) and _is_int(y):
                return int(x) + int(y)
            raise CertLogicError(f'operands of "+" must be integers, not {_type_name(x)} and {_type_name(y)}')

        return fn

    def b_compare(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        fns = tuple(self.sub(ops, i, depth, pos) for i in range(len(ops)))
        cmp = _CMP[op]

        def check(v: Any) -> Any:
            if type(v) is int or _is_int(v):
                return v
            raise CertLogicError(f'operands of "{op}" must be integers, not a {_type_name(v)}')

        if len(fns) == 2:
            fa, fb = fns

            def fn2(data: Any) -> bool:
                a, b = fa(data), fb(data)
                if type(a) is not int or type(b) is not int:
                    check(a)
                    check(b)
                return cmp(a, b)

            return fn2
        fa, fb, fc = fns

        def fn3(data: Any) -> bool:
            a, b, c = fa(data), fb(data), fc(data)
            check(a)
            check(b)
            check(c)
            return cmp(a, b) and cmp(b, c)

        return fn3

    # -- date-times -----------------------------------------------------------

    def b_date_compare(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        fns = tuple(self.sub(ops, i, depth, pos) for i in range(len(ops)))
        cmp = _CMP[_DATE_CMP[op]]

        def fn(data: Any) -> bool:
            vals = [f(data) for f in fns]
            for v in vals:
                if type(v) is not DateTime:
                    raise CertLogicError(f'operands of "{op}" must be date-times, not a {_type_name(v)}')
            if len(vals) == 2:
                return cmp(vals[0].ms, vals[1].ms)
            return cmp(vals[0].ms, vals[1].ms) and cmp(vals[1].ms, vals[2].ms)

        return fn

    def b_plus_time(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        amount, unit = ops[1], ops[2]
        if not _is_int(amount):
            return _raiser('invalid "amount" operand of "plusTime": must be an integer literal')
        if type(unit) is not str or unit not in TIME_UNITS:
            return _raiser('invalid "unit" operand of "plusTime": must be "year", "month", "day" or "hour"')
        amount_i = int(amount)
        f = self.sub(ops, 0, depth, pos)

        def fn(data: Any) -> DateTime:
            s = f(data)
            if type(s) is not str:
                raise CertLogicError(f'the date operand of "plusTime" must be a string, not a {_type_name(s)}')
            return _plus_time(s, amount_i, unit)

        return fn

    def b_dob(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        f = self.sub(ops, 0, depth, pos)

        def fn(data: Any) -> DateTime:
            s = f(data)
            if type(s) is not str:
                raise CertLogicError(f'the operand of "dccDateOfBirth" must be a string, not a {_type_name(s)}')
            return _dcc_date_of_birth(s)

        return fn

    # -- arrays and UVCIs -------------------------------------------------------

    def b_reduce(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        lst, lam, init = (self.sub(ops, i, depth, pos) for i in range(3))

        def fn(data: Any) -> Any:
            items = lst(data)
            acc = init(data)  # against the original data (§1.5)
            if items is None:
                return acc
            if type(items) is not list:
                raise CertLogicError(f'the operand of "reduce" must be an array or null, not a {_type_name(items)}')
            for cur in items:
                # The lambda sees only these two keys: no access to the original data.
                acc = lam({"accumulator": acc, "current": cur})
            return acc

        return fn

    def b_uvci(self, op: str, ops: list[Any], depth: int, pos: tuple[int, ...]) -> DataFn:
        index = ops[1]
        if not _is_int(index):
            return _raiser('invalid "index" operand of "extractFromUVCI": must be an integer literal')
        idx = int(index)
        f = self.sub(ops, 0, depth, pos)

        def fn(data: Any) -> str | None:
            v = f(data)
            if v is None:
                return None
            if type(v) is not str:
                raise CertLogicError(f'the operand of "extractFromUVCI" must be a string or null, not a {_type_name(v)}')
            if idx < 0:
                return None
            if v.startswith("URN:UVCI:"):  # upper case only, as the reference implementation
                v = v[9:]
            fragments = _UVCI_SPLIT.split(v)
            return fragments[idx] if idx < len(fragments) else None

        return fn


def _eq_literal(lit: Any, other: DataFn) -> DataFn:
    """``===`` against a literal: one type test instead of the general walk."""
    tl = type(lit)
    if tl is str:

        def eq_str(data: Any) -> bool:
            v = other(data)
            return type(v) is str and v == lit

        return eq_str
    if tl is bool:
        return lambda data: other(data) is lit

    def eq_int(data: Any) -> bool:
        v = other(data)
        return _is_int(v) and v == lit

    return eq_int


_BUILDERS = {
    "if": "b_if",
    "and": "b_and",
    "!": "b_not",
    "===": "b_eq",
    "in": "b_in",
    "+": "b_plus",
    "plusTime": "b_plus_time",
    "dccDateOfBirth": "b_dob",
    "reduce": "b_reduce",
    "extractFromUVCI": "b_uvci",
    **{op: "b_compare" for op in _COMPARISONS},
    **{op: "b_date_compare" for op in _DATE_COMPARISONS},
}
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
_DATE_CMP = {"after": ">", "before": "<", "not-after": "<=", "not-before": ">="}


def _arity_text(op: str) -> str:
    if op == "and":
        return "at least 2"
    return " or ".join(str(n) for n in _ARITY[op])


def _short(op: Any) -> str:
    s = str(op)
    return s if len(s) <= 40 else s[:37] + "..."


_MISSING = object()


def _fast_var(keys: tuple[str, ...], slow: DataFn) -> DataFn:
    """A ``var`` read by plain indexing with the path's text fragments; on failure, ``slow``.

    Indexing with text keys succeeds only through objects, where it gives exactly what
    the walk gives in both modes; a list (indexed by text), a null, a scalar or an
    absent key raises, and the full walk (``slow``) decides what the path means.
    """
    miss = (KeyError, TypeError, IndexError)
    if len(keys) == 1:
        (a,) = keys

        def v1(data: Any) -> Any:
            try:
                return data[a] if type(data) is dict else slow(data)
            except miss:
                return slow(data)

        return v1
    if len(keys) == 2:
        a, b = keys

        def v2(data: Any) -> Any:
            try:
                return data[a][b]
            except miss:
                return slow(data)

        return v2
    if len(keys) == 3:
        a, b, c = keys

        def v3(data: Any) -> Any:
            try:
                return data[a][b][c]
            except miss:
                return slow(data)

        return v3
    if len(keys) == 4:
        a, b, c, d = keys

        def v4(data: Any) -> Any:
            try:
                return data[a][b][c][d]
            except miss:
                return slow(data)

        return v4
    return slow


def _walk_lax(data: Any, keys: tuple[tuple[str, int | None], ...]) -> Any:
    cur = data
    for key, idx in keys:
        if cur is None:
            return None
        t = type(cur)
        if t is dict:
            cur = cur.get(key)
        elif t is list:
            if idx is None or idx >= len(cur):
                return None
            cur = cur[idx]
        elif isinstance(cur, Mapping):
            cur = cur.get(key)
        else:
            return None  # string, number, boolean in the way [ours]
    return cur


def _strict_var(path: str, keys: tuple[tuple[str, int | None], ...]) -> DataFn:
    def fn(data: Any) -> Any:
        cur = data
        for key, idx in keys:
            if cur is None:
                return None  # reading through a present null is not missing
            t = type(cur)
            if t is dict:
                cur = cur.get(key, _MISSING)
                if cur is _MISSING:
                    raise MissingDataError(path)
            elif t is list:
                if idx is None or idx >= len(cur):
                    raise MissingDataError(path)
                cur = cur[idx]
            elif isinstance(cur, Mapping):
                cur = cur.get(key, _MISSING)
                if cur is _MISSING:
                    raise MissingDataError(path)
            else:
                raise MissingDataError(path)
        return cur

    return fn


# --------------------------------------------------------------------------- API


class Program:
    """A compiled expression: ``evaluate`` has exactly the semantics of the module's ``evaluate``."""

    __slots__ = ("_lax", "_strict", "expression")

    def __init__(self, expression: Any) -> None:
        self.expression = expression
        self._lax: DataFn = _Compiler(strict=False).node(expression, 1, ())
        self._strict: DataFn | None = None

    def prepare_strict(self) -> DataFn:
        """Compile the strict-paths variant now rather than at its first use, and return it.

        The returned callable is the raw closure: it may raise exceptions other than
        ``CertLogicError`` for pathological data, so callers catch broadly (the engine does).
        """
        if self._strict is None:
            self._strict = _Compiler(strict=True).node(self.expression, 1, ())
        return self._strict

    def evaluate(self, data: Any, *, strict_paths: bool = False) -> Any:
        """Evaluate against ``data``.

        Raises:
            MissingDataError: ``strict_paths`` and a ``var`` path names an absent key or index.
            CertLogicError: an invalid node was reached, or an operand had the wrong type.
        """
        if strict_paths:
            fn = self._strict
            if fn is None:
                fn = self._strict = _Compiler(strict=True).node(self.expression, 1, ())
        else:
            fn = self._lax
        return _run(fn, data)

    def trace(self, data: Any, *, strict_paths: bool = False) -> tuple[Trace, Any, CertLogicError | None]:
        """Evaluate recording every node (``rules explain``): ``(trace, value, error)``."""
        tr = Trace()
        fn = _Compiler(strict=strict_paths, tracer=tr).node(self.expression, 1, ())
        try:
            return tr, _run(fn, data), None
        except CertLogicError as exc:
            return tr, None, exc


def _run(fn: DataFn, data: Any) -> Any:
    try:
        return fn(data)
    except CertLogicError:
        raise
    except RecursionError as exc:
        raise CertLogicError("evaluation nested too deeply") from exc
    except Exception as exc:  # rules.md §1.2: nothing but CertLogicError may leave evaluate
        raise CertLogicError(f"evaluation failed: {type(exc).__name__}") from exc


def compile(expression: Any) -> Program:  # the contract name (rules.md §1.2) shadows a builtin on purpose
    """Compile once, evaluate many times. Never raises: a bad node raises when reached."""
    return Program(expression)


def evaluate(expression: Any, data: Any) -> Any:
    """Plain CertLogic evaluation: missing data reads as ``null``.

    Raises:
        CertLogicError: as listed in rules.md §1.6, only for nodes actually evaluated.
    """
    return Program(expression).evaluate(data)


def trace(expression: Any, data: Any, *, strict_paths: bool = False) -> tuple[Trace, Any, CertLogicError | None]:
    """Evaluate recording each node's value (see ``Program.trace``)."""
    return Program(expression).trace(data, strict_paths=strict_paths)


# --------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class Issue:
    """One static problem: ``expr`` is the offending sub-expression exactly as given."""

    expr: Any
    message: str


def validate(expression: Any) -> list[Issue]:
    """Static check without data (rules.md §1.7): ``[]`` means valid. Never raises."""
    out: list[Issue] = []
    try:
        _validate(expression, 1, out)
    except RecursionError:
        out.append(Issue(expression, "expression nested too deeply"))
    return out


def _js_number(v: float) -> str:
    r = repr(v)
    return r[:-2] if r.endswith(".0") else r


def _validate(expr: Any, depth: int, out: list[Issue]) -> None:
    t = type(expr)
    if t is str or t is bool or t is int:
        return
    if t is float:
        if not expr.is_integer():
            out.append(Issue(expr, f"{_js_number(expr)} is a non-integer number"))
        return
    if expr is None:
        out.append(Issue(expr, "invalid CertLogic expression"))
        return
    if t is list:
        if depth > MAX_DEPTH:
            out.append(Issue(expr, f"expression nested deeper than {MAX_DEPTH} levels"))
            return
        for e in expr:
            _validate(e, depth + 1, out)
        return
    if t is not dict:
        out.append(Issue(expr, "invalid CertLogic expression"))
        return
    if depth > MAX_DEPTH:
        out.append(Issue(expr, f"expression nested deeper than {MAX_DEPTH} levels"))
        return
    if len(expr) != 1:
        out.append(Issue(expr, f"expression object must have exactly one key, but it has {len(expr)}"))
        return
    ((op, operands),) = expr.items()
    if op == "var":
        if type(operands) is not str:
            out.append(Issue(expr, 'not of the form { "var": "<path>" }'))
        elif operands != "" and "" in operands.split("."):
            out.append(Issue(expr, f"data access path doesn't have a valid format: {operands}"))
        return
    if type(operands) is not list:
        out.append(Issue(expr, 'operation not of the form { "<operator>": [ <values...> ] }'))
        return
    if op not in OPERATORS:
        out.append(Issue(expr, f'unrecognised operator: "{_short(op)}"'))
        return
    n = len(operands)
    if op == "and":
        max_n = n
        if n < 2:
            out.append(Issue(expr, f'operator "and" takes at least 2 operands, got {n}'))
    else:
        allowed = _ARITY[op]
        max_n = max(allowed)
        if n not in allowed:
            out.append(Issue(expr, f'operator "{op}" takes {_arity_text(op)} operands, got {n}'))
    inner = depth + 2
    if op == "plusTime":
        if n > 0:
            _validate(operands[0], inner, out)
        if n > 1 and not _is_int(operands[1]):
            out.append(Issue(expr, 'invalid "amount" operand of "plusTime"'))
        if n > 2 and (type(operands[2]) is not str or operands[2] not in TIME_UNITS):
            out.append(Issue(expr, 'invalid "unit" operand of "plusTime"'))
        return
    if op == "extractFromUVCI":
        if n > 0:
            _validate(operands[0], inner, out)
        if n > 1 and not _is_int(operands[1]):
            out.append(Issue(expr, 'invalid "index" operand of "extractFromUVCI"'))
        return
    for e in operands[:max_n]:
        _validate(e, inner, out)
