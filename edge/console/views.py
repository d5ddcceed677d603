"""What the console may show: the decision view and the status object (console.md §2).

The decision view is built by **copying named fields**, never by deleting
unwanted ones from the event: a field added to the ``decision`` event later stays
off the page until it is added here. No ``pid``, ``sub``, code or revocation
hash, key id or raw text can reach the page, the status or the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["decision_view", "reason_texts", "view_of_override"]

_OUTCOMES = ("admit", "deny", "refer")


def _pick(src: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if not isinstance(src, Mapping):
        return None
    return {k: _scalar(src.get(k)) for k in keys}


def _scalar(v: Any) -> Any:
    # Only plain values; a nested object here would be an unreviewed field.
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [x for x in v if isinstance(x, str)]
    return None


def reason_texts(ids: list[str], texts: list[Mapping[str, str]] | None) -> list[dict[str, str]]:
    """Pair reason ids with their shown texts (``rules.md`` §3.4); an id without text shows as itself."""
    out = []
    for i, rid in enumerate(ids):
        t = texts[i] if texts is not None and i < len(texts) else None
        zh = str(t.get("zh")) if isinstance(t, Mapping) and t.get("zh") else rid
        en = str(t.get("en")) if isinstance(t, Mapping) and t.get("en") else rid
        out.append({"id": str(rid), "zh": zh, "en": en})
    return out


def view_of_override(override: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not override:
        return None
    return {"to": str(override.get("to")), "account": str(override.get("guard") or override.get("account"))}


def decision_view(
    seq: int | None,
    at: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    reasons: list[Mapping[str, str]] | None = None,
    overridable: bool = False,
    unverified: bool = False,
    override: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The console's view of one ``decision`` event (console.md §2, table "Decision view").

    Args:
        seq: the event's seq (None while the event waits in the memory queue).
        at: the event's ``at`` object.
        payload: the ``decision`` payload (sync.md §1.5).
        reasons: the shown texts, in the order of ``payload["reasons"]``.
        overridable: rules.md §3.5.
        unverified: the claims shown did not verify (credentials.md §3.5).
        override: the latest ``override`` of this decision, or None.
    """
    outcome = payload.get("outcome")
    cred = payload.get("credential") if isinstance(payload.get("credential"), Mapping) else {}
    subject = payload.get("subject")
    view: dict[str, Any] = {
        "seq": seq,
        "at": _scalar(at.get("wall")),
        "clock": _scalar(at.get("clock")),
        "outcome": outcome if outcome in _OUTCOMES else "refer",
        "alert": _scalar(payload.get("alert")),
        "lane": _scalar(payload.get("lane")),
        "mode": _scalar(payload.get("mode")),
        "bundle": _pick(payload.get("bundle"), ("version", "state")),
        "venue": _pick(payload.get("venue"), ("venue_id", "zone", "door")),
        "health": _pick(payload.get("health"), ("code", "test_age_min", "flags")),
        "temp": _pick(payload.get("temp"), ("body_centi_c", "status")),
        "pass": _pick(payload.get("pass"), ("pass_id", "plate", "status")),
        "credential": {"kind": _scalar(cred.get("kind")), "status": _scalar(cred.get("status"))},
        "subject": _pick(subject, ("name_m", "role", "firm_id", "whitelisted")),
        "reasons": reason_texts([str(r) for r in payload.get("reasons") or []], list(reasons or [])),
        "unverified": bool(unverified),
        "overridable": bool(overridable),
        "override": view_of_override(override),
    }
    return view
