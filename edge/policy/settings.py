"""Load-time checks of the settings part (rules.md §2.3, bundles.md §1.6).

``check_policy`` is the one definition of a valid ``policy`` object: every key of
rules.md §2.3 present with its type, windows integers 1-720, unknown keys allowed
(new rules may read them). Some bounds go beyond "its type" on purpose, because a
typo there silently changes every decision; each says why next to it.
``check_settings`` adds the ``freshness`` and ``clock`` sections of bundles.md §1.6.
Errors are ``RuleSetError`` whose message names the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edge.policy.errors import RuleSetError

__all__ = ["POLICY_KEYS", "check_policy", "check_settings"]

_ROLE_RE = re.compile(r"[a-z_]{1,16}", re.ASCII)
_REASON_CODE_RE = re.compile(r"[a-z_]{1,32}", re.ASCII)
WINDOW_MIN_H, WINDOW_MAX_H = 1, 720

POLICY_KEYS = (
    "test_window_h",
    "protected_window_h",
    "green_lane_window_h",
    "fever_centi_c",
    "temperature_required",
    "require_trusted_clock",
    "shift_zones",
    "shift_grace_min",
    "observation_point",
    "register_hint",
    "temperature_max_age_s",
    "remeasure_wait_s",
    "pair_window_s",
    "override_reasons",
)


def _fail(key: str, message: str) -> RuleSetError:
    return RuleSetError(f"settings policy.{key}: {message}")


def _int(policy: Mapping[str, Any], key: str, lo: int, hi: int, why: str = "") -> None:
    v = policy[key]
    if type(v) is not int:
        raise _fail(key, f"must be an integer, not {type(v).__name__}")
    if not lo <= v <= hi:
        raise _fail(key, f"must be {lo}-{hi}{why}, not {v}")


def _bool(policy: Mapping[str, Any], key: str) -> None:
    if type(policy[key]) is not bool:
        raise _fail(key, "must be true or false")


def _text(policy: Mapping[str, Any], key: str) -> None:
    v = policy[key]
    if not isinstance(v, Mapping) or set(v) != {"zh", "en"}:
        raise _fail(key, 'must be an object {"zh": …, "en": …}')
    for lang in ("zh", "en"):
        if type(v[lang]) is not str or not 1 <= len(v[lang]) <= 200:
            raise _fail(f"{key}.{lang}", "must be a string of 1-200 characters")


def _windows(path: str, table: Any) -> None:
    if not isinstance(table, Mapping):
        raise _fail(path, "must be an object role -> hours")
    for role, hours in table.items():
        if type(role) is not str or not _ROLE_RE.fullmatch(role):
            raise _fail(path, f"role {str(role)[:20]!r} must match [a-z_]{{1,16}}")
        if type(hours) is not int or not WINDOW_MIN_H <= hours <= WINDOW_MAX_H:
            # rules.md §4.3 role-window: a window of 0 must never exist, it tests truthiness
            raise _fail(f"{path}.{role}", f"must be an integer {WINDOW_MIN_H}-{WINDOW_MAX_H}")


def check_policy(policy: Any) -> None:
    """Raise ``RuleSetError`` unless ``policy`` is a valid ``policy`` object (rules.md §2.3)."""
    if not isinstance(policy, Mapping):
        raise RuleSetError("settings policy: must be an object")
    for key in POLICY_KEYS:
        if key not in policy:
            raise _fail(key, "missing")
    table = policy["test_window_h"]
    if not isinstance(table, Mapping):
        raise _fail("test_window_h", "must be an object mode -> (role -> hours)")
    for mode in ("normal", "emergency"):
        if mode not in table:
            raise _fail(f"test_window_h.{mode}", "missing")
    for mode, windows in table.items():
        _windows(f"test_window_h.{mode}", windows)
    _int(policy, "protected_window_h", WINDOW_MIN_H, WINDOW_MAX_H)
    _int(policy, "green_lane_window_h", WINDOW_MIN_H, WINDOW_MAX_H)
    # A threshold outside 35.00-42.00 °C is a unit mistake (3.73 or 373), not a policy:
    # it would deny everyone or no one.
    _int(policy, "fever_centi_c", 3500, 4200, " (hundredths of a degree, 35.00-42.00 °C)")
    _bool(policy, "temperature_required")
    _bool(policy, "require_trusted_clock")
    zones = policy["shift_zones"]
    if type(zones) is not list or any(type(z) is not str or not 1 <= len(z) <= 32 for z in zones):
        raise _fail("shift_zones", "must be a list of zone ids (strings of 1-32 characters)")
    _int(policy, "shift_grace_min", 0, 720)
    _text(policy, "observation_point")
    _text(policy, "register_hint")
    _int(policy, "temperature_max_age_s", 1, 600)
    _int(policy, "remeasure_wait_s", 1, 600)
    _int(policy, "pair_window_s", 1, 3600)
    reasons = policy["override_reasons"]
    if type(reasons) is not list or not reasons:
        raise _fail("override_reasons", "must be a non-empty list of {code, zh, en}")
    seen: set[str] = set()
    for i, r in enumerate(reasons):
        if not isinstance(r, Mapping) or set(r) != {"code", "zh", "en"}:
            raise _fail(f"override_reasons.{i}", "must be an object {code, zh, en}")
        code = r["code"]
        if type(code) is not str or not _REASON_CODE_RE.fullmatch(code):
            raise _fail(f"override_reasons.{i}.code", "must match [a-z_]{1,32}")
        if code in seen:
            raise _fail(f"override_reasons.{i}.code", f"duplicate code {code}")
        seen.add(code)
        for lang in ("zh", "en"):
            if type(r[lang]) is not str or not 1 <= len(r[lang]) <= 200:
                raise _fail(f"override_reasons.{i}.{lang}", "must be a string of 1-200 characters")


def _section_int(section: str, obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = obj.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise RuleSetError(f"settings {section}.{key}: must be an integer {lo}-{hi}")
    return v


def check_settings(settings: Any) -> None:
    """Check a whole settings part: ``freshness``, ``clock`` (bundles.md §1.6) and ``policy``.

    ``part``/``schema`` and the ``console`` section (console.md §3) are not checked here.
    """
    if not isinstance(settings, Mapping):
        raise RuleSetError("settings: must be an object")
    for section in ("freshness", "clock", "policy"):
        if not isinstance(settings.get(section), Mapping):
            raise RuleSetError(f"settings {section}: missing or not an object")
    fresh = settings["freshness"]
    year_s = 366 * 86400
    stale = _section_int("freshness", fresh, "stale_after_s", 60, year_s)
    expires = _section_int("freshness", fresh, "expires_after_s", 60, year_s)
    _section_int("freshness", fresh, "resign_after_s", 60, year_s)
    if expires <= stale:
        raise RuleSetError("settings freshness.expires_after_s: must be greater than stale_after_s")
    _section_int("clock", settings["clock"], "skew_warn_s", 1, 86400)
    _section_int("clock", settings["clock"], "max_unconfirmed_lead_s", 1, year_s)
    check_policy(settings["policy"])
