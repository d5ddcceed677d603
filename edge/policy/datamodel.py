"""The evaluation data object (rules.md §2.2): its fields, how it is built, ``derived``.

Every rule sees ``{"payload": …, "external": …}`` with every key of §2.2 present
(``null`` when not applicable), so that an absent key is always a mistake and a
rule error (§3.2). Builders here never raise on odd bundle or claim contents: a
missing field becomes ``null`` and the rules, not the engine, decide what doubt
means. ``compute_derived`` (§2.2.3) is shared by the engine and the rule tests, so
both compute the same numbers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeGuard
from zoneinfo import ZoneInfo

from edge.policy.certlogic import CertLogicError, DateTime, date_time_ms

__all__ = [
    "DATA_SCHEMA",
    "DateTime",
    "check_path",
    "compute_derived",
    "dcc_last_test",
    "external_firm",
    "external_person",
    "external_preregistration",
    "instant_ms",
    "payload_from_claims",
    "payload_from_pair",
    "payload_from_roster",
    "zone_info",
]

# Schema of the data object (rules.md §2.2): a dict names its fields; _LEAF is a
# scalar; _LIST a list of scalars (a digits fragment may index it); _ANY allows any
# path below (payload.dcc, the DCC as signed); _SETTINGS is checked against the
# settings part in force.
_LEAF = "leaf"
_LIST = "list"
_ANY = "any"
_SETTINGS = "settings"

# Every dict built here lists its keys in sorted order, so that the engine can serialise
# the data object for its digest without re-sorting (engine._digest_of_built_data).
_PASS_FIELDS = ("destination", "exp", "firm", "iss", "nbf", "origin", "pass_id", "plate", "revocation_hash", "route", "sub")
DATA_SCHEMA: dict[str, Any] = {
    "payload": {
        **{k: _LEAF for k in ("kind", "source", "revocation_hash", "iss", "iat", "exp", "subject", "firm", "role", "colour", "last_test")},
        "flags": _LIST,
        "pass": {k: _LEAF for k in _PASS_FIELDS},
        "dcc": _ANY,
    },
    "external": {
        "now": _LEAF,
        "clock": {"state": _LEAF, "trusted": _LEAF},
        "mode": _LEAF,
        "gate": {k: _LEAF for k in ("device_id", "venue_id", "zone", "door", "lane", "firm_id", "tz")},
        "person": {
            **{k: _LEAF for k in ("subject", "firm", "role", "team", "closed_loop", "colour", "last_test")},
            "zones": _LIST,
            "flags": _LIST,
            "shift": {"start_min": _LEAF, "end_min": _LEAF},
        },
        "firm": {k: _LEAF for k in ("id", "name", "whitelisted", "meltdown", "meltdown_at", "closed_loop")},
        "preregistration": {
            **{k: _LEAF for k in ("ref", "subject", "host_firm", "valid_from", "valid_until")},
            "zones": _LIST,
        },
        "temperature": {"body_centi_c": _LEAF, "measured_at": _LEAF, "attempt": _LEAF},
        "settings": _SETTINGS,
        "derived": {k: _LEAF for k in ("role", "last_test", "test_age_h", "test_window_h", "local_minute")},
    },
}


def check_path(path: str, policy: Mapping[str, Any]) -> str | None:
    """Why ``path`` does not name a field of rules.md §2.2-2.3, or None when it does.

    Outside a ``reduce`` lambda every path starts with ``payload.`` or ``external.``;
    under ``external.settings.`` it must exist in ``policy``; under ``payload.dcc.``
    anything goes.
    """
    frags = path.split(".")
    if len(frags) < 2 or frags[0] not in ("payload", "external"):
        return "must start with payload. or external."
    node: Any = DATA_SCHEMA
    for i, frag in enumerate(frags):
        if node is _ANY:
            return None
        if node is _SETTINGS:
            return _check_settings_path(frags[i:], policy)
        if node is _LEAF:
            return f"{'.'.join(frags[:i])} has no fields"
        if node is _LIST:
            if not (frag.isascii() and frag.isdigit()) or i != len(frags) - 1:
                return f"{'.'.join(frags[:i])} is a list of strings"
            return None
        if frag not in node:
            return f"no field {'.'.join(frags[: i + 1])}"
        node = node[frag]
    return None


def _check_settings_path(frags: list[str], policy: Mapping[str, Any]) -> str | None:
    cur: Any = policy
    for i, frag in enumerate(frags):
        here = "external.settings." + ".".join(frags[: i + 1])
        if isinstance(cur, Mapping):
            if frag not in cur:
                return f"{here} is not in the settings part"
            cur = cur[frag]
        elif isinstance(cur, list):
            if not (frag.isascii() and frag.isdigit()) or int(frag) >= len(cur):
                return f"{here} is not in the settings part"
            cur = cur[int(frag)]
        else:
            return f"{here} is not in the settings part"
    return None


def _is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


# --------------------------------------------------------------------------- instants

_JSON_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", re.ASCII)


def instant_ms(value: Any) -> int | None:
    """Milliseconds of an instant string (any shape ``plusTime`` accepts), else None."""
    if type(value) is not str:
        return None
    try:
        return date_time_ms(value)
    except CertLogicError:
        return None


def _json_time(value: str, ms: int) -> str:
    """``value`` itself when it is already in the JSON time format, else re-written."""
    if _JSON_TIME_RE.fullmatch(value):
        return value
    return DateTime(ms).isoformat()


@functools.lru_cache(maxsize=64)
def zone_info(tz: str) -> ZoneInfo:
    """IANA zone by name (reads tzdata once per name; never inside ``decide``)."""
    try:
        return ZoneInfo(tz)
    except (ValueError, OSError, KeyError) as exc:
        raise ValueError(f"unknown time zone {tz[:64]!r}") from exc


# --------------------------------------------------------------------------- payload


def _flags(value: Any) -> list[Any]:
    return list(value) if type(value) is list else []


def payload_from_claims(kind: str, claims: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` for a verified CK1 ``health`` or HC1 ``dcc`` credential (rules.md §2.2.1)."""
    if kind == "dcc":
        return {
            "colour": None,
            "dcc": claims.get("dcc"),
            "exp": claims.get("exp"),
            "firm": None,
            "flags": [],
            "iat": claims.get("iat"),
            "iss": claims.get("iss"),
            "kind": "dcc",
            "last_test": dcc_last_test(claims.get("dcc")),
            "pass": None,
            "revocation_hash": claims.get("revocation_hash"),
            "role": None,
            "source": "HC1",
            "subject": None,
        }
    return {
        "colour": claims.get("colour"),
        "dcc": None,
        "exp": claims.get("exp"),
        "firm": claims.get("firm"),
        "flags": _flags(claims.get("flags")),
        "iat": claims.get("iat"),
        "iss": claims.get("iss"),
        "kind": "health",
        "last_test": claims.get("last_test"),
        "pass": None,
        "revocation_hash": claims.get("revocation_hash"),
        "role": claims.get("role"),
        "source": "CK1",
        "subject": claims.get("sub"),
    }


def payload_from_pair(pass_claims: Mapping[str, Any], driver_claims: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` of kind ``pass``: the driver's health code plus ``payload.pass`` (§2.2.1)."""
    payload = payload_from_claims("health", driver_claims)
    payload["kind"] = "pass"
    payload["pass"] = {k: pass_claims.get(k) for k in _PASS_FIELDS}
    return payload


def payload_from_roster(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` of kind ``roster``: an opaque code found in the roster (§2.2.1)."""
    return {
        "colour": entry.get("colour"),
        "dcc": None,
        "exp": None,
        "firm": entry.get("firm"),
        "flags": _flags(entry.get("flags")),
        "iat": None,
        "iss": None,
        "kind": "roster",
        "last_test": entry.get("last_test"),
        "pass": None,
        "revocation_hash": None,
        "role": entry.get("role"),
        "source": "roster",
        "subject": entry.get("sub"),
    }


_NAAT = "LP6464-4"
_NOT_DETECTED = "260415000"


def dcc_last_test(dcc: Any) -> str | None:
    """``t[0].sc`` of a negative NAAT test DCC in the JSON time format, else None (§2.2.1)."""
    if not isinstance(dcc, Mapping):
        return None
    tests = dcc.get("t")
    if type(tests) is not list or not tests or not isinstance(tests[0], Mapping):
        return None
    t0 = tests[0]
    if t0.get("tt") != _NAAT or t0.get("tr") != _NOT_DETECTED:
        return None
    ms = instant_ms(t0.get("sc"))
    return None if ms is None else DateTime(ms).isoformat()


# --------------------------------------------------------------------------- external


def external_person(entry: Mapping[str, Any], team_row: Mapping[str, Any] | None) -> dict[str, Any]:
    """``external.person`` from a roster ``staff`` entry; ``name`` and ``codes`` stay out (§2.2.2)."""
    role = entry.get("role")
    shift = None
    if team_row is not None:
        shift = {"end_min": team_row.get("end_min"), "start_min": team_row.get("start_min")}
    return {
        "closed_loop": entry.get("closed_loop") is True or role == "closed_loop",
        "colour": entry.get("colour"),
        "firm": entry.get("firm"),
        "flags": _flags(entry.get("flags")),
        "last_test": entry.get("last_test"),
        "role": role,
        "shift": shift,
        "subject": entry.get("sub"),
        "team": entry.get("team"),
        "zones": entry.get("zones"),
    }


_FIRM_FIELDS = ("closed_loop", "id", "meltdown", "meltdown_at", "name", "whitelisted")


def external_firm(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in _FIRM_FIELDS}


def external_preregistration(visitors: Sequence[Mapping[str, Any]], now_ms: int) -> dict[str, Any] | None:
    """The visitor entry whose window contains ``now``, else the one starting nearest to ``now``.

    rules.md §2.2.2; ties keep list order. ``name`` stays out, ``sub`` becomes ``subject``.
    """
    best: Mapping[str, Any] | None = None
    best_gap: int | None = None
    for v in visitors:
        start = instant_ms(v.get("valid_from"))
        end = instant_ms(v.get("valid_until"))
        if start is not None and end is not None and start <= now_ms <= end:
            best = v
            break
        gap = abs(start - now_ms) if start is not None else None
        if gap is not None and (best_gap is None or gap < best_gap):
            best, best_gap = v, gap
        elif best is None and best_gap is None:
            best = v
    if best is None:
        return None
    return {
        "host_firm": best.get("host_firm"),
        "ref": best.get("ref"),
        "subject": best.get("sub"),
        "valid_from": best.get("valid_from"),
        "valid_until": best.get("valid_until"),
        "zones": best.get("zones"),
    }


# --------------------------------------------------------------------------- derived


def compute_derived(
    payload: Any,
    external: Any,
    *,
    now_ms: int | None = None,
    tzinfo: ZoneInfo | None = None,
) -> dict[str, Any]:
    """``external.derived`` (rules.md §2.2.3) from the other fields of the data object.

    ``now_ms``/``tzinfo`` may be passed pre-computed (the engine); otherwise they are
    read from ``external.now`` and ``external.gate.tz`` (rule tests). Total: a field
    that cannot be computed is null, and the rules that need it refer.
    """
    pl = payload if _is_map(payload) else {}
    ext = external if _is_map(external) else {}
    person = ext.get("person")
    person = person if _is_map(person) else None
    if person is not None:
        role = person.get("role")
    else:
        role = pl.get("role")
        if role is None:
            role = "visitor"
    if now_ms is None:
        now_ms = instant_ms(ext.get("now"))

    last_test: str | None = None
    last_ms: int | None = None
    for candidate in (pl.get("last_test"), person.get("last_test") if person is not None else None):
        ms = instant_ms(candidate)
        if ms is not None and (last_ms is None or ms > last_ms):
            last_ms, last_test = ms, candidate
    if last_test is not None and last_ms is not None:
        last_test = _json_time(last_test, last_ms)

    test_age_h = None
    if last_ms is not None and now_ms is not None:
        test_age_h = 0  # a test time after now counts as 0 h
        if now_ms > last_ms:
            q, r = divmod(now_ms - last_ms, 3_600_000)  # exact integer ceiling, no float rounding
            test_age_h = q + (1 if r else 0)

    window = None
    settings = ext.get("settings")
    if _is_map(settings):
        table = settings.get("test_window_h")
        mode = ext.get("mode")
        per_mode = table.get(mode) if _is_map(table) and type(mode) is str else None
        key = "closed_loop" if person is not None and person.get("closed_loop") is True else role
        if _is_map(per_mode) and type(key) is str:
            w = per_mode.get(key)
            window = w if type(w) is int else None

    local_minute = None
    if now_ms is not None:
        if tzinfo is None:
            gate = ext.get("gate")
            tz = gate.get("tz") if _is_map(gate) else None
            if type(tz) is str:
                try:
                    tzinfo = zone_info(tz)
                except ValueError:
                    tzinfo = None
        if tzinfo is not None:
            local = datetime.fromtimestamp(now_ms // 1000, tzinfo)
            local_minute = local.hour * 60 + local.minute

    return {
        "last_test": last_test,
        "local_minute": local_minute,
        "role": role,
        "test_age_h": test_age_h,
        "test_window_h": window,
    }
