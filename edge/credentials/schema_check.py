"""A compiled JSON Schema checker for the keywords of the DCC schema (credentials.md §5.2).

The ``jsonschema`` package takes about a millisecond per DCC payload on a small CPU,
more than the whole rest of a verification; the gate's budget is well under a
millisecond in total (§9). ``compile_schema`` turns the shipped schema file, which
stays the one source of truth, into nested closures once, at import. It implements
exactly these Draft 2020-12 keywords, with the ``jsonschema`` package's semantics:

- assertions: ``type``, ``required``, ``properties``, ``items`` (2020-12: every item),
  ``minItems``, ``maxItems``, ``minLength``, ``maxLength``, ``minimum``, ``pattern``
  (ECMA-262, see ``ecma_regex``);
- applicators: ``oneOf``, ``anyOf``, ``allOf``, ``$ref`` to ``#/$defs/<name>``, applied
  together with the keywords beside them;
- annotations, ignored: ``title``, ``description``, ``$comment``, ``examples``,
  ``format`` (not asserted, §5.2), ``valueset-uri``, ``$schema``, ``$id``, ``$defs``.

Any other keyword raises ``UnsupportedSchema`` so the caller falls back to ``jsonschema``
instead of silently ignoring a rule. The tests check this checker against
``jsonschema`` on generated payloads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["UnsupportedSchema", "compile_schema", "ecma_regex"]

Check = Callable[[Any], bool]
_ANNOTATIONS = frozenset(
    {"title", "description", "$comment", "examples", "format", "valueset-uri", "$schema", "$id", "$defs"}
)


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this checker does not implement."""


def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile an ECMA-262 pattern (JSON Schema's dialect) for Python's ``re``.

    Outside character classes ``$`` becomes ``\\Z`` (ECMA's ``$`` never matches before a
    final newline) and ``.`` excludes every ECMA line terminator; ``re.ASCII`` keeps
    ``\\d``/``\\w``/``\\s`` to ASCII as in ECMA. The DCC schema's patterns use nothing else.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
        elif c == "$":
            out.append(r"\Z")
        elif c == ".":
            out.append("[^\n\r\u2028\u2029]")
        else:
            out.append(c)
        i += 1
    return re.compile("".join(out), re.ASCII)


def _is_number(x: Any) -> bool:
    t = type(x)
    return t is int or t is float


_TYPES: dict[str, Check] = {
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "string": lambda x: type(x) is str,
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
    "number": _is_number,
    # jsonschema: an integer, or a float with no fractional part (1.0).
    "integer": lambda x: type(x) is int or (type(x) is float and x.is_integer()),
}


def compile_schema(schema: dict[str, Any]) -> Check:
    """A predicate that is True exactly when ``jsonschema`` would find an instance valid.

    Raises:
        UnsupportedSchema: a keyword, ``$ref`` form or value outside the list above.
    """
    defs = schema.get("$defs", {})
    compiled: dict[str, Check] = {}

    def ref(target: str) -> Check:
        prefix = "#/$defs/"
        if not isinstance(target, str) or not target.startswith(prefix) or target[len(prefix) :] not in defs:
            raise UnsupportedSchema(f"$ref {target!r}")
        name = target[len(prefix) :]
        if name not in compiled:
            holder: list[Check] = []
            compiled[name] = lambda x: holder[0](x)  # recursion-safe forward reference
            holder.append(comp(defs[name]))
        return compiled[name]

    def comp(s: Any) -> Check:
        if s is True:
            return lambda x: True
        if s is False:
            return lambda x: False
        if not isinstance(s, dict):
            raise UnsupportedSchema(f"schema of type {type(s).__name__}")
        checks: list[Check] = []
        for kw, val in s.items():
            if kw in _ANNOTATIONS:
                continue
            checks.append(_keyword(kw, val, comp, ref))
        if not checks:
            return lambda x: True
        if len(checks) == 1:
            return checks[0]
        frozen = tuple(checks)
        return lambda x: all(c(x) for c in frozen)

    return comp(schema)


def _keyword(kw: str, val: Any, comp: Callable[[Any], Check], ref: Callable[[str], Check]) -> Check:
    if kw == "type":
        names = [val] if isinstance(val, str) else val
        if not isinstance(names, list) or any(n not in _TYPES for n in names):
            raise UnsupportedSchema(f"type {val!r}")
        preds = tuple(_TYPES[n] for n in names)
        return preds[0] if len(preds) == 1 else (lambda x: any(p(x) for p in preds))
    if kw == "required":
        keys = tuple(val)
        return lambda x: type(x) is not dict or all(k in x for k in keys)
    if kw == "properties":
        props = tuple((k, comp(v)) for k, v in val.items())

        def properties(x: Any) -> bool:
            if type(x) is not dict:
                return True
            for k, check in props:
                if k in x and not check(x[k]):
                    return False
            return True

        return properties
    if kw == "items":
        item = comp(val)
        return lambda x: type(x) is not list or all(item(v) for v in x)
    if kw in ("minItems", "maxItems", "minLength", "maxLength"):
        if type(val) is not int or val < 0:
            raise UnsupportedSchema(f"{kw} {val!r}")
        kind = list if kw.endswith("Items") else str
        if kw.startswith("min"):
            return lambda x: type(x) is not kind or len(x) >= val
        return lambda x: type(x) is not kind or len(x) <= val
    if kw == "minimum":
        if not _is_number(val):
            raise UnsupportedSchema(f"minimum {val!r}")
        return lambda x: not _is_number(x) or x >= val
    if kw == "pattern":
        rx = ecma_regex(val)
        return lambda x: type(x) is not str or rx.search(x) is not None
    if kw in ("oneOf", "anyOf", "allOf"):
        subs = tuple(comp(v) for v in val)
        if kw == "oneOf":
            return lambda x: sum(1 for c in subs if c(x)) == 1
        if kw == "anyOf":
            return lambda x: any(c(x) for c in subs)
        return lambda x: all(c(x) for c in subs)
    if kw == "$ref":
        return ref(val)
    raise UnsupportedSchema(f"keyword {kw!r}")
