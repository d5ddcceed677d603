"""Event payloads a decision produces (sync.md §1.4-1.5, rules.md §3.5).

``decision_payload`` builds the ``decision`` event; ``alert_payloads`` the
``temp_alert`` (``fever`` failed) and ``sentinel_alert`` (``sentinel`` or
``nat-window`` failed) that go with it. Rules these payloads keep:

1. masked personal data only: ``pid`` (keyed hash, sync.md §1.4) instead of any
   id, a masked name, never a DCC name or birth date in clear;
2. a person is named only on authentic claims: when the signature did not verify
   (forged, unknown issuer, unreadable) the subject is all null, so a forged code
   can never place someone at a gate in a trace query;
3. the decision's ``alert`` leaves out what a ``temp_alert`` or ``sentinel_alert``
   reports (rules.md §3.5); a rule error adds ``upstream``;
4. every payload passes ``sync.canonical.check_profile`` (no floats, short strings).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from edge.policy.engine import Decision, DecisionInputs, reason_list
from sync.events import pid as make_pid

__all__ = [
    "FLAGS",
    "alert_events",
    "alert_payloads",
    "credential_object",
    "decision_payload",
    "guard_reasons",
    "subject_object",
    "venue_object",
]

# credentials.md §2.3: the one flag vocabulary, in bit order
FLAGS = (
    "positive",
    "close_contact",
    "secondary_contact",
    "risk_area_travel",
    "itinerary_star",
    "medicine_purchase",
    "unreported_arrival",
)
_COLOURS = ("green", "yellow", "red")
_ALERT_RANK = {"none": 0, "upstream": 1, "urgent": 2}
_ALERTS = ("none", "upstream", "urgent")
_REPORTED_ELSEWHERE = frozenset({"fever", "sentinel", "nat-window"})
_STATUS_OF_CHECK = {
    "signature": "bad_signature",
    "kid": "unknown_kid",
    "not_expired": "expired",
    "valid_from": "not_yet_valid",
}
_CHECK_ORDER = ("prefix", "base45", "zlib", "cose", "cwt", "kid", "signature", "schema", "not_expired", "valid_from")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2}){1,64}", re.ASCII)


def guard_reasons(decision: Decision) -> list[dict[str, str]]:
    """The guard-facing reasons with their ids: ``[{"id", "zh", "en"}, …]`` (rules.md §3.4)."""
    return reason_list(decision)


def _cut(value: Any, n: int) -> str | None:
    return value[:n] if type(value) is str else None


def venue_object(inputs: DecisionInputs) -> dict[str, Any]:
    g = inputs.gate
    return {"venue_id": _cut(g.venue_id, 32) or "", "zone": _cut(g.zone, 32) or "", "door": _cut(g.door, 32)}


def _claims(cred: Any) -> Mapping[str, Any] | None:
    claims = getattr(cred, "claims", None)
    return claims if isinstance(claims, Mapping) else None


def _kind(cred: Any) -> str | None:
    kind = getattr(cred, "kind", None)
    return kind if type(kind) is str else None


def _status(cred: Any) -> str:
    """``credential.status`` of sync.md §1.5 from the first check that is not true."""
    status = getattr(cred, "status", None)
    if type(status) is str:
        return status
    checks = getattr(cred, "checks", None)
    if not isinstance(checks, Mapping):
        return "unreadable"
    for name in _CHECK_ORDER:
        if checks.get(name) is not True:
            return _STATUS_OF_CHECK.get(name, "unreadable") if checks.get(name) is False else "unreadable"
    return "valid"


def _authentic(cred: Any) -> bool:
    checks = getattr(cred, "checks", None)
    return isinstance(checks, Mapping) and checks.get("signature") is True and _claims(cred) is not None


def _creds(inputs: DecisionInputs) -> list[Any]:
    return [c for c in (inputs.credential, inputs.partner) if c is not None]


def _split_pair(inputs: DecisionInputs) -> tuple[Any, Any]:
    """(pass verification or None, the person's verification or None)."""
    pass_v = person_v = None
    for c in _creds(inputs):
        if _kind(c) == "pass" and pass_v is None:
            pass_v = c
        elif person_v is None:
            person_v = c
    return pass_v, person_v


def credential_object(decision: Decision, inputs: DecisionInputs) -> dict[str, Any]:
    """``credential`` of the decision event: kind, status, optional issuer kid."""
    revoked = "pre-revoked" in decision.reason_ids
    creds = _creds(inputs)
    if not creds:
        if inputs.opaque or inputs.opaque_code_hash is not None:
            found = decision.kind == "roster"
            return {"kind": "roster" if found else "opaque", "status": "valid" if found else "not_found"}
        return {"kind": "none", "status": "none"}
    pass_v, person_v = _split_pair(inputs)
    main = pass_v if pass_v is not None else person_v
    kind = "pass" if pass_v is not None else _kind(person_v)
    if kind not in ("health", "pass", "venue", "dcc"):
        kind = "opaque"  # unreadable: the kind could not be read
    status = _status(main)
    if status == "valid" and pass_v is not None and person_v is not None:
        status = _status(person_v)
    if revoked:
        status = "revoked"
    out: dict[str, Any] = {"kind": kind, "status": status}
    kid = getattr(main, "kid", None)
    if kid is None:
        claims = _claims(main)
        kid = claims.get("kid") if claims is not None else None
    if type(kid) is str and _HEX_RE.fullmatch(kid):
        out["kid"] = kid
    return out


def _dcc_identity(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the DCC pid id ``fnt/gnt/dob``, the masked name) of credentials.md §7.1-7.3."""
    dcc = claims.get("dcc")
    if not isinstance(dcc, Mapping):
        return None, None
    raw_nam = dcc.get("nam")
    nam: Mapping[str, Any] = raw_nam if isinstance(raw_nam, Mapping) else {}
    fnt, gnt, dob = nam.get("fnt"), nam.get("gnt"), dcc.get("dob")
    ident = None
    if type(fnt) is str and type(dob) is str:
        ident = f"{fnt}/{gnt if type(gnt) is str else ''}/{dob}"
    names = [n for n in (nam.get("fn"), nam.get("gn")) if type(n) is str and n]
    if not names:
        names = [n for n in (fnt, gnt) if type(n) is str and n]
    return ident, _mask(" ".join(names)) if names else None


def _mask(name: str) -> str:
    try:
        from edge.credentials import mask_name
    except ImportError:  # without the credentials package reveal nothing
        return "*" * min(len(name), 8)
    return mask_name(name)[:32]


def _masked_name(value: Any) -> str | None:
    if type(value) is not str or not value:
        return None
    return value[:32] if "*" in value else _mask(value)  # CK1 and roster names arrive masked


def subject_object(
    decision: Decision, inputs: DecisionInputs, *, pid_key: bytes | None, pid_kid: int = 1
) -> dict[str, Any]:
    """``subject`` (sync.md §1.4): pid, masked name, role, firm, whitelist status."""
    facts = decision.facts
    bundle = inputs.bundle
    sub = dcc_id = name_m = role = firm_id = None
    whitelisted = None
    _pass_v, person_v = _split_pair(inputs)
    pass_v = _pass_v
    if decision.kind == "roster" or (not _creds(inputs) and inputs.opaque_code_hash is not None):
        entry = bundle.person_by_code(inputs.opaque_code_hash) if bundle is not None and inputs.opaque_code_hash else None
        if entry is not None:
            sub, name_m = entry.get("sub"), _masked_name(entry.get("name"))
            role, firm_id = entry.get("role"), entry.get("firm")
    elif person_v is not None and _authentic(person_v):
        claims = _claims(person_v)
        assert claims is not None
        if _kind(person_v) == "dcc":
            dcc_id, name_m = _dcc_identity(claims)
        else:
            sub, name_m = claims.get("sub"), _masked_name(claims.get("name"))
            role, firm_id = claims.get("role"), claims.get("firm")
    elif pass_v is not None and _authentic(pass_v):
        sub = _claims(pass_v).get("sub")  # type: ignore[union-attr]  # the driver named by the pass
    if facts is not None:
        role, firm_id, whitelisted = facts.role, facts.firm_id, facts.whitelisted
    elif type(firm_id) is str and bundle is not None:
        firm = bundle.firm(firm_id)
        wl = firm.get("whitelisted") if firm is not None else None
        whitelisted = wl if type(wl) is bool else None
    pid = None
    if pid_key:
        if type(sub) is str:
            pid = make_pid(pid_key, "SUB", sub)
        elif dcc_id is not None:
            pid = make_pid(pid_key, "DCC", dcc_id)
    return {
        "pid": pid,
        "pid_kid": pid_kid if pid is not None else None,
        "name_m": name_m,
        "role": _cut(role, 16),
        "firm_id": _cut(firm_id, 32),
        "whitelisted": whitelisted,
    }


def _health_object(decision: Decision, inputs: DecisionInputs) -> dict[str, Any]:
    facts = decision.facts
    if facts is not None:
        colour, flags, age = facts.colour, list(facts.flags), facts.test_age_min
    else:
        colour, flags, age = None, [], None
        _pass_v, person_v = _split_pair(inputs)
        if person_v is not None and _authentic(person_v):
            claims = _claims(person_v)
            assert claims is not None
            colour = claims.get("colour")
            raw = claims.get("flags")
            flags = list(raw) if type(raw) is list else []
    return {
        "code": colour if colour in _COLOURS else "unknown",
        "test_age_min": age if type(age) is int else None,
        "flags": [f for f in FLAGS if f in flags],
    }


def _temp_object(decision: Decision, inputs: DecisionInputs) -> dict[str, Any]:
    t = inputs.temperature
    facts = decision.facts
    if t is not None and (facts is None or facts.body_centi_c is not None):
        return {"body_centi_c": t.body_centi_c, "status": "ok"}
    status = inputs.thermometer_status if inputs.thermometer_status in ("stale", "fault") else "absent"
    return {"body_centi_c": None, "status": status}


def _pass_object(decision: Decision, inputs: DecisionInputs) -> dict[str, Any]:
    pass_v, _person_v = _split_pair(inputs)
    if pass_v is None:
        return {"pass_id": None, "plate": None, "status": "none"}
    claims = _claims(pass_v) or {}
    status = _status(pass_v)
    rh = claims.get("revocation_hash")
    if "pre-revoked" in decision.reason_ids and inputs.bundle is not None and type(rh) is str and inputs.bundle.is_revoked(rh):
        status = "revoked"
    authentic = _authentic(pass_v)
    return {
        "pass_id": _cut(claims.get("pass_id"), 32) if authentic else None,
        "plate": _cut(claims.get("plate"), 16) if authentic else None,
        "status": status,
    }


def _event_alert(decision: Decision, inputs: DecisionInputs) -> str:
    """The highest alert no ``temp_alert``/``sentinel_alert`` reports (rules.md §3.5)."""
    if decision.stage != 1:
        return decision.alert
    rules = inputs.bundle.rules if inputs.bundle is not None else None
    rank = 0
    for f in decision.failures:
        if f.outcome == "error":
            rank = max(rank, 1)
            continue
        if f.rule in _REPORTED_ELSEWHERE:
            continue
        rule = rules.get(f.rule) if rules is not None else None
        rank = max(rank, _ALERT_RANK.get(rule.alert, 0) if rule is not None else 1)
    return _ALERTS[rank]


def _mode(decision: Decision, inputs: DecisionInputs) -> str:
    mode: Any
    if decision.facts is not None:
        mode = decision.facts.mode
    elif inputs.bundle is not None:
        mode = inputs.bundle.mode.get("mode")
    else:
        mode = "normal"
    return str(mode) if mode in ("normal", "emergency") else "normal"


def decision_payload(
    decision: Decision, inputs: DecisionInputs, *, pid_key: bytes | None, pid_kid: int = 1
) -> dict[str, Any]:
    """The ``decision`` event payload (sync.md §1.5) for ``decision`` made from ``inputs``.

    Args:
        pid_key: the fleet's ``pid_key`` from enrollment (sync.md §2.3); None: pids are null.
        pid_kid: which ``pid_key`` (v1: 1).
    """
    bundle = inputs.bundle
    if bundle is None or inputs.freshness == "none":
        bundle_obj = {"version": 0, "state": "expired"}
    else:
        bundle_obj = {"version": int(bundle.version), "state": inputs.freshness}
    payload: dict[str, Any] = {
        "venue": venue_object(inputs),
        "lane": inputs.lane,
        "mode": _mode(decision, inputs),
        "bundle": bundle_obj,
        "outcome": decision.outcome.lower(),
        "alert": _event_alert(decision, inputs),
        "credential": credential_object(decision, inputs),
        "subject": subject_object(decision, inputs, pid_key=pid_key, pid_kid=pid_kid),
        "health": _health_object(decision, inputs),
        "temp": _temp_object(decision, inputs),
        "reasons": list(decision.reason_ids),
    }
    if inputs.lane == "green_lane":
        payload["pass"] = _pass_object(decision, inputs)
    return payload


def _failed(decision: Decision) -> set[str]:
    return {f.rule for f in decision.failures if f.outcome in ("deny", "refer")} if decision.stage == 1 else set()


def alert_events(
    decision: Decision,
    payload: Mapping[str, Any],
    *,
    decision_seq: int | None,
    policy: Mapping[str, Any],
) -> list[tuple[str, dict[str, Any]]]:
    """``temp_alert`` / ``sentinel_alert`` payloads for a decision whose event payload is built.

    The subject and venue are those of the ``decision`` payload; ``policy`` is the
    bundle's ``settings.policy`` (threshold and observation point).
    """
    failed = _failed(decision)
    out: list[tuple[str, dict[str, Any]]] = []
    subject = dict(payload.get("subject") or {}) or None
    venue = dict(payload.get("venue") or {})
    if "fever" in failed:
        threshold = policy.get("fever_centi_c")
        op = policy.get("observation_point")
        observation = (
            {"zh": op["zh"][:200], "en": op["en"][:200]}
            if isinstance(op, Mapping) and type(op.get("zh")) is str and type(op.get("en")) is str
            else None
        )
        temp = payload.get("temp") or {}
        out.append(
            (
                "temp_alert",
                {
                    "cause": "fever",
                    "decision_seq": decision_seq,
                    "body_centi_c": temp.get("body_centi_c"),
                    "threshold_centi_c": threshold if type(threshold) is int else 0,
                    "subject": subject,
                    "venue": venue,
                    "observation_point": observation,
                },
            )
        )
    if failed & {"sentinel", "nat-window"}:
        flags: list[str] = []
        if "nat-window" in failed:
            flags.append("test_overdue")
        if "sentinel" in failed:
            seen: Sequence[str] = decision.facts.flags if decision.facts is not None else ()
            flags += [f for f in ("unreported_arrival", "medicine_purchase") if f in seen]
        out.append(("sentinel_alert", {"decision_seq": decision_seq, "flags": flags, "subject": subject, "venue": venue}))
    return out


def alert_payloads(
    decision: Decision,
    inputs: DecisionInputs,
    decision_seq: int | None,
    *,
    pid_key: bytes | None,
    pid_kid: int = 1,
) -> list[tuple[str, dict[str, Any]]]:
    """``[(kind, payload), …]`` of the alert events that go with ``decision`` (rules.md §3.5).

    ``decision_seq`` is the ``seq`` of the stored ``decision`` event (None if it could not
    be stored yet).
    """
    if not _failed(decision) & {"fever", "sentinel", "nat-window"}:
        return []
    payload = decision_payload(decision, inputs, pid_key=pid_key, pid_kid=pid_kid)
    policy = inputs.bundle.policy if inputs.bundle is not None else {}
    return alert_events(decision, payload, decision_seq=decision_seq, policy=policy)
