"""Rule sets and decisions (rules.md §2.1, §3).

A decision runs in three stages and the first that fixes the outcome wins:

0. Before any rule (§3.1): no bundle, unknown code, bad signature, revoked,
   expired, DCC key usage, unverified, a pass at a person gate, an unpaired green
   lane half, no applicable rule. Each row has its own ``pre-…`` reason id.
1. Rules (§3.2): build the data object (§2.2), run **every** applicable rule with
   strict paths; false → the rule's outcome, anything but true/false → an error
   that refers. DENY beats REFER beats ADMIT, and doubt never admits.
2. Bundle freshness (§3.3): with an expired bundle only a verified health
   credential of a person on the roster keeps an ADMIT.

``decide`` is pure: no I/O, no logging, no clock reads, no module state. The
gate passes the trusted time and clock state in ``DecisionInputs``, and may pass
``timer`` (``time.perf_counter_ns``) to fill ``Decision.elapsed_us``.

A lone green-lane half (a pass, or a driver's health code with a ``sub``) comes
back as REFER ``pre-unpaired`` with ``Decision.pairing`` set: that is the gate's
cue to hold it for ``pair_window_s`` and call ``decide`` again with both halves
(``credential`` + ``partner``), or to show the REFER when the window ends.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from edge.policy import datamodel
from edge.policy.bundle_view import BundleView
from edge.policy.certlogic import CertLogicError, MissingDataError, Program, validate
from edge.policy.certlogic import compile as compile_logic
from edge.policy.codegen import compile_strict
from edge.policy.errors import NotJudged, RuleSetError
from edge.policy.settings import check_policy

__all__ = [
    "ALERTS",
    "KINDS",
    "LANES",
    "PRE_TEXTS",
    "Decision",
    "DecisionInputs",
    "Facts",
    "Failure",
    "GateBinding",
    "Judgement",
    "Reason",
    "Rule",
    "RuleSet",
    "Temperature",
    "decide",
    "evaluation_data",
    "inputs_digest",
    "judge",
    "reason_list",
]

KINDS = ("health", "roster", "dcc", "pass")
LANES = ("person", "green_lane")
ALERTS = ("none", "upstream", "urgent")
_ALERT_RANK = {"none": 0, "upstream": 1, "urgent": 2}
_OUTCOMES = ("deny", "refer")
_OVERRIDES = ("guard", "none")
_FRESHNESS = ("none", "fresh", "stale", "expired")
_CLOCK_STATES = ("synced", "floor", "untrusted")
_RULE_FIELDS = {
    "id",
    "version",
    "description",
    "reason",
    "applies_to",
    "outcome",
    "alert",
    "override",
    "valid_from",
    "valid_until",
    "logic",
}
_ID_RE = re.compile(r"[a-z][a-z0-9-]{1,47}", re.ASCII)
_VERSION_RE = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", re.ASCII)
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", re.ASCII)
_PLACEHOLDER_RE = re.compile(r"\{\{([^{}]*)\}\}")
LOCKOUT_S = 60  # rules.md §3.5: after an override:"none" failure nothing opens the gate for 60 s


# --------------------------------------------------------------------------- texts


@dataclass(frozen=True, slots=True)
class Reason:
    """A guard-facing text in both languages (rules.md §3.4). ``r["zh"]`` works too."""

    zh: str
    en: str

    def __getitem__(self, key: str) -> str:
        if key == "zh":
            return self.zh
        if key == "en":
            return self.en
        raise KeyError(key)

    def as_dict(self) -> dict[str, str]:
        return {"zh": self.zh, "en": self.en}

    @classmethod
    def from_error_text(cls, text: Any, fallback: Reason) -> Reason:
        """The verifier's ``"<中文> / <English>"`` error (credentials.md §3.4) as a Reason."""
        if type(text) is not str or not text:
            return fallback
        zh, sep, en = text.partition(" / ")
        return cls(zh, en) if sep else cls(text, text)


class _Template:
    """A reason with ``{{path}}`` placeholders (rules.md §3.4), split once at load."""

    __slots__ = ("parts",)

    def __init__(self, text: str) -> None:
        parts: list[str | Program] = []
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            parts.append(compile_logic({"var": m.group(1)}))
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        self.parts = tuple(parts)

    def render(self, data: Any) -> str:
        out = []
        for p in self.parts:
            if type(p) is str:
                out.append(p)
                continue
            try:
                v = p.evaluate(data)  # type: ignore[union-attr]
            except CertLogicError:
                v = None
            if type(v) is str:
                out.append(v)
            elif type(v) is int:
                out.append(str(v))
            else:
                out.append("?")  # anything else, or absent
        return "".join(out)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, eq=False)
class Rule:
    """One loaded rule (rules.md §2.1), its logic compiled once."""

    id: str
    version: str
    description: Reason
    reason: Reason
    kinds: frozenset[str]
    lanes: frozenset[str]
    outcome: str
    alert: str
    override: str
    valid_from_ms: int | None
    valid_until_ms: int | None
    logic: dict[str, Any]
    order: int
    program: Program = field(repr=False)
    strict: Callable[[Any], Any] = field(repr=False)
    _reason_zh: _Template = field(repr=False)
    _reason_en: _Template = field(repr=False)

    def applies(self, kind: str, lane: str, now_ms: int) -> bool:
        """``applies_to`` matches and ``now`` is inside ``valid_from`` (incl.) .. ``valid_until`` (excl.)."""
        if kind not in self.kinds or lane not in self.lanes:
            return False
        if self.valid_from_ms is not None and now_ms < self.valid_from_ms:
            return False
        return self.valid_until_ms is None or now_ms < self.valid_until_ms

    def render_reason(self, data: Any) -> Reason:
        return Reason(self._reason_zh.render(data), self._reason_en.render(data))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "version": self.version,
            "description": self.description.as_dict(),
            "reason": self.reason.as_dict(),
            "applies_to": {"kinds": sorted(self.kinds), "lanes": sorted(self.lanes)},
            "outcome": self.outcome,
            "alert": self.alert,
            "override": self.override,
            "logic": self.logic,
        }
        return out


def _rule_error(rule_id: str, fld: str, message: str) -> RuleSetError:
    return RuleSetError(f"rule {rule_id} field {fld}: {message}")


def _text_field(rule_id: str, fld: str, value: Any) -> Reason:
    if not isinstance(value, Mapping) or set(value) != {"zh", "en"}:
        raise _rule_error(rule_id, fld, 'must be an object {"zh": str, "en": str}')
    for lang in ("zh", "en"):
        if type(value[lang]) is not str or not 1 <= len(value[lang]) <= 500:
            raise _rule_error(rule_id, f"{fld}.{lang}", "must be a string of 1-500 characters")
    return Reason(value["zh"], value["en"])


def _choice(rule_id: str, fld: str, value: Any, allowed: Sequence[str]) -> str:
    if type(value) is not str or value not in allowed:
        raise _rule_error(rule_id, fld, f"must be one of {', '.join(allowed)}")
    return value


def _time_field(rule_id: str, fld: str, value: Any) -> int | None:
    if value is None:
        return None
    ms = datamodel.instant_ms(value) if type(value) is str and _TIME_RE.fullmatch(value) else None
    if ms is None:
        raise _rule_error(rule_id, fld, "must be a time YYYY-MM-DDTHH:MM:SS.mmmZ")
    return ms


def _var_paths(expr: Any, in_lambda: bool = False) -> Iterator[tuple[str, bool]]:
    """Every ``var`` path of a *validated* expression, with whether it sits in a ``reduce`` lambda."""
    if type(expr) is list:
        for e in expr:
            yield from _var_paths(e, in_lambda)
    elif type(expr) is dict:
        ((op, operands),) = expr.items()
        if op == "var":
            yield operands, in_lambda
        elif op == "reduce":
            yield from _var_paths(operands[0], in_lambda)
            yield from _var_paths(operands[1], True)
            yield from _var_paths(operands[2], in_lambda)
        else:
            yield from _var_paths(operands, in_lambda)


def _load_rule(raw: Any, index: int, policy: Mapping[str, Any]) -> Rule:
    if not isinstance(raw, Mapping):
        raise RuleSetError(f"rule #{index + 1}: must be an object")
    rid = raw.get("id")
    if type(rid) is not str or not _ID_RE.fullmatch(rid):
        shown = rid[:48] if type(rid) is str else f"#{index + 1}"
        raise RuleSetError(f"rule {shown} field id: must match ^[a-z][a-z0-9-]{{1,47}}$")
    if rid.startswith(("pre-", "gate-")):
        raise _rule_error(rid, "id", "pre- and gate- are reserved for stage-0 and gate reasons")
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise _rule_error(rid, sorted(unknown)[0][:40], "unknown field")
    for required in ("version", "description", "applies_to", "outcome", "logic"):
        if required not in raw:
            raise _rule_error(rid, required, "missing")
    version = raw["version"]
    if type(version) is not str or not _VERSION_RE.fullmatch(version):
        raise _rule_error(rid, "version", "must be MAJOR.MINOR.PATCH")
    description = _text_field(rid, "description", raw["description"])
    reason = _text_field(rid, "reason", raw["reason"]) if "reason" in raw else description
    applies = raw["applies_to"]
    if not isinstance(applies, Mapping) or set(applies) != {"kinds", "lanes"}:
        raise _rule_error(rid, "applies_to", 'must be an object {"kinds": [...], "lanes": [...]}')
    sets: dict[str, frozenset[str]] = {}
    for fld, allowed in (("kinds", KINDS), ("lanes", LANES)):
        values = applies[fld]
        if type(values) is not list or not values or any(type(v) is not str or v not in allowed for v in values):
            raise _rule_error(rid, f"applies_to.{fld}", f"must be a non-empty list of {', '.join(allowed)}")
        sets[fld] = frozenset(values)
    outcome = _choice(rid, "outcome", raw["outcome"], _OUTCOMES)
    alert = _choice(rid, "alert", raw.get("alert", "none"), ALERTS)
    override = _choice(rid, "override", raw.get("override", "guard"), _OVERRIDES)
    valid_from = _time_field(rid, "valid_from", raw.get("valid_from"))
    valid_until = _time_field(rid, "valid_until", raw.get("valid_until"))
    if valid_from is not None and valid_until is not None and valid_from >= valid_until:
        raise _rule_error(rid, "valid_until", "must be after valid_from")
    logic = raw["logic"]
    if type(logic) is not dict:
        raise _rule_error(rid, "logic", "must be a CertLogic object")
    issues = validate(logic)
    if issues:
        raise _rule_error(rid, "logic", f"{issues[0].message} (at {json.dumps(issues[0].expr, ensure_ascii=False)[:80]})")
    for path, in_lambda in _var_paths(logic):
        if in_lambda:
            if path.split(".")[0] not in ("accumulator", "current"):
                raise _rule_error(rid, "logic", f"var {path[:80]}: inside a reduce lambda paths start with accumulator or current")
            continue
        why = datamodel.check_path(path, policy)
        if why is not None:
            raise _rule_error(rid, "logic", f"var {path[:80]}: {why}")
    program = compile_logic(logic)
    strict = compile_strict(logic)  # generated code, compiled at bundle load (codegen.py)
    return Rule(
        id=rid,
        version=version,
        description=description,
        reason=reason,
        kinds=sets["kinds"],
        lanes=sets["lanes"],
        outcome=outcome,
        alert=alert,
        override=override,
        valid_from_ms=valid_from,
        valid_until_ms=valid_until,
        logic=logic,
        order=index,
        program=program,
        strict=strict,
        _reason_zh=_Template(reason.zh),
        _reason_en=_Template(reason.en),
    )


class RuleSet:
    """A checked, compiled rule set in rule-set order (rules.md §2.1)."""

    __slots__ = ("_by_id", "_index", "_windowed", "policy", "rules")

    def __init__(self, rules: Sequence[Rule], policy: Mapping[str, Any]) -> None:
        self.rules = tuple(rules)
        self.policy = policy
        self._by_id = {r.id: r for r in self.rules}
        self._index: dict[tuple[str, str], tuple[Rule, ...]] = {
            (k, lane): tuple(r for r in self.rules if k in r.kinds and lane in r.lanes) for k in KINDS for lane in LANES
        }
        self._windowed = any(r.valid_from_ms is not None or r.valid_until_ms is not None for r in self.rules)

    @classmethod
    def from_parts(cls, rules: Any, policy: Any) -> RuleSet:
        """Check and compile ``rules`` against ``policy`` (all load-time checks of §2.1, §2.3).

        One bad rule rejects the whole set.

        Raises:
            RuleSetError: naming the rule id and the field (or the policy key).
        """
        check_policy(policy)
        if type(rules) is not list:
            raise RuleSetError("rules: must be an array of rule objects")
        loaded: list[Rule] = []
        seen: set[str] = set()
        for i, raw in enumerate(rules):
            rule = _load_rule(raw, i, policy)
            if rule.id in seen:
                raise _rule_error(rule.id, "id", "duplicate id")
            seen.add(rule.id)
            loaded.append(rule)
        return cls(loaded, policy)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def get(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def select(self, kind: str, lane: str, now_ms: int) -> tuple[Rule, ...]:
        """The rules that apply to this kind and lane at ``now`` (§3.2 step 2), in rule-set order."""
        candidates = self._index.get((kind, lane), ())
        if not self._windowed:
            return candidates
        return tuple(
            r
            for r in candidates
            if (r.valid_from_ms is None or now_ms >= r.valid_from_ms) and (r.valid_until_ms is None or now_ms < r.valid_until_ms)
        )


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GateBinding:
    """``external.gate`` minus the lane: enrollment id and the venue binding in force (rules.md §2.2.2)."""

    device_id: str
    venue_id: str
    zone: str
    door: str | None = None
    firm_id: str | None = None
    tz: str = "Asia/Shanghai"
    tzinfo: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Resolved here, so that decide() never reads tzdata.
        object.__setattr__(self, "tzinfo", datamodel.zone_info(self.tz))


@dataclass(frozen=True)
class Temperature:
    """The thermometer measurement for this scan (hardware.md §1.10).

    ``measured_at`` is trusted-clock epoch milliseconds (a JSON time string is accepted
    and converted); ``attempt`` is 2 when the gate asked for a re-measure and got it.
    """

    body_centi_c: int
    measured_at: int
    attempt: int = 1

    def __post_init__(self) -> None:
        measured: Any = self.measured_at
        if type(measured) is str:
            ms = datamodel.instant_ms(measured)
            if ms is None:
                raise ValueError("measured_at is not a time")
            object.__setattr__(self, "measured_at", ms)
        if type(self.body_centi_c) is not int or type(self.measured_at) is not int:
            raise ValueError("body_centi_c and measured_at must be integers")
        if self.attempt not in (1, 2):
            raise ValueError("attempt must be 1 or 2")


@dataclass(frozen=True)
class DecisionInputs:
    """Everything one decision depends on; the gate process fills it (rules.md §3).

    ``credential`` is the verification result of the scanned CK1/HC1 code (duck-typed
    ``edge.credentials.Verification``: ``ok``, ``kind``, ``checks``, ``error``,
    ``claims``, ``status``). At a green lane, ``credential`` and ``partner`` are the
    two halves of a pair (pass and driver's health code, in either order). For an
    opaque code set ``opaque`` and, when the bundle has a roster key,
    ``opaque_code_hash`` (``edge.credentials.code_hash``): the engine looks it up.
    """

    now_ms: int
    lane: str
    gate: GateBinding
    bundle: BundleView | None
    freshness: str = "none"
    clock_state: str = "synced"
    credential: Any = None
    partner: Any = None
    opaque: bool = False
    opaque_code_hash: str | None = None
    temperature: Temperature | None = None
    thermometer_status: str = "absent"

    def __post_init__(self) -> None:
        if self.lane not in LANES:
            raise ValueError(f"lane must be one of {', '.join(LANES)}")
        if self.freshness not in _FRESHNESS:
            raise ValueError(f"freshness must be one of {', '.join(_FRESHNESS)}")
        if self.clock_state not in _CLOCK_STATES:
            raise ValueError(f"clock_state must be one of {', '.join(_CLOCK_STATES)}")
        if type(self.now_ms) is not int:
            raise ValueError("now_ms must be an integer")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed rule or stage-0/2 row: ``outcome`` is deny, refer or error (rules.md §3.5)."""

    rule: str
    version: str
    outcome: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What the decision events need from the data object (sync.md §1.4-1.5); no names."""

    kind: str
    subject: str | None
    role: str | None
    firm_id: str | None
    whitelisted: bool | None
    colour: str | None
    flags: tuple[str, ...]
    test_age_min: int | None
    mode: str
    body_centi_c: int | None


@dataclass(frozen=True)
class Decision:
    """The policy's answer (rules.md §3.5). ``reasons`` are shown to the guard as they are."""

    outcome: str
    stage: int
    failures: tuple[Failure, ...]
    reason_ids: tuple[str, ...]
    reasons: tuple[Reason, ...]
    alert: str
    overridable: bool
    inputs_digest: str
    rules_digest: str
    settings_digest: str
    elapsed_us: int = 0
    kind: str | None = None
    facts: Facts | None = field(default=None, repr=False)
    lockout_s: int = 0
    pairing: tuple[str, str] | None = None


def reason_list(decision: Decision) -> list[dict[str, str]]:
    """Guard-facing reasons as JSON: ``[{"id", "zh", "en"}, …]``, strongest first."""
    return [{"id": rid, "zh": r.zh, "en": r.en} for rid, r in zip(decision.reason_ids, decision.reasons, strict=True)]


@dataclass(frozen=True)
class Judgement:
    """Stage 1 on one data object (rules.md §3.2): what ``decide`` and ``rules test`` share."""

    outcome: str
    failures: tuple[Failure, ...]
    reason_ids: tuple[str, ...]
    reasons: tuple[Reason, ...]
    alert: str
    overridable: bool
    lockout_s: int


_GROUP = {"deny": 0, "refer": 1, "error": 2}
_RULE_ERROR = ("规则执行错误，请人工核验（{}）", "Rule error: check by hand ({})")


def judge(rules: Sequence[Rule], data: Any) -> Judgement:
    """Run every rule of ``rules`` on ``data`` with strict paths and combine (§3.2, §3.4, §3.5)."""
    return Judgement(*_judge(rules, data))


def _judge(
    rules: Sequence[Rule], data: Any
) -> tuple[str, tuple[Failure, ...], tuple[str, ...], tuple[Reason, ...], str, bool, int]:
    failed: list[tuple[Rule, Failure]] = []
    for rule in rules:
        try:
            result = rule.strict(data)
        except MissingDataError as exc:
            failed.append((rule, Failure(rule.id, rule.version, "error", f"missing {exc.path}")))
            continue
        except CertLogicError as exc:
            failed.append((rule, Failure(rule.id, rule.version, "error", str(exc)[:200])))
            continue
        except Exception as exc:  # §3.2: "or anything else" is a rule error too; it refers, never admits
            failed.append((rule, Failure(rule.id, rule.version, "error", f"evaluation failed: {type(exc).__name__}")))
            continue
        if result is True:
            continue
        if result is False:
            failed.append((rule, Failure(rule.id, rule.version, rule.outcome)))
        else:
            what = type(result).__name__ if result is not None else "null"
            failed.append((rule, Failure(rule.id, rule.version, "error", f"returned {what}, not a boolean")))
    if len(failed) > 1:
        failed.sort(key=lambda rf: (_GROUP[rf[1].outcome], -_ALERT_RANK[rf[0].alert], rf[0].order))
    outcome = "ADMIT"
    alert_rank = 0
    overridable = True
    lockout = 0
    reason_ids: list[str] = []
    reasons: list[Reason] = []
    for rule, f in failed:
        if f.outcome == "deny":
            outcome = "DENY"
        elif outcome == "ADMIT":
            outcome = "REFER"
        if f.outcome == "error":
            alert_rank = max(alert_rank, 1)  # admins must learn that a rule is broken
            reason_ids.append(f"{rule.id}:error")
            reasons.append(Reason(_RULE_ERROR[0].format(rule.id), _RULE_ERROR[1].format(rule.id)))
        else:
            alert_rank = max(alert_rank, _ALERT_RANK[rule.alert])
            reason_ids.append(rule.id)
            reasons.append(rule.render_reason(data))
        if rule.override != "guard":
            overridable = False
            lockout = LOCKOUT_S
    if not failed:
        return "ADMIT", (), (), (), "none", False, 0
    return (
        outcome,
        tuple(f for _, f in failed),
        tuple(reason_ids),
        tuple(reasons),
        ALERTS[alert_rank],
        overridable and outcome != "ADMIT",
        lockout,
    )


# --------------------------------------------------------------------------- digests


def _json_default(value: Any) -> Any:
    return repr(value)


# sync.md §1.3 serialisation without its value profile (rules.md §3.5); an encoder is immutable
_DIGEST_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=_json_default)
_PLAIN_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=False, separators=(",", ":"), default=_json_default)


def inputs_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the data object without ``external.settings`` (rules.md §3.5).

    Serialised as sync.md §1.3 (UTF-8, sorted keys, ``,``/``:``) but without its value
    profile: ``payload.dcc`` may hold floats and keys outside ``[a-z0-9_]``.
    """
    external = data.get("external")
    if type(external) is dict or isinstance(external, Mapping):
        data = {**data, "external": {k: v for k, v in external.items() if k != "settings"}}
    body = _DIGEST_ENCODER.encode(data)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------- stage 0

_T = Reason
PRE_TEXTS = {
    "pre-no-bundle": _T("无规则，请人工核验", "No rules: check by hand"),
    "pre-unknown-code": _T("无法识别的二维码，请人工核验", "Unknown code: check by hand"),
    "pre-bad-signature": _T("签名无效", "Invalid signature"),
    "pre-revoked": _T("凭证已撤销", "Credential revoked"),
    "pre-expired": _T("凭证已过期，请刷新后重扫", "Expired: refresh and scan again"),
    "pre-dcc-key-usage": _T("签发证书无权签发此类证书", "Signer not allowed for this certificate type"),
    "pre-unverified": _T("凭证未通过验证，请人工核验", "Credential not verified: check by hand"),
    "pre-pass-at-person-gate": _T("通行证请在绿色通道核验", "Passes are checked at the green lane"),
    "pre-unpaired-driver": _T("缺少司机健康码，请扫描司机健康码", "Driver's code missing: scan the driver's health code"),
    "pre-unpaired-pass": _T("缺少通行证，请扫描通行证", "Pass missing: scan the truck's pass"),
    "pre-no-rule": _T("无适用规则，请人工核验", "No rule applies here: check by hand"),
    "pre-bundle-expired": _T("规则已过期，请人工核验", "Rules expired: check by hand"),
}
_PRE_OUTCOME = {
    "pre-no-bundle": "REFER",
    "pre-unknown-code": "REFER",
    "pre-bad-signature": "DENY",
    "pre-revoked": "DENY",
    "pre-expired": "DENY",
    "pre-dcc-key-usage": "DENY",
    "pre-unverified": "REFER",
    "pre-pass-at-person-gate": "REFER",
    "pre-unpaired": "REFER",
    "pre-no-rule": "REFER",
}


def _stage0(
    inputs: DecisionInputs,
    reason_id: str,
    *,
    reason: Reason | None = None,
    kind: str | None = None,
    pairing: tuple[str, str] | None = None,
) -> Decision:
    outcome = _PRE_OUTCOME[reason_id]
    bundle = inputs.bundle
    return Decision(
        outcome=outcome,
        stage=0,
        failures=(Failure(reason_id, "", outcome.lower()),),
        reason_ids=(reason_id,),
        reasons=(reason or PRE_TEXTS[reason_id],),
        alert="upstream" if reason_id == "pre-bad-signature" else "none",  # a possibly forged code
        overridable=outcome == "REFER",  # a stage-0 DENY is fixed by a new scan, not an override
        inputs_digest=_stage0_digest(inputs, reason_id),
        rules_digest=bundle.rules_digest if bundle is not None else "",
        settings_digest=bundle.settings_digest if bundle is not None else "",
        kind=kind,
        pairing=pairing,
    )


def _stage0_digest(inputs: DecisionInputs, reason_id: str) -> str:
    """Stage 0 builds no data object: digest what was judged instead (time, gate, checks, claims)."""
    creds = []
    for c in (inputs.credential, inputs.partner):
        if c is not None:
            creds.append({"kind": getattr(c, "kind", None), "checks": getattr(c, "checks", None), "claims": getattr(c, "claims", None)})
    g = inputs.gate
    doc = {
        "stage0": reason_id,
        "now": inputs.now_ms,
        "lane": inputs.lane,
        "gate": [g.device_id, g.venue_id, g.zone, g.door, g.firm_id, g.tz],
        "credentials": creds,
        "opaque_code_hash": inputs.opaque_code_hash,
    }
    body = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def _claims(cred: Any) -> Mapping[str, Any] | None:
    claims = getattr(cred, "claims", None)
    return claims if type(claims) is dict or isinstance(claims, Mapping) else None


def _checks(cred: Any) -> Mapping[str, Any]:
    checks = getattr(cred, "checks", None)
    return checks if type(checks) is dict or isinstance(checks, Mapping) else {}


def _credential_rows(inputs: DecisionInputs, creds: list[Any], bundle: BundleView) -> Decision | None:
    """Rows 3-7 of the stage-0 table, each checked over every credential before the next row."""
    for c in creds:
        if _checks(c).get("signature") is False:
            return _stage0(
                inputs,
                "pre-bad-signature",
                reason=Reason.from_error_text(getattr(c, "error", None), PRE_TEXTS["pre-bad-signature"]),
            )
    for c in creds:
        claims = _claims(c)
        rh = claims.get("revocation_hash") if claims is not None else None
        if type(rh) is str and bundle.is_revoked(rh):
            return _stage0(inputs, "pre-revoked")
    for c in creds:
        if _checks(c).get("not_expired") is False:
            return _stage0(inputs, "pre-expired")
    for c in creds:
        claims = _claims(c)
        if getattr(c, "kind", None) == "dcc" and claims is not None and claims.get("key_usage") is False:
            return _stage0(inputs, "pre-dcc-key-usage")
    for c in creds:
        checks = _checks(c)
        claims = _claims(c)
        unverified = (
            not checks
            or any(v is not True for v in checks.values())
            or getattr(c, "ok", False) is not True
            or claims is None
            or (getattr(c, "kind", None) == "dcc" and claims.get("key_usage") is not True)
        )
        if unverified:
            return _stage0(
                inputs,
                "pre-unverified",
                reason=Reason.from_error_text(getattr(c, "error", None), PRE_TEXTS["pre-unverified"]),
            )
    return None


# --------------------------------------------------------------------------- decide


def decide(inputs: DecisionInputs, *, timer: Callable[[], int] | None = None) -> Decision:
    """Decide admit / deny / refer for one scan (rules.md §3). Pure.

    Args:
        inputs: the verification(s), the bundle in force and its freshness, the gate,
            the temperature measurement, the trusted time and clock state.
        timer: optional nanosecond counter (``time.perf_counter_ns``) for ``elapsed_us``.

    Raises:
        NotJudged: the credential is a venue or material code (never judged, §3.1).
    """
    start = timer() if timer is not None else 0
    decision = _decide(inputs)
    if timer is not None:
        decision = replace(decision, elapsed_us=(timer() - start) // 1000)
    return decision


def evaluation_data(inputs: DecisionInputs) -> dict[str, Any] | None:
    """The data object stage 1 would judge (rules.md §2.2), or None when stage 0 decides.

    For tools and benchmarks; ``decide`` builds the same object.
    """
    prepared = _stage0_or_payload(inputs)
    if isinstance(prepared, Decision):
        return None
    payload, roster_entry = prepared
    assert inputs.bundle is not None
    return _build_data(inputs, inputs.bundle, payload, roster_entry)


def _decide(inputs: DecisionInputs) -> Decision:
    prepared = _stage0_or_payload(inputs)
    if isinstance(prepared, Decision):
        return prepared
    payload, roster_entry = prepared
    bundle = inputs.bundle
    assert bundle is not None
    lane = inputs.lane
    kind = payload["kind"]
    now_ms = inputs.now_ms
    rules = bundle.rules.select(kind, lane, now_ms)
    if not rules:
        return _stage0(inputs, "pre-no-rule", kind=kind)

    data = _build_data(inputs, bundle, payload, roster_entry)
    outcome, failures, reason_ids, reasons, alert, overridable, lockout_s = _judge(rules, data)
    external = data["external"]
    stage = 1
    if inputs.freshness == "expired" and outcome == "ADMIT" and not (kind == "health" and external["person"] is not None):
        outcome, stage = "REFER", 2
        failures = (Failure("pre-bundle-expired", "", "refer"),)
        reason_ids = ("pre-bundle-expired",)
        reasons = (PRE_TEXTS["pre-bundle-expired"],)
        overridable = True
    return Decision(
        outcome=outcome,
        stage=stage,
        failures=failures,
        reason_ids=reason_ids,
        reasons=reasons,
        alert=alert if stage == 1 else "none",
        overridable=overridable,
        inputs_digest=_digest_of_built_data(data),
        rules_digest=bundle.rules_digest,
        settings_digest=bundle.settings_digest,
        kind=kind,
        facts=_facts(data, bundle),
        lockout_s=lockout_s if stage == 1 else 0,
    )


def _stage0_or_payload(inputs: DecisionInputs) -> Decision | tuple[dict[str, Any], Any]:
    """Stage 0 (§3.1): a Decision when a row matches, else (the payload, the roster entry of an opaque code)."""
    bundle = inputs.bundle
    if bundle is None or inputs.freshness == "none":
        return _stage0(inputs, "pre-no-bundle")

    creds = [c for c in (inputs.credential, inputs.partner) if c is not None]
    roster_entry = None
    if not creds:
        if inputs.opaque_code_hash is not None:
            roster_entry = bundle.person_by_code(inputs.opaque_code_hash)
        if roster_entry is None:
            return _stage0(inputs, "pre-unknown-code")
    else:
        early = _credential_rows(inputs, creds, bundle)
        if early is not None:
            return early
        for c in creds:
            kind = getattr(c, "kind", None)
            if kind in ("venue", "material"):
                raise NotJudged(kind)

    lane = inputs.lane
    if roster_entry is not None:
        if lane == "green_lane":
            return _stage0(inputs, "pre-unpaired", reason=PRE_TEXTS["pre-unpaired-pass"], kind="roster")
        payload = datamodel.payload_from_roster(roster_entry)
    elif lane == "person":
        if any(getattr(c, "kind", None) == "pass" for c in creds):
            return _stage0(inputs, "pre-pass-at-person-gate", kind="pass")
        cred = creds[0]
        claims = _claims(cred)
        assert claims is not None  # _credential_rows refers credentials without claims
        payload = datamodel.payload_from_claims(getattr(cred, "kind", None) or "health", claims)
    else:
        passes = [c for c in creds if getattr(c, "kind", None) == "pass"]
        healths = [c for c in creds if getattr(c, "kind", None) == "health"]
        pass_sub = _claims(passes[0]).get("sub") if len(passes) == 1 else None  # type: ignore[union-attr]
        health_sub = _claims(healths[0]).get("sub") if len(healths) == 1 else None  # type: ignore[union-attr]
        if len(creds) != 2 or pass_sub is None or health_sub is None or pass_sub != health_sub:
            held: tuple[str, str] | None = None
            if len(creds) == 1 and type(pass_sub) is str:
                held = ("pass", pass_sub)
            elif len(creds) == 1 and type(health_sub) is str:
                held = ("health", health_sub)
            text = PRE_TEXTS["pre-unpaired-driver"] if passes else PRE_TEXTS["pre-unpaired-pass"]
            return _stage0(inputs, "pre-unpaired", reason=text, kind="pass" if passes else None, pairing=held)
        payload = datamodel.payload_from_pair(_claims(passes[0]), _claims(healths[0]))  # type: ignore[arg-type]
    return payload, roster_entry


def _build_data(inputs: DecisionInputs, bundle: BundleView, payload: dict[str, Any], roster_entry: Any) -> dict[str, Any]:
    """The data object of rules.md §2.2 for one decision."""
    now_ms = inputs.now_ms
    g = inputs.gate
    subject = payload["subject"]
    entry = roster_entry
    if entry is None and type(subject) is str:
        entry = bundle.person_by_sub(subject)
    person = None
    if entry is not None:
        team, firm = entry.get("team"), entry.get("firm")
        team_row = bundle.team(firm, team) if type(team) is str and type(firm) is str else None
        person = datamodel.external_person(entry, team_row)

    firm_id = payload["pass"].get("firm") if payload["kind"] == "pass" else payload["firm"]
    firm_entry = bundle.firm(firm_id) if type(firm_id) is str else None
    firm = datamodel.external_firm(firm_entry) if firm_entry is not None else None

    prereg = None
    if type(subject) is str and type(g.firm_id) is str:
        visitors = bundle.visitors(subject, g.firm_id)
        if visitors:
            prereg = datamodel.external_preregistration(visitors, now_ms)

    policy = bundle.policy
    temperature = None
    t = inputs.temperature
    if t is not None:
        max_age_ms = policy.get("temperature_max_age_s", 20) * 1000
        if now_ms - t.measured_at <= max_age_ms:  # too old: as if there were none (§2.2.2)
            temperature = {
                "attempt": t.attempt,
                "body_centi_c": t.body_centi_c,
                "measured_at": datamodel.DateTime(t.measured_at).isoformat(),
            }

    # keys in sorted order throughout (see _digest_of_built_data)
    external: dict[str, Any] = {
        "clock": {"state": inputs.clock_state, "trusted": inputs.clock_state == "synced"},
        "derived": None,
        "firm": firm,
        "gate": {
            "device_id": g.device_id,
            "door": g.door,
            "firm_id": g.firm_id,
            "lane": inputs.lane,
            "tz": g.tz,
            "venue_id": g.venue_id,
            "zone": g.zone,
        },
        "mode": bundle.mode.get("mode", "normal"),
        "now": datamodel.DateTime(now_ms).isoformat(),
        "person": person,
        "preregistration": prereg,
        "settings": policy,
        "temperature": temperature,
    }
    external["derived"] = datamodel.compute_derived(payload, external, now_ms=now_ms, tzinfo=g.tzinfo)
    return {"external": external, "payload": payload}


def _digest_of_built_data(data: dict[str, Any]) -> str:
    """``inputs_digest`` of a data object built by ``_build_data``, without re-sorting keys.

    Every dict of such an object is built in sorted key order, so the plain encoder writes
    exactly the sorted serialisation of rules.md §3.5; ``payload.dcc`` (the DCC as signed)
    is foreign, so a DCC goes through the sorting encoder. Tests hold the two equal.
    """
    payload = data["payload"]
    if payload["dcc"] is not None:
        return inputs_digest(data)
    e = data["external"]
    doc = {
        "external": {
            "clock": e["clock"],
            "derived": e["derived"],
            "firm": e["firm"],
            "gate": e["gate"],
            "mode": e["mode"],
            "now": e["now"],
            "person": e["person"],
            "preregistration": e["preregistration"],
            "temperature": e["temperature"],
        },
        "payload": payload,
    }
    return hashlib.sha256(_PLAIN_ENCODER.encode(doc).encode("utf-8", "surrogatepass")).hexdigest()


def _facts(data: Mapping[str, Any], bundle: BundleView) -> Facts:
    payload, external = data["payload"], data["external"]
    derived = external["derived"]
    firm_id = payload["firm"]
    if payload["kind"] == "pass":
        # external.firm is the pass's firm; the subject's own firm is the driver's
        entry = bundle.firm(firm_id) if type(firm_id) is str else None
        whitelisted = entry.get("whitelisted") if entry is not None else None
    else:
        firm = external["firm"]
        whitelisted = firm.get("whitelisted") if firm is not None else None
    test_age_min = None
    last_ms = datamodel.instant_ms(derived["last_test"])
    now_ms = datamodel.instant_ms(external["now"])
    if last_ms is not None and now_ms is not None:
        test_age_min = max(0, (now_ms - last_ms) // 60_000)
    temp = external["temperature"]
    return Facts(
        kind=payload["kind"],
        subject=payload["subject"],
        role=derived["role"],
        firm_id=firm_id,
        whitelisted=whitelisted if type(whitelisted) is bool else None,
        colour=payload["colour"],
        flags=tuple(f for f in payload["flags"] if type(f) is str),
        test_age_min=test_age_min,
        mode=external["mode"],
        body_centi_c=temp["body_centi_c"] if temp is not None else None,
    )
