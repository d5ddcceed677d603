"""What the policy reads from the bundle in force (bundles.md §1.6, rules.md §2.2.2).

``BundleView`` is the one interface between the engine and a bundle: the gate's
SQLite-backed bundle file (``edge.bundles``) and ``InMemoryBundle`` (tests, tools,
the demo, ``rules test``) both implement it. Lookups return the part entries as
stored (bundles.md §1.6 field names, ``sub`` not yet renamed); the engine maps them
into the data object (rules.md §2.2.2) and never mutates them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edge.policy.errors import BundleDataError

if TYPE_CHECKING:
    from edge.policy.engine import RuleSet

__all__ = ["PART_NAMES", "BundleView", "InMemoryBundle"]

PART_NAMES = ("rules", "settings", "trust", "roster", "firms", "preregistrations", "revocations", "mode")
_HEX32 = re.compile(r"[0-9a-f]{32}", re.ASCII)
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


@runtime_checkable
class BundleView(Protocol):
    """The bundle in force, as the policy sees it."""

    @property
    def version(self) -> int: ...

    @property
    def rules_digest(self) -> str:
        """``sha256`` of the ``rules`` part in the manifest (bundles.md §1.4)."""
        ...

    @property
    def settings_digest(self) -> str:
        """``sha256`` of the ``settings`` part in the manifest."""
        ...

    @property
    def rules(self) -> RuleSet: ...

    @property
    def settings(self) -> dict[str, Any]:
        """The whole settings part (``freshness``, ``clock``, ``policy``, optional ``console``)."""
        ...

    @property
    def policy(self) -> dict[str, Any]:
        """``settings.policy`` (rules.md §2.3): ``external.settings`` of every decision."""
        ...

    @property
    def mode(self) -> dict[str, Any]:
        """The mode part's fields: ``mode``, ``since``, ``reason``, ``set_by``."""
        ...

    @property
    def roster_key(self) -> bytes | None: ...

    @property
    def trust(self) -> Any:
        """An ``edge.credentials.Trust`` (the ``trust`` part)."""
        ...

    def person_by_sub(self, sub: str) -> dict[str, Any] | None: ...

    def person_by_code(self, code_hash: str) -> dict[str, Any] | None: ...

    def team(self, firm: str, team: str) -> dict[str, Any] | None: ...

    def firm(self, firm_id: str) -> dict[str, Any] | None: ...

    def visitors(self, sub: str, host_firm: str) -> list[dict[str, Any]]: ...

    def is_revoked(self, revocation_hash: str) -> bool: ...


def _part(parts: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    part = parts.get(name)
    if part is None:
        return None
    if not isinstance(part, Mapping):
        raise BundleDataError(f"part {name}: must be an object")
    return part


def _entries(part: Mapping[str, Any] | None, name: str, field: str) -> list[dict[str, Any]]:
    if part is None:
        return []
    entries = part.get(field, [])
    if type(entries) is not list:
        raise BundleDataError(f"part {name}: {field} must be an array")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise BundleDataError(f"part {name}: {field}[{i}] must be an object")
    return entries


def _str_field(name: str, field: str, i: int, entry: Mapping[str, Any], key: str, *, pattern: re.Pattern[str] | None = None) -> str:
    v = entry.get(key)
    if type(v) is not str or (pattern is not None and not pattern.fullmatch(v)) or not v:
        raise BundleDataError(f"part {name}: {field}[{i}].{key} is missing or malformed")
    return v


class InMemoryBundle:
    """A ``BundleView`` over parsed bundle parts held in memory.

    Build it with ``from_parts``; lookups are dictionary reads, so it also serves the
    benchmark. The parts are not copied: do not change them afterwards.
    """

    def __init__(
        self,
        *,
        version: int,
        rules_digest: str,
        settings_digest: str,
        rules: RuleSet,
        settings: dict[str, Any],
        mode: dict[str, Any],
        roster_key: bytes | None,
        trust: Any,
        staff: Iterable[dict[str, Any]] = (),
        teams: Iterable[dict[str, Any]] = (),
        firms: Iterable[dict[str, Any]] = (),
        visitors: Iterable[dict[str, Any]] = (),
        revoked: Iterable[str] = (),
    ) -> None:
        self._version = version
        self._rules_digest = rules_digest
        self._settings_digest = settings_digest
        self._rules = rules
        self._settings = settings
        self._mode = mode
        self._roster_key = roster_key
        self._trust = trust
        self._by_sub: dict[str, dict[str, Any]] = {}
        self._by_code: dict[str, dict[str, Any]] = {}
        for entry in staff:
            sub = entry.get("sub")
            if type(sub) is str:
                self._by_sub.setdefault(sub, entry)
            codes = entry.get("codes")
            for code in codes if type(codes) is list else ():
                if type(code) is str:
                    self._by_code.setdefault(code, entry)
        self._teams = {(t.get("firm"), t.get("team")): t for t in teams}
        self._firms: dict[str, dict[str, Any]] = {}
        for f in firms:
            if type(f.get("id")) is str:
                self._firms.setdefault(f["id"], f)
        self._visitors: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for v in visitors:
            self._visitors.setdefault((v.get("sub"), v.get("host_firm")), []).append(v)  # type: ignore[arg-type]
        self._revoked = frozenset(revoked)

    @classmethod
    def from_parts(
        cls,
        parts: Mapping[str, Any],
        *,
        version: int = 1,
        rules_digest: str = "",
        settings_digest: str = "",
    ) -> InMemoryBundle:
        """Build from parsed parts keyed by part name (bundles.md §1.6).

        ``rules`` and ``settings`` are required (``rules`` may also be the bare array of
        ``config/rules/rules.json``); a missing ``roster``, ``firms``,
        ``preregistrations`` or ``revocations`` part counts as empty, a missing ``mode``
        as normal, a missing ``trust`` as no trusted keys.

        Raises:
            RuleSetError: the rules or the policy settings fail a load-time check.
            BundleDataError: another part is malformed.
        """
        from edge.policy.engine import RuleSet
        from edge.policy.errors import RuleSetError
        from edge.policy.settings import check_settings

        if not isinstance(parts, Mapping):
            raise BundleDataError("parts must be an object keyed by part name")
        rules_part = parts.get("rules")
        if isinstance(rules_part, Mapping):
            rules_list = rules_part.get("rules")
        else:
            rules_list = rules_part
        if type(rules_list) is not list:
            raise RuleSetError("part rules: missing, or its rules is not an array")
        settings = parts.get("settings")
        if not isinstance(settings, dict):
            raise RuleSetError("part settings: missing or not an object")
        check_settings(settings)
        ruleset = RuleSet.from_parts(rules_list, settings["policy"])

        mode = _part(parts, "mode")
        mode_d: dict[str, Any] = dict(mode) if mode is not None else {"mode": "normal"}
        if mode_d.get("mode") not in ("normal", "emergency"):
            raise BundleDataError("part mode: mode must be normal or emergency")

        roster = _part(parts, "roster")
        roster_key = None
        if roster is not None and roster.get("roster_key") is not None:
            rk = roster.get("roster_key")
            if type(rk) is not str or not _HEX64.fullmatch(rk):
                raise BundleDataError("part roster: roster_key must be 64 lowercase hex characters")
            roster_key = bytes.fromhex(rk)
        staff = _entries(roster, "roster", "staff")
        for i, e in enumerate(staff):
            _str_field("roster", "staff", i, e, "sub", pattern=_HEX32)
        teams = _entries(roster, "roster", "teams")
        firms = _entries(_part(parts, "firms"), "firms", "firms")
        for i, f in enumerate(firms):
            _str_field("firms", "firms", i, f, "id")
        visitors = _entries(_part(parts, "preregistrations"), "preregistrations", "visitors")
        for i, v in enumerate(visitors):
            _str_field("preregistrations", "visitors", i, v, "sub", pattern=_HEX32)
        entries = _entries(_part(parts, "revocations"), "revocations", "entries")
        revoked = [_str_field("revocations", "entries", i, e, "hash", pattern=_HEX32) for i, e in enumerate(entries)]

        return cls(
            version=version,
            rules_digest=rules_digest,
            settings_digest=settings_digest,
            rules=ruleset,
            settings=settings,
            mode=mode_d,
            roster_key=roster_key,
            trust=_load_trust(parts.get("trust")),
            staff=staff,
            teams=teams,
            firms=firms,
            visitors=visitors,
            revoked=revoked,
        )

    # -- BundleView -------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def rules_digest(self) -> str:
        return self._rules_digest

    @property
    def settings_digest(self) -> str:
        return self._settings_digest

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    @property
    def policy(self) -> dict[str, Any]:
        return self._settings["policy"]  # type: ignore[no-any-return]

    @property
    def mode(self) -> dict[str, Any]:
        return self._mode

    @property
    def roster_key(self) -> bytes | None:
        return self._roster_key

    @property
    def trust(self) -> Any:
        return self._trust

    def person_by_sub(self, sub: str) -> dict[str, Any] | None:
        return self._by_sub.get(sub)

    def person_by_code(self, code_hash: str) -> dict[str, Any] | None:
        return self._by_code.get(code_hash)

    def team(self, firm: str, team: str) -> dict[str, Any] | None:
        return self._teams.get((firm, team))

    def firm(self, firm_id: str) -> dict[str, Any] | None:
        return self._firms.get(firm_id)

    def visitors(self, sub: str, host_firm: str) -> list[dict[str, Any]]:
        return self._visitors.get((sub, host_firm), [])

    def is_revoked(self, revocation_hash: str) -> bool:
        return revocation_hash in self._revoked


def _load_trust(part: Any) -> Any:
    """The ``trust`` part as an ``edge.credentials.Trust`` when that module is installed."""
    try:
        from edge.credentials import load_trust
    except ImportError:
        return part if part is not None else {"keys": []}
    if part is None:
        part = {"keys": []}
    try:
        return load_trust(part)
    except Exception as exc:  # the credentials package maps its own errors; name the part
        raise BundleDataError(f"part trust: {exc}") from exc
