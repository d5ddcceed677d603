"""Generated Python for strict-path rule evaluation (the engine's hot path, rules.md §1.8).

``compile_strict(expression)`` turns a CertLogic expression into the source of one
Python function and compiles it; the function has exactly the semantics of
``certlogic.Program.evaluate(data, strict_paths=True)`` but runs as straight-line
code instead of a call per node. It is used for the rules of a bundle, compiled
once at load; ``certlogic``'s closures stay the reference (``evaluate``, traces,
lax paths) and a differential test holds the two together.

Safety: nothing from the expression is pasted into the source except through
``repr`` of a ``str``, ``int`` or ``bool`` (which always yields a literal) and
operator names looked up in a fixed table; every other value is passed in as a
constant of the function's namespace. Anything the generator does not handle
(deep nesting, a Python compile error) falls back to the closures.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import Any

from edge.policy import certlogic as cl

__all__ = ["compile_strict"]

_MAX_GEN_DEPTH = 48  # deeper than any real rule; beyond it the closures are used
_MISS = (KeyError, TypeError, IndexError)


def _raise(message: str) -> None:
    raise cl.CertLogicError(message)


def _check_in(h: Any) -> None:
    raise cl.CertLogicError(f'the haystack of "in" must be an array, not a {cl._type_name(h)}')


def _in(n: Any, h: Any) -> bool:
    if type(h) is not list:
        _check_in(h)
    if type(n) is str:
        return n in h
    return any(cl.strict_equal(n, x) for x in h)


def _plus(a: Any, b: Any) -> int:
    if cl._is_int(a) and cl._is_int(b):
        return int(a) + int(b)
    raise cl.CertLogicError(f'operands of "+" must be integers, not {cl._type_name(a)} and {cl._type_name(b)}')


def _check_ints(op: str, *values: Any) -> None:
    for v in values:
        if not cl._is_int(v):
            raise cl.CertLogicError(f'operands of "{op}" must be integers, not a {cl._type_name(v)}')


def _check_dates(op: str, *values: Any) -> None:
    for v in values:
        if type(v) is not cl.DateTime:
            raise cl.CertLogicError(f'operands of "{op}" must be date-times, not a {cl._type_name(v)}')


def _plus_time(s: Any, amount: int, unit: str) -> cl.DateTime:
    if type(s) is not str:
        raise cl.CertLogicError(f'the date operand of "plusTime" must be a string, not a {cl._type_name(s)}')
    return cl._plus_time(s, amount, unit)


def _dob(s: Any) -> cl.DateTime:
    if type(s) is not str:
        raise cl.CertLogicError(f'the operand of "dccDateOfBirth" must be a string, not a {cl._type_name(s)}')
    return cl._dcc_date_of_birth(s)


def _reduce(items: Any, lam: Callable[[Any], Any], acc: Any) -> Any:
    if items is None:
        return acc
    if type(items) is not list:
        raise cl.CertLogicError(f'the operand of "reduce" must be an array or null, not a {cl._type_name(items)}')
    for cur in items:
        acc = lam({"accumulator": acc, "current": cur})
    return acc


_BASE_NS: dict[str, Any] = {
    "_MISS": _MISS,
    "_truth": cl._truth,
    "_is_int": cl._is_int,
    "_eq": cl.strict_equal,
    "_raise": _raise,
    "_check_in": _check_in,
    "_in": _in,
    "_plus": _plus,
    "_check_ints": _check_ints,
    "_check_dates": _check_dates,
    "_plus_time": _plus_time,
    "_dob": _dob,
    "_reduce": _reduce,
    "DateTime": cl.DateTime,
}
_CMP = {"<": "<", ">": ">", "<=": "<=", ">=": ">="}
_DATE_CMP = {"after": ">", "before": "<", "not-after": "<=", "not-before": ">="}
_TRUTHY = "({0} is True or ({0} is not False and {0} is not None and _truth({0})))"


class _TooDeep(Exception):
    pass


class _Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = dict(_BASE_NS)
        self.n = 0

    def tmp(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def const(self, value: Any) -> str:
        self.n += 1
        name = f"_k{self.n}"
        self.ns[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def value(self, expr: Any, depth: int, indent: int) -> str:
        """Like ``node`` but always a variable name: literals get a temporary, so that the
        generated ``x is True`` tests never compare a literal by identity."""
        r = self.node(expr, depth, indent)
        if r.isidentifier() and not keyword.iskeyword(r):
            return r
        out = self.tmp()
        self.emit(indent, f"{out} = {r}")
        return out

    def fail(self, indent: int, message: str) -> str:
        self.emit(indent, f"_raise({message!r})")
        return "None"

    # Each node emits statements at ``indent`` and returns a name or literal holding its value.
    def node(self, expr: Any, depth: int, indent: int) -> str:
        if indent > _MAX_GEN_DEPTH:
            raise _TooDeep
        t = type(expr)
        if t is str or t is bool or t is int:
            return repr(expr)
        if t is float:
            return repr(expr) if expr.is_integer() else self.fail(indent, "a non-integer number is not a valid literal")
        if expr is None:
            return self.fail(indent, "invalid CertLogic expression: null literal")
        if t is list:
            if depth > cl.MAX_DEPTH:
                return self.fail(indent, f"expression nested deeper than {cl.MAX_DEPTH} levels")
            items = [self.node(e, depth + 1, indent) for e in expr]
            out = self.tmp()
            self.emit(indent, f"{out} = [{', '.join(items)}]")
            return out
        if t is not dict:
            return self.fail(indent, f"invalid CertLogic expression: {t.__name__}")
        if depth > cl.MAX_DEPTH:
            return self.fail(indent, f"expression nested deeper than {cl.MAX_DEPTH} levels")
        if len(expr) != 1:
            return self.fail(indent, f"expression object must have exactly one key, but it has {len(expr)}")
        ((op, operands),) = expr.items()
        if op == "var":
            return self.var(operands, indent)
        if type(operands) is not list or len(operands) == 0:
            return self.fail(indent, f'operation not of the form {{ "{cl._short(op)}": [ <values...> ] }}')
        if op not in cl.OPERATORS:
            return self.fail(indent, f'unrecognised operator: "{cl._short(op)}"')
        n = len(operands)
        if op == "and":
            if n < 2:
                return self.fail(indent, f'operator "and" takes at least 2 operands, got {n}')
        elif n not in cl._ARITY[op]:
            return self.fail(indent, f'operator "{op}" takes {cl._arity_text(op)} operands, got {n}')
        method: Callable[[str, list[Any], int, int], str] = getattr(self, _METHODS[op])
        return method(op, operands, depth + 2, indent)

    def var(self, path: Any, indent: int) -> str:
        if type(path) is not str:
            return self.fail(indent, 'not of the form { "var": "<path>" }')
        if path == "":
            return "data"
        keys = tuple((f, int(f) if f.isascii() and f.isdigit() else None) for f in path.split("."))
        slow = self.const(cl._strict_var(path, keys))
        out = self.tmp()
        index = "".join(f"[{k!r}]" for k, _ in keys)
        self.emit(indent, "try:")
        self.emit(indent + 1, f"{out} = data{index}")
        self.emit(indent, "except _MISS:")
        self.emit(indent + 1, f"{out} = {slow}(data)")
        return out

    def op_if(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        g = self.value(ops[0], depth, indent)
        out = self.tmp()
        self.emit(indent, f"if {_TRUTHY.format(g)}:")
        r = self.value(ops[1], depth, indent + 1)
        self.emit(indent + 1, f"{out} = {r}")
        self.emit(indent, "else:")
        r = self.value(ops[2], depth, indent + 1)
        self.emit(indent + 1, f"{out} = {r}")
        return out

    def op_and(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        out = self.tmp()
        level = indent
        for i, e in enumerate(ops):
            r = self.value(e, depth, level)
            self.emit(level, f"{out} = {r}")
            if i < len(ops) - 1:
                self.emit(level, f"if {_TRUTHY.format(out)}:")
                level += 1
            else:  # the last value must be truthy or falsy too [ours, rules.md §1.5]
                self.emit(level, f"if {out} is not True and {out} is not False and {out} is not None:")
                self.emit(level + 1, f"_truth({out})")
        return out

    def op_not(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        r = self.value(ops[0], depth, indent)
        out = self.tmp()
        self.emit(indent, f"{out} = False if {r} is True else (True if ({r} is False or {r} is None) else not _truth({r}))")
        return out

    def op_eq(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        a = self.value(ops[0], depth, indent)
        b = self.value(ops[1], depth, indent)
        out = self.tmp()
        for lit, other in ((ops[1], a), (ops[0], b)):
            tl = type(lit)
            if tl is str:
                self.emit(indent, f"{out} = type({other}) is str and {other} == {lit!r}")
                return out
            if tl is bool:
                self.emit(indent, f"{out} = {other} is {lit!r}")
                return out
            if tl is int:
                self.emit(indent, f"{out} = _is_int({other}) and {other} == {lit!r}")
                return out
        self.emit(indent, f"{out} = _eq({a}, {b})")
        return out

    def op_in(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        needle_expr, hay_expr = ops
        out = self.tmp()
        if type(hay_expr) is list and all(type(e) is str for e in hay_expr):
            n = self.value(needle_expr, depth, indent)
            members = self.const(frozenset(hay_expr))
            self.emit(indent, f"{out} = type({n}) is str and {n} in {members}")
            return out
        n = self.value(needle_expr, depth, indent)
        h = self.value(hay_expr, depth, indent)
        if type(needle_expr) is str:
            self.emit(indent, f"if type({h}) is not list:")
            self.emit(indent + 1, f"_check_in({h})")
            self.emit(indent, f"{out} = {n} in {h}")
            return out
        self.emit(indent, f"{out} = _in({n}, {h})")
        return out

    def op_plus(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        a = self.value(ops[0], depth, indent)
        b = self.value(ops[1], depth, indent)
        out = self.tmp()
        self.emit(indent, f"{out} = {a} + {b} if type({a}) is int and type({b}) is int else _plus({a}, {b})")
        return out

    def op_cmp(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        vals = [self.value(e, depth, indent) for e in ops]
        out = self.tmp()
        cond = " or ".join(f"type({v}) is not int" for v in vals)
        self.emit(indent, f"if {cond}:")
        self.emit(indent + 1, f"_check_ints({op!r}, {', '.join(vals)})")
        sym = _CMP[op]
        self.emit(indent, f"{out} = {f' {sym} '.join(vals)}")
        return out

    def op_date_cmp(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        vals = [self.value(e, depth, indent) for e in ops]
        out = self.tmp()
        cond = " or ".join(f"type({v}) is not DateTime" for v in vals)
        self.emit(indent, f"if {cond}:")
        self.emit(indent + 1, f"_check_dates({op!r}, {', '.join(vals)})")
        sym = _DATE_CMP[op]
        self.emit(indent, f"{out} = {f' {sym} '.join(f'{v}.ms' for v in vals)}")
        return out

    def op_plus_time(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        amount, unit = ops[1], ops[2]
        if not cl._is_int(amount):
            return self.fail(indent, 'invalid "amount" operand of "plusTime": must be an integer literal')
        if type(unit) is not str or unit not in cl.TIME_UNITS:
            return self.fail(indent, 'invalid "unit" operand of "plusTime": must be "year", "month", "day" or "hour"')
        s = self.value(ops[0], depth, indent)
        out = self.tmp()
        self.emit(indent, f"{out} = _plus_time({s}, {int(amount)!r}, {unit!r})")
        return out

    def op_dob(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        s = self.value(ops[0], depth, indent)
        out = self.tmp()
        self.emit(indent, f"{out} = _dob({s})")
        return out

    def op_reduce(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        items = self.value(ops[0], depth, indent)
        lam = self.const(compile_strict(ops[1], depth))
        init = self.value(ops[2], depth, indent)
        out = self.tmp()
        self.emit(indent, f"{out} = _reduce({items}, {lam}, {init})")
        return out

    def op_uvci(self, op: str, ops: list[Any], depth: int, indent: int) -> str:
        fn = self.const(cl._Compiler(strict=True).node({op: ops}, depth - 2, ()))
        out = self.tmp()
        self.emit(indent, f"{out} = {fn}(data)")
        return out


_METHODS = {
    "if": "op_if",
    "and": "op_and",
    "!": "op_not",
    "===": "op_eq",
    "in": "op_in",
    "+": "op_plus",
    "plusTime": "op_plus_time",
    "dccDateOfBirth": "op_dob",
    "reduce": "op_reduce",
    "extractFromUVCI": "op_uvci",
    **{op: "op_cmp" for op in ("<", ">", "<=", ">=")},
    **{op: "op_date_cmp" for op in ("after", "before", "not-after", "not-before")},
}


def compile_strict(expression: Any, depth: int = 1) -> Callable[[Any], Any]:
    """A function ``f(data)`` equal to ``Program(expression).evaluate(data, strict_paths=True)``.

    Like the closure it replaces, it may raise exceptions other than ``CertLogicError``
    only for data that is not JSON; callers catch broadly.
    """
    gen = _Gen()
    try:
        result = gen.node(expression, depth, 1)
        source = "def rule(data):\n" + "\n".join(gen.lines) + ("\n" if gen.lines else "") + f"    return {result}\n"
        code = compile(source, "<certlogic rule>", "exec")
    except (_TooDeep, RecursionError, SyntaxError, MemoryError):
        return cl._Compiler(strict=True).node(expression, depth, ())
    ns = gen.ns
    exec(code, ns)  # the source holds only repr() of str/int/bool literals (module docstring)
    fn: Callable[[Any], Any] = ns["rule"]
    return fn
