"""The eight parts of a bundle (bundles.md §1.6): schemas, validation (M11), and building them.

Validation (M11, also run by ``bundle build``, ``bundle verify`` and the server
before it signs) in this order, first failure wins, each failure a
``part_invalid`` whose detail names the part and the field:

1. strict JSON (sync.md §1.3 parser: no duplicate keys, no floats) of an object
   whose ``part`` is its name and ``schema`` is 1;
2. the fields of §1.6 with their types (pydantic, strict), no other field;
3. cross-entry rules: unique ``sub`` and code hashes in the roster, one ``teams``
   row per (firm, team), unique firm ids, ``valid_from < valid_until``, flags
   without repeats, names already masked (credentials.md §7.2: a name is empty or
   holds ``*``), ``expires_after_s > stale_after_s``;
4. rules load through ``edge.policy.engine.RuleSet.from_parts(rules, policy)``
   (rules.md §2.1 load-time checks) and the trust part through
   ``edge.credentials.load_trust`` (credentials.md §4.1).

Building (``bundle build``, ``POST /v1/admin/sources``) turns plain source files
into part bytes written with sorted keys and no spaces, so equal content gets
an equal hash (§1.6). ``roster.csv`` rows become the ``staff`` array; one bad row
rejects the file with its line and column (``SourceError``).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from sync.bundle.formats import PART_CAPS, PART_NAMES, BundleRejected, validation_detail
from sync.canonical import MAX_SAFE_INT, loads_strict
from sync.errors import CanonicalError, FormatError
from sync.timefmt import parse_ms

__all__ = [
    "DATA_PARTS",
    "FLAGS",
    "SOURCE_FILES",
    "ParsedParts",
    "SourceError",
    "build_parts",
    "build_parts_from_dir",
    "loads_part",
    "part_bytes",
    "parse_roster_csv",
    "validate_part",
    "validate_parts",
]

# credentials.md §2.3: the one flag vocabulary of the project.
FLAGS = ("positive", "close_contact", "secondary_contact", "risk_area_travel", "itinerary_star",
         "medicine_purchase", "unreported_arrival")
STAFF_FIELDS = ("sub", "codes", "name", "role", "firm", "team", "zones", "closed_loop", "colour", "flags",
                "last_test")
# bundle build's SRC files (§6) and the part each becomes.
SOURCE_FILES: dict[str, str] = {
    "rules.json": "rules",
    "settings.json": "settings",
    "trust.json": "trust",
    "roster.json": "roster",
    "roster.csv": "roster",
    "firms.json": "firms",
    "preregistrations.json": "preregistrations",
    "revocations.json": "revocations",
    "mode.json": "mode",
}
# Parts that only fill lookup tables of the bundle file (large; reusable when unchanged).
DATA_PARTS = frozenset({"roster", "firms", "preregistrations", "revocations"})
# The list field of each part that a plain JSON array source stands for.
_LIST_FIELD = {"rules": "rules", "firms": "firms", "preregistrations": "visitors", "revocations": "entries"}


class SourceError(FormatError):
    """A source file that cannot become a part; the message names file, line (when known) and field."""

    def __init__(self, file: str, detail: str, *, line: int | None = None, column: str | None = None) -> None:
        self.file, self.line, self.column, self.detail = file, line, column, detail
        where = file + (f" line {line}" if line is not None else "") + (f", column {column}" if column else "")
        super().__init__(f"{where}: {detail}")


# -- schemas -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _time(v: str) -> str:
    # Cached: a roster repeats the same few last_test values thousands of times.
    parse_ms(v)
    return v


def _masked(v: str) -> str:
    # credentials.md §7.2: names arrive already masked; a clear name must never reach a gate.
    if v and "*" not in v:
        raise ValueError("name must already be masked (credentials.md §7.2: it holds '*')")
    return v


def _unique(v: list[Any]) -> list[Any]:
    if len(v) != len(set(v)):
        raise ValueError("values repeat")
    return v


Time = Annotated[str, AfterValidator(_time)]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Str1_32 = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Name = Annotated[str, StringConstraints(max_length=32), AfterValidator(_masked)]
PosInt = Annotated[int, Field(ge=1)]
_CFG = ConfigDict(extra="forbid", strict=True)


class _Staff(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    sub: Hex32
    codes: Annotated[list[Hex32], AfterValidator(_unique)]
    name: Name
    role: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,16}$")]
    firm: Str1_32
    team: Str1_32 | None
    zones: Annotated[list[Str1_32], Field(min_length=1), AfterValidator(_unique)]
    closed_loop: bool
    colour: Literal["green", "yellow", "red"] | None
    flags: Annotated[list[Literal[FLAGS]], AfterValidator(_unique)]  # type: ignore[valid-type]
    last_test: Time | None


class _Team(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    firm: Str1_32
    team: Str1_32
    start_min: Annotated[int, Field(ge=0, le=1439)]
    end_min: Annotated[int, Field(ge=0, le=1439)]


class _Firm(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    id: Str1_32
    name: Annotated[str, StringConstraints(max_length=200)]
    whitelisted: bool
    meltdown: bool
    meltdown_at: Time | None
    closed_loop: bool


class _Visitor(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    sub: Hex32
    name: Name
    host_firm: Str1_32
    zones: Annotated[list[Str1_32], Field(min_length=1), AfterValidator(_unique)]
    valid_from: Time
    valid_until: Time
    ref: Annotated[str, StringConstraints(max_length=64)]


class _Revocation(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    hash: Hex32
    until: Time
    reason: Literal["lost", "fraud", "reissued", "meltdown", "other"]


class _Freshness(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    stale_after_s: PosInt
    expires_after_s: PosInt
    resign_after_s: PosInt


class _ClockSettings(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    skew_warn_s: PosInt
    max_unconfirmed_lead_s: PosInt


class _Account(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$")]
    name: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    role: Literal["guard", "admin"]
    pin: Annotated[str, StringConstraints(pattern=r"^scrypt\$[0-9]{1,2}\$[0-9]{1,3}\$[0-9]{1,3}\$[0-9a-f]{32}\$[0-9a-f]{64}$")]


class _Console(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    accounts: list[_Account]


class _RulesPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["rules"]
    schema: Literal[1]
    rules: list[dict[str, Any]]


class _SettingsPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["settings"]
    schema: Literal[1]
    freshness: _Freshness
    clock: _ClockSettings
    policy: dict[str, Any]  # rules.md §2.3 owns its keys; unknown keys are allowed there
    console: NotRequired[_Console]


class _TrustPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["trust"]
    schema: Literal[1]
    keys: list[dict[str, Any]]  # credentials.md §4.1 owns the entries; load_trust checks them


class _RosterPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["roster"]
    schema: Literal[1]
    roster_key: Hex64
    staff: list[_Staff]
    teams: list[_Team]


class _FirmsPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["firms"]
    schema: Literal[1]
    firms: list[_Firm]


class _PreregPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["preregistrations"]
    schema: Literal[1]
    visitors: list[_Visitor]


class _RevocationsPart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["revocations"]
    schema: Literal[1]
    entries: list[_Revocation]


class _ModePart(TypedDict):
    __pydantic_config__ = _CFG  # type: ignore[misc]
    part: Literal["mode"]
    schema: Literal[1]
    mode: Literal["normal", "emergency"]
    since: Time
    reason: Annotated[str, StringConstraints(max_length=500)]
    set_by: Annotated[str, StringConstraints(min_length=1, max_length=64)]


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "rules": TypeAdapter(_RulesPart),
    "settings": TypeAdapter(_SettingsPart),
    "trust": TypeAdapter(_TrustPart),
    "roster": TypeAdapter(_RosterPart),
    "firms": TypeAdapter(_FirmsPart),
    "preregistrations": TypeAdapter(_PreregPart),
    "revocations": TypeAdapter(_RevocationsPart),
    "mode": TypeAdapter(_ModePart),
}


def _invalid(name: str, detail: str) -> BundleRejected:
    return BundleRejected("part_invalid", f"{name}: {detail}", doc="manifest")


def _cross_checks(name: str, obj: dict[str, Any]) -> None:
    if name == "roster":
        subs: dict[str, int] = {}
        codes: dict[str, int] = {}
        for i, s in enumerate(obj["staff"]):
            if s["sub"] in subs:
                raise _invalid(name, f"staff[{i}].sub: same sub as staff[{subs[s['sub']]}]")
            subs[s["sub"]] = i
            for c in s["codes"]:
                if c in codes:
                    raise _invalid(name, f"staff[{i}].codes: code hash also held by staff[{codes[c]}]")
                codes[c] = i
        teams: set[tuple[str, str]] = set()
        for i, t in enumerate(obj["teams"]):
            key = (t["firm"], t["team"])
            if key in teams:
                raise _invalid(name, f"teams[{i}]: a second row for firm {t['firm']!r} team {t['team']!r}")
            teams.add(key)
    elif name == "firms":
        ids: set[str] = set()
        for i, f in enumerate(obj["firms"]):
            if f["id"] in ids:
                raise _invalid(name, f"firms[{i}].id: firm {f['id']!r} listed twice")
            ids.add(f["id"])
    elif name == "preregistrations":
        for i, v in enumerate(obj["visitors"]):
            if parse_ms(v["valid_from"]) >= parse_ms(v["valid_until"]):
                raise _invalid(name, f"visitors[{i}]: valid_from must be before valid_until")
    elif name == "settings":
        f = obj["freshness"]
        if f["expires_after_s"] <= f["stale_after_s"]:
            raise _invalid(name, "freshness.expires_after_s must be above freshness.stale_after_s")
        if f["resign_after_s"] >= f["expires_after_s"]:
            raise _invalid(name, "freshness.resign_after_s must be below freshness.expires_after_s")
        accounts = obj.get("console", {}).get("accounts", [])
        seen: set[str] = set()
        for i, a in enumerate(accounts):
            if a["id"] in seen:
                raise _invalid(name, f"console.accounts[{i}].id: {a['id']!r} used twice")
            seen.add(a["id"])


_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _int_checked(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise CanonicalError("integer outside ±(2^53 − 1)")
    return value


def loads_part(data: bytes) -> Any:
    """The strict parse of sync.md §1.3 for part bytes, fast enough for a 16 MiB roster.

    Same refusals as ``loads_strict`` (invalid UTF-8, BOM, duplicate keys, floats, NaN,
    integers beyond ±(2^53 − 1), lone surrogates). Its per-string walk, which only matters
    for ``\\ud800``-style escapes, runs only when the bytes hold such an escape.
    """
    if _LONE_SURROGATE_ESCAPE.search(data) or data.startswith(b"\xef\xbb\xbf"):
        return loads_strict(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CanonicalError(f"invalid UTF-8 at byte {exc.start}") from exc
    try:
        return json.loads(text, object_pairs_hook=_strict_pairs, parse_float=_no_float, parse_int=_int_checked,
                          parse_constant=_no_constant)
    except CanonicalError:
        raise
    except RecursionError as exc:
        raise CanonicalError("JSON nested too deeply") from exc
    except ValueError as exc:
        raise CanonicalError(f"not JSON: {exc}") from exc


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise CanonicalError(f"duplicate object key {dup[:40]!r}")
    return out


def _no_float(text: str) -> Any:
    raise CanonicalError(f"number {text[:40]} is not an integer (floats and exponents are refused)")


def _no_constant(text: str) -> Any:
    raise CanonicalError(f"{text} is not JSON")


def validate_part(name: str, data: bytes) -> dict[str, Any]:
    """Steps 1–3 for one part: the parsed, schema-checked object.

    Raises:
        BundleRejected: ``part_invalid`` naming the part and the field.
    """
    if name not in _ADAPTERS:
        raise _invalid(name, "unknown part name")
    try:
        obj = loads_part(data)
    except CanonicalError as exc:
        raise _invalid(name, f"not strict JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise _invalid(name, "a part is a JSON object")
    if obj.get("part") != name:
        raise _invalid(name, f"field part is {str(obj.get('part'))[:40]!r}, expected {name!r}")
    try:
        checked = _ADAPTERS[name].validate_python(obj)
    except ValidationError as exc:
        raise _invalid(name, validation_detail(exc)) from exc
    _cross_checks(name, checked)
    return dict(checked)


@dataclass(frozen=True)
class ParsedParts:
    """All eight parts, checked (M11), as parsed objects; ``trust`` is the loaded ``Trust`` when available."""

    objects: dict[str, dict[str, Any]]
    rules: Any = None  # edge.policy.engine.RuleSet, when the policy package is installed
    trust: Any = None  # edge.credentials.Trust, when the credentials package is installed
    warnings: tuple[str, ...] = ()


def _load_rules(rules: list[dict[str, Any]], policy: dict[str, Any]) -> Any:
    try:
        from edge.policy.engine import RuleSet  # lazy: sync must work without the edge policy
        from edge.policy.errors import RuleSetError
    except ImportError:
        _check_rules_shape(rules)
        return None
    try:
        return RuleSet.from_parts(rules, policy)
    except RuleSetError as exc:
        raise _invalid("rules", str(exc)) from exc


def _check_rules_shape(rules: list[dict[str, Any]]) -> None:
    # Fallback when edge.policy is absent (a server-only install): the rule envelope of rules.md §2.1.
    ids: set[str] = set()
    for i, r in enumerate(rules):
        for key in ("id", "version", "description", "applies_to", "outcome", "logic"):
            if key not in r:
                raise _invalid("rules", f"rules[{i}].{key}: missing")
        if not isinstance(r["id"], str) or r["id"] in ids:
            raise _invalid("rules", f"rules[{i}].id: not a string or used twice")
        ids.add(r["id"])
        if r["outcome"] not in ("deny", "refer"):
            raise _invalid("rules", f"rules[{i}].outcome: must be deny or refer")
        if not isinstance(r["logic"], dict):
            raise _invalid("rules", f"rules[{i}].logic: must be a CertLogic object")


def _load_trust(obj: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    try:
        from edge.credentials import load_trust
        from edge.errors import EdgeError
    except ImportError:
        _check_trust_shape(obj)
        return None, ()
    try:
        trust = load_trust(obj)
    except (EdgeError, ValueError, TypeError, KeyError) as exc:
        raise _invalid("trust", str(exc)) from exc
    return trust, tuple(f"trust: {w}" for w in getattr(trust, "warnings", ()))


def _check_trust_shape(obj: dict[str, Any]) -> None:
    import base64
    import binascii

    for i, e in enumerate(obj["keys"]):
        has = [k for k in ("certificate", "public_key") if k in e]
        if len(has) != 1 or not isinstance(e[has[0]], str):
            raise _invalid("trust", f"keys[{i}]: exactly one of certificate or public_key")
        try:
            base64.b64decode(e[has[0]], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _invalid("trust", f"keys[{i}].{has[0]}: not base64") from exc


def validate_parts(parts: Mapping[str, bytes], *, already_valid: frozenset[str] = frozenset()) -> ParsedParts:
    """M11 over all eight parts (steps 1–4).

    Args:
        already_valid: names of data parts (roster, firms, preregistrations, revocations) whose
            bytes are those of the bundle in force, which passed M11 when it was applied; they are
            not parsed again (their tables are copied from the bundle file in force). Rules,
            settings, trust and mode are always checked: the cross-part checks need them.

    Raises:
        BundleRejected: ``part_missing`` or ``part_invalid``.
    """
    objects: dict[str, dict[str, Any]] = {}
    for name in PART_NAMES:
        if name in already_valid and name in DATA_PARTS:
            continue
        if name not in parts:
            raise BundleRejected("part_missing", f"part {name} is missing", doc="manifest")
        objects[name] = validate_part(name, parts[name])
    rules = _load_rules(objects["rules"]["rules"], objects["settings"]["policy"])
    trust, warnings = _load_trust(objects["trust"])
    return ParsedParts(objects, rules, trust, warnings)


# -- building from sources -----------------------------------------------------------------------


def part_bytes(obj: Mapping[str, Any]) -> bytes:
    """How ``bundle build`` writes a part: sorted keys, no spaces, raw UTF-8 (§1.6)."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _json_source(file: str, data: bytes) -> Any:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return loads_strict(data)
    except CanonicalError as exc:
        line = _json_error_line(data)
        raise SourceError(file, f"not valid JSON: {exc}", line=line) from exc


def _json_error_line(data: bytes) -> int | None:
    try:
        json.loads(data.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        return exc.lineno
    return None


def _as_part(name: str, file: str, value: Any) -> dict[str, Any]:
    """A source value as a part object: a plain array for list parts; part/schema added when absent."""
    if isinstance(value, list) and name in _LIST_FIELD:
        value = {_LIST_FIELD[name]: value}
    if not isinstance(value, dict):
        raise SourceError(file, f"expected a JSON object{' or array' if name in _LIST_FIELD else ''}")
    obj = dict(value)
    if obj.setdefault("part", name) != name:
        raise SourceError(file, f"field part is {str(obj['part'])[:40]!r}, expected {name!r}")
    obj.setdefault("schema", 1)
    return obj


def _check_built(name: str, file: str, data: bytes) -> None:
    # The schema check runs once, over all parts, at the end of build_parts.
    if len(data) > PART_CAPS[name]:
        raise SourceError(file, f"the {name} part is {len(data)} bytes, over its cap of {PART_CAPS[name]}")


_CSV_LIST = ("codes", "zones", "flags")
_CSV_NULLABLE = ("team", "colour", "last_test")


def parse_roster_csv(
    data: bytes, *, file: str = "roster.csv", progress: Callable[[int, int], None] | None = None
) -> list[dict[str, Any]]:
    """``roster.csv`` (§1.6) → the ``staff`` array, every row checked.

    Args:
        progress: called with (bytes read, total bytes) every 1000 rows and at the end.

    Raises:
        SourceError: naming the line and column of the first bad row.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(file, f"invalid UTF-8 at byte {exc.start}", line=line) from exc
    total = len(data)
    stream = io.StringIO(text, newline="")
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader)
    except StopIteration as exc:
        raise SourceError(file, "empty file: a header row is needed", line=1) from exc
    except csv.Error as exc:
        raise SourceError(file, f"not CSV: {exc}", line=1) from exc
    header = [h.strip() for h in header]
    missing = [f for f in STAFF_FIELDS if f not in header]
    extra = [h for h in header if h not in STAFF_FIELDS]
    if missing or extra or len(header) != len(set(header)):
        what = (f"missing column {missing[0]}" if missing else f"unknown column {extra[0]!r}" if extra
                else "a column appears twice")
        raise SourceError(file, f"{what}; the header names exactly {', '.join(STAFF_FIELDS)}", line=1)
    adapter = TypeAdapter(_Staff)
    staff: list[dict[str, Any]] = []
    seen_sub: dict[str, int] = {}
    seen_code: dict[str, int] = {}
    line = 1
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SourceError(file, f"not CSV: {exc}", line=reader.line_num) from exc
        line = start
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise SourceError(file, f"{len(row)} values, the header has {len(header)}", line=line)
        rec: dict[str, Any] = {}
        for col, raw in zip(header, row, strict=True):
            value = raw.strip()
            if col in _CSV_LIST:
                rec[col] = [v.strip() for v in value.split(";") if v.strip()] if value else []
            elif col == "closed_loop":
                if value not in ("true", "false"):
                    raise SourceError(file, f"must be true or false, got {value[:20]!r}", line=line, column=col)
                rec[col] = value == "true"
            elif col in _CSV_NULLABLE:
                rec[col] = value or None
            else:
                rec[col] = value
        try:
            adapter.validate_python(rec)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = str(err["loc"][0]) if err["loc"] else None
            raise SourceError(file, err["msg"], line=line, column=where) from exc
        if rec["sub"] in seen_sub:
            raise SourceError(file, f"same sub as line {seen_sub[rec['sub']]}", line=line, column="sub")
        seen_sub[rec["sub"]] = line
        for c in rec["codes"]:
            if c in seen_code:
                raise SourceError(file, f"code hash also on line {seen_code[c]}", line=line, column="codes")
            seen_code[c] = line
        staff.append(rec)
        if progress is not None and len(staff) % 1000 == 0:
            progress(total * stream.tell() // max(1, len(text)), total)
    if progress is not None:
        progress(total, total)
    return staff


def build_parts(
    files: Mapping[str, bytes],
    *,
    base: Mapping[str, bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, bytes]:
    """Source files → part bytes for all eight parts.

    Args:
        files: file name → bytes; names from ``SOURCE_FILES`` (a file may also be an already built
            part: a JSON object whose ``part`` is the matching name).
        base: the parts of the scope's current manifest, used for every part no file gives
            (server flow; ``roster.csv`` alone keeps ``roster_key`` and ``teams`` from the base roster).
        progress: roster.csv progress callback (bytes read, total).

    Raises:
        SourceError: one line naming file, line and field.
    """
    unknown = [f for f in files if f not in SOURCE_FILES]
    if unknown:
        raise SourceError(unknown[0], f"not a source file; expected one of {', '.join(SOURCE_FILES)}")
    out: dict[str, bytes] = {}
    for file, name in SOURCE_FILES.items():
        if file not in files or file == "roster.csv":
            continue
        obj = _as_part(name, file, _json_source(file, files[file]))
        if name == "roster" and "roster.csv" in files:
            continue  # roster.json beside roster.csv: handled below
        data = part_bytes(obj)
        _check_built(name, file, data)
        out[name] = data
    if "roster.csv" in files:
        if "roster.json" in files:
            meta = _as_part("roster", "roster.json", _json_source("roster.json", files["roster.json"]))
        elif base is not None and "roster" in base:
            meta = _as_part("roster", "current roster part", _json_source("current roster part", base["roster"]))
        else:
            raise SourceError("roster.csv", "needs a roster.json beside it for roster_key and teams (bundles.md §1.6)")
        meta["staff"] = parse_roster_csv(files["roster.csv"], progress=progress)
        data = part_bytes(meta)
        _check_built("roster", "roster.csv", data)
        out["roster"] = data
    for name in PART_NAMES:
        if name not in out:
            if base is not None and name in base:
                out[name] = bytes(base[name])
            else:
                src = "roster.json or roster.csv" if name == "roster" else f"{name}.json"
                raise SourceError(src, "missing: every bundle needs all eight parts (bundles.md §1.6)")
    try:
        validate_parts(out)
    except BundleRejected as exc:
        name = exc.detail.split(":", 1)[0]
        file = next((f for f, n in SOURCE_FILES.items() if n == name and f in files), f"{name} part")
        raise SourceError(file, exc.detail.removeprefix(f"{name}: ")) from exc
    return out


def build_parts_from_dir(src: Path | str, *, progress: Callable[[int, int], None] | None = None) -> dict[str, bytes]:
    """``bundle build``'s SRC directory → part bytes (see ``build_parts``)."""
    src = Path(src)
    if not src.is_dir():
        raise SourceError(str(src), "not a directory")
    files: dict[str, bytes] = {}
    for file in SOURCE_FILES:
        path = src / file
        if path.is_file():
            try:
                files[file] = path.read_bytes()
            except OSError as exc:
                raise SourceError(file, f"cannot read: {exc.strerror}") from exc
    return build_parts(files, progress=progress)
